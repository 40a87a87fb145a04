"""The client's call path: request ids, per-call deadlines, cleanup of finished calls.

Broker, worker and client in one process (inproc), as in test_e2e.
"""

from __future__ import annotations

import asyncio

import pytest

from gaterpc.core import Client
from gaterpc.exceptions import RemoteException
from test_e2e import start_cluster

TIMEOUT_TEXT = "Timeout while requesting the Majordomo service."


def assert_clean(cli: Client) -> None:
    """Nothing is left of finished calls (apart from stale deadline pairs, bounded)."""
    assert len(cli.replies) == 0
    assert len(cli._table) == 0
    assert len(cli._streams) == 0 and len(cli._huge) == 0


async def test_request_ids_are_unique_16_bytes_and_change_per_client(tmp_path):
    c = await start_cluster("inproc", tmp_path)
    try:
        cli = c.client
        calls = [asyncio.ensure_future(cli.Calc.add(i, 1)) for i in range(300)]
        await asyncio.sleep(0)  # every call sent, none answered yet
        sent = list(cli.replies)
        assert await asyncio.gather(*calls) == [i + 1 for i in range(300)]
        assert len(sent) == 300 and len(set(sent)) == 300
        assert all(type(r) is bytes and len(r) == 16 for r in sent)
        # Another client draws another prefix: its ids never collide with these.
        other = Client(c.frontend, context=c.ctx)
        try:
            await other.connect()
            assert await other.Calc.add(1, 1) == 2
            assert other._rid_prefix != cli._rid_prefix
        finally:
            other.close()
        assert_clean(cli)
    finally:
        await c.stop()


async def test_calls_time_out_within_the_sweep_and_late_replies_are_dropped(tmp_path):
    c = await start_cluster("inproc", tmp_path, reply_timeout=0.3)
    try:
        cli = c.client
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        slow = [asyncio.ensure_future(cli.Calc.sleep(1.0)) for _ in range(20)]
        fast = await asyncio.gather(*(cli.Calc.add(i, 0) for i in range(50)))
        assert fast == list(range(50))
        done = await asyncio.gather(*slow, return_exceptions=True)
        waited = loop.time() - t0
        assert all(isinstance(e, TimeoutError) and str(e) == TIMEOUT_TEXT for e in done)
        assert 0.25 <= waited < 0.95  # reply_timeout plus one sweep (and slack), not the worker's 1 s
        assert_clean(cli)
        await asyncio.sleep(1.0)  # the late replies arrive and are ignored
        assert await cli.Calc.add(2, 2) == 4
        assert_clean(cli)
    finally:
        await c.stop()


async def test_lowering_reply_timeout_takes_effect_for_new_calls(tmp_path):
    c = await start_cluster("inproc", tmp_path, reply_timeout=30)
    try:
        cli = c.client
        loop = asyncio.get_running_loop()
        long_call = asyncio.ensure_future(cli.Calc.sleep(2.0))
        await asyncio.sleep(0.05)
        cli.reply_timeout = 0.3  # deadlines out of order: the new call must not wait behind the old one
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            await cli.Calc.sleep(5.0)
        assert loop.time() - t0 < 1.5
        assert await long_call == 2.0  # the old call keeps its own (longer) deadline
        assert_clean(cli)
    finally:
        await c.stop()


async def test_stream_deadline_moves_with_each_item(tmp_path):
    c = await start_cluster("inproc", tmp_path, reply_timeout=0.5)
    try:
        cli = c.client
        stream = await cli.Calc.acount(3)
        await asyncio.sleep(0.8)  # past the call's first deadline: the stream is still alive
        assert [i async for i in stream] == [0, 1, 2]
        assert_clean(cli)
    finally:
        await c.stop()


async def test_cancelled_and_failed_calls_leave_nothing_behind(tmp_path):
    c = await start_cluster("inproc", tmp_path)
    try:
        cli = c.client
        calls = [asyncio.ensure_future(cli.Calc.sleep(10)) for _ in range(10)]
        await asyncio.sleep(0.1)
        assert len(cli.replies) == 10
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        assert_clean(cli)
        errors = cli._stat_errors
        with pytest.raises(RemoteException):
            await cli.Calc.fail()
        assert cli._stat_errors == errors + 1
        assert_clean(cli)
    finally:
        await c.stop()


async def test_answered_calls_do_not_pile_up_deadlines(tmp_path):
    c = await start_cluster("inproc", tmp_path, reply_timeout=60)
    try:
        cli = c.client
        for _ in range(30):
            assert await asyncio.gather(*(cli.Calc.add(i, 1) for i in range(200))) == list(range(1, 201))
        # 6,000 calls answered long before their deadline: their pairs were dropped.
        assert len(cli._deadlines) <= 2 * 200
        # A pending call at the front: answered calls behind it are dropped in bulk.
        held = asyncio.ensure_future(cli.Calc.sleep(30))
        for _ in range(30):
            assert await asyncio.gather(*(cli.Calc.add(i, 1) for i in range(200))) == list(range(1, 201))
        assert len(cli.replies) == 1
        assert len(cli._deadlines) <= 4 * 201 + 2048  # bounded by the calls pending at once
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
        assert_clean(cli)
    finally:
        await c.stop()


async def test_bad_arguments_fail_before_sending_and_keep_no_state(tmp_path):
    c = await start_cluster("inproc", tmp_path)
    try:
        cli = c.client
        with pytest.raises(Exception) as info:
            await cli.Calc.add(object(), 1)
        assert "unpack" not in str(info.value)
        assert_clean(cli)
        assert await cli.Calc.add(1, 2) == 3
    finally:
        await c.stop()


async def test_requests_leave_in_one_burst_per_loop_iteration_and_refusals_reach_the_call(tmp_path):
    from gaterpc.loopio import BacklogBudgetError

    c = await start_cluster("inproc", tmp_path)
    try:
        cli = c.client
        real = cli._lsock

        class Refusing:
            closed = False
            sent = 0

            def send_many(self, messages):
                return 0  # the socket takes none of the burst now: each request is handed to send()

            def send(self, frames):
                Refusing.sent += 1
                if Refusing.sent == 2:
                    raise BacklogBudgetError("over the budget")
                return real.send(frames)

        cli._lsock = Refusing()
        calls = [asyncio.ensure_future(cli.Calc.add(i, 1)) for i in range(3)]
        await asyncio.sleep(0)
        assert len(cli._outbox) == 3 and Refusing.sent == 0  # queued by the calls, not sent yet
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert done[0] == 1 and done[2] == 3
        assert isinstance(done[1], BacklogBudgetError)  # the refused request fails its own call
        cli._lsock = real
        assert_clean(cli)
    finally:
        await c.stop()


async def test_a_malformed_multi_frame_reply_fails_its_call_at_once(tmp_path):
    """Reply frames that are neither a stream nor a HugeData reply: a clear error, counted, not a timeout."""
    import zmq
    import zmq.asyncio

    from gaterpc.counters import drops_snapshot
    from gaterpc.global_settings import Settings
    from gaterpc.serialization import MsgUnpackError

    actx = zmq.asyncio.Context()
    router = actx.socket(zmq.ROUTER)
    router.linger = 0
    addr = f"ipc://{tmp_path}/fake-broker"
    router.bind(addr)
    seen: list[list[bytes]] = []

    async def fake_broker() -> None:
        """Answer the client's own probes validly and the call to Svc with a malformed body."""
        from gaterpc.serialization import msg_pack

        for _ in range(1000):
            frames = await router.recv_multipart()
            client_id, empty, header, service, rid = frames[:5]
            assert (empty, header) == (b"", Settings.MDP_CLIENT)
            if service == b"Svc":
                seen.append(frames)
                body = [b"NotATag", b"x"]
            else:
                body = [msg_pack({"result": ["Svc"], "exception": None})]  # get_services, probes
            await router.send_multipart([client_id, b"", Settings.MDP_CLIENT, service, rid, *body])

    server = asyncio.ensure_future(fake_broker())
    cli = Client(addr, context=actx, reply_timeout=30)
    try:
        await asyncio.wait_for(cli.connect(), 20)
        before = drops_snapshot().get("client_malformed_reply", 0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(MsgUnpackError, match="neither a stream nor a HugeData reply"):
            await asyncio.wait_for(cli.Svc.fn(1), 10)
        assert loop.time() - t0 < 10  # at once, not after reply_timeout (30 s)
        assert len(seen) == 1
        assert drops_snapshot().get("client_malformed_reply", 0) == before + 1
        assert_clean(cli)
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        cli.close()
        router.close(linger=0)
        actx.term()
