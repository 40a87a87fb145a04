"""Golden tests: our roles against the frames captured from the original.

Each role under test (worker, broker, client) talks to raw pyzmq peers that
replay the messages of ``captured_frames.json``; what our role sends must
equal the captured frames byte for byte, except the frames the capture marks
as varying (random ids, tracebacks, gzip timestamps).  Where we deliberately
differ from the original (an error reply instead of silence), the test says
so and checks the reply.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.asyncio

from gaterpc.core import AMajordomo, Client, Context, Service, Worker
from gaterpc.exceptions import RemoteException
from gaterpc.global_settings import Settings
from gaterpc.protocol import CREDIT_HEADER
from gaterpc.utils import HugeData, interface, msg_pack, name2uuid

# Messages captured from the original 0.2.x on loopback (tests/data/captured_frames.json;
# each entry's "id" is the "entry N" of the comments below, "note" says what it shows).
DATA = Path(__file__).resolve().parent / "data"
CAPTURE = {e["id"]: e for e in json.loads((DATA / "captured_frames.json").read_text())}

CLIENT_ID = name2uuid("capture-client").bytes
WORKER_ID = name2uuid("capture-worker").bytes
BROKER_ID = name2uuid("capture-broker").bytes
RAW_ID = name2uuid("capture-raw").bytes


def sent(i):
    """Sender-view frames of captured entry ``i``."""
    return [bytes.fromhex(h) for h in CAPTURE[i]["frames_hex"]]


def received(i):
    """Receiver-view frames of captured entry ``i``."""
    return [bytes.fromhex(h) for h in CAPTURE[i]["received_frames_hex"]]


def assert_matches(actual, i, view="received", ignore=()):
    """``actual`` equals entry ``i`` except in its varying frames."""
    if view == "received":
        expected = received(i)
        varying = {v["frame"] for v in CAPTURE[i]["received_varies"]}
    else:
        expected = sent(i)
        varying = {v["frame"] for v in CAPTURE[i]["varies"]}
    varying |= set(ignore)
    assert len(actual) == len(expected), (i, actual, expected)
    for k, (a, e) in enumerate(zip(actual, expected)):
        if k not in varying:
            assert a == e, f"entry {i}, frame {k}: {a!r} != {e!r}"


def envelope(body):
    return msgpack.unpackb(body, raw=False)


class CaptureWorker(Worker):
    # Same methods and signatures as the capture's worker (entry 52).
    @interface
    async def echo(self, *args, **kwargs):
        return {"args": args, "kwargs": kwargs}

    @interface
    async def gen(self, n):
        for i in range(n):
            yield i

    @interface
    async def boom(self):
        raise ValueError("boom!")

    @interface
    async def huge(self):
        return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG,
                        data=msg_pack({"payload": "x" * 64, "n": 3}))

    @interface
    async def agen_boom(self, n):
        for i in range(n):
            yield i
        raise ValueError("stream boom")


@pytest.fixture
async def zctx():
    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.destroy(linger=0)


def raw(ctx, kind, identity=None):
    sock = ctx.socket(kind)
    sock.linger = 0
    if identity is not None:
        sock.identity = identity
    return sock


async def recv(sock, timeout=3.0):
    return await asyncio.wait_for(sock.recv_multipart(), timeout)


async def nothing(sock, timeout=0.3):
    """Assert that nothing arrives for ``timeout`` seconds."""
    assert not await sock.poll(int(timeout * 1000)), "unexpected message"


# ---------------------------------------------------------------------------
# Our worker against a raw broker
# ---------------------------------------------------------------------------

async def test_worker_frames_match_capture(zctx, tmp_path):
    addr = f"ipc://{tmp_path}/backend"
    broker = raw(zctx, zmq.ROUTER)
    broker.bind(addr)
    ctx = Context()
    worker = CaptureWorker(addr, Service(), identity="capture-worker", context=ctx)
    worker.run()
    try:
        ready = await recv(broker)
        assert_matches(ready, 1)
        await broker.send_multipart(sent(2))
        assert_matches(await recv(broker), 3)

        def request(i, rid):
            frames = sent(i)
            frames[6] = rid
            return frames

        await broker.send_multipart(request(7, b"r" * 16))
        reply = await recv(broker)
        assert_matches(reply, 8)
        assert reply[6] == b"r" * 16

        await broker.send_multipart(request(11, b"s" * 16))
        for i in (12, 13, 14, 15):
            assert_matches(await recv(broker), i)

        await broker.send_multipart(request(21, b"e" * 16))
        reply = await recv(broker)
        assert_matches(reply, 22)
        exc = envelope(reply[7])["exception"]
        assert exc[:2] == ["ValueError", "ValueError('boom!')"]
        assert "raise ValueError" in exc[2] and not exc[2].startswith("Traceback")

        await broker.send_multipart(request(25, b"h" * 16))
        chunks = []
        while True:
            msg = await recv(broker)
            assert msg[7] == b"GateStreamHugData"
            if msg[8] == b"HugeDataEND":
                assert_matches(msg, 28)
                break
            chunks.append(msg[8])
        assert chunks[-1] == b"", "an empty chunk precedes the end tag (entry 27)"
        stream = b"".join(chunks)
        assert stream[:4] == bytes.fromhex("1f8b0800") and stream[8:10] == b"\x04\xff"
        assert msgpack.unpackb(gzip.decompress(stream)) == {"payload": "x" * 64, "n": 3}

        await broker.send_multipart(request(33, b"a" * 16))
        for i in (34, 35):
            assert_matches(await recv(broker), i)
        last = await recv(broker)
        assert_matches(last, 36)
        assert msgpack.unpackb(last[9])[:2] == ["ValueError", "ValueError('stream boom')"]

        await broker.send_multipart(request(51, b"i" * 16))
        reply = await recv(broker)
        assert reply[7] == received(52)[7], "get_interfaces() result is byte-identical"

        # Unknown method: the original stays silent (entry 55 has no reply);
        # we answer at once with an error (generic text under SECURE).
        await broker.send_multipart(request(55, b"u" * 16))
        reply = await recv(broker)
        exc = envelope(reply[7])["exception"]
        assert exc[0] == "AttributeError" and "no_such_method" not in exc[1]

        await broker.send_multipart(sent(63))
        assert_matches(await recv(broker), 64)

        # A plain DISCONNECT: ours registers again (a new socket, the same READY frames) ...
        await broker.send_multipart(sent(65))
        assert_matches(await recv(broker, timeout=5.0), 1)
        # ... and with reconnection turned off, DISCONNECT ends the receive loop, as the original's.
        worker._reconnect = False
        await broker.send_multipart(sent(65))
        for _ in range(100):
            if worker._recv_task is None or worker._recv_task.done():
                break
            await asyncio.sleep(0.02)
        assert worker._recv_task is None or worker._recv_task.done(), "DISCONNECT ends the worker's receive loop"
    finally:
        worker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)


# ---------------------------------------------------------------------------
# Our broker between a raw client and a raw worker
# ---------------------------------------------------------------------------

async def test_broker_frames_match_capture(zctx, tmp_path):
    front, back = f"ipc://{tmp_path}/front", f"ipc://{tmp_path}/back"
    ctx = Context()
    md = AMajordomo(identity="capture-broker", context=ctx)
    md.bind_frontend(front)
    md.bind_backend(back)
    md.run()
    wk = raw(zctx, zmq.DEALER, WORKER_ID)
    wk.connect(back)
    cl = raw(zctx, zmq.DEALER, CLIENT_ID)
    cl.connect(front)
    rq = raw(zctx, zmq.REQ, name2uuid("sgc-golden").bytes)
    rq.connect(front)
    try:
        await wk.send_multipart(sent(1))
        assert_matches(await recv(wk), 2)
        await wk.send_multipart(sent(3))

        async def roundtrip(i_req, i_fwd, i_replies, i_back):
            await cl.send_multipart(sent(i_req))
            fwd = await recv(wk)
            assert_matches(fwd, i_fwd, ignore=(3,))
            assert fwd[3] == CLIENT_ID
            rid = fwd[5]
            assert rid == sent(i_req)[3]
            for i in i_replies:
                frames = sent(i)
                frames[3], frames[5] = fwd[3], rid
                await wk.send_multipart(frames)
            for i in i_back:
                got = await recv(cl)
                assert_matches(got, i)
                assert got[3] == rid

        await cl.send_multipart(sent(4))
        got = await recv(cl)
        assert_matches(got, 5)

        await roundtrip(6, 7, [8], [9])
        await roundtrip(10, 11, [12, 13, 14, 15], [16, 17, 18, 19])
        await roundtrip(20, 21, [22], [23])
        await roundtrip(24, 25, [26, 27, 28], [29, 30, 31])
        await roundtrip(32, 33, [34, 35, 36], [37, 38, 39])
        await roundtrip(50, 51, [52], [53])

        for i_req, i_rep in ((40, 41), (42, 43), (44, 45), (46, 47)):
            await cl.send_multipart(sent(i_req))
            got = await recv(cl)
            assert_matches(got, i_rep, ignore=(0,))
            assert got[3] == sent(i_req)[3]
        # info() reports the broker's own identity (capture-broker)
        await cl.send_multipart(sent(40))
        assert envelope((await recv(cl))[4])["result"]["my_id"] == BROKER_ID

        await cl.send_multipart(sent(48))
        got = await recv(cl)
        assert_matches(got, 49, ignore=(0,))
        exc = envelope(got[4])["exception"]
        assert exc[:2] == ["ServiceUnAvailableError",
                           "ServiceUnAvailableError('The NoSuchService Service unavailable.')"]

        # Unknown internal function: the original is silent (entry 56); we reply.
        await cl.send_multipart(sent(56))
        exc = envelope((await recv(cl))[4])["exception"]
        assert exc[0] == "AttributeError"

        # REQ client (entries 57-60)
        await rq.send_multipart(sent(57))
        fwd = await recv(wk)
        assert_matches(fwd, 58, ignore=(3,))
        frames = sent(59)
        frames[3], frames[5] = fwd[3], fwd[5]
        await wk.send_multipart(frames)
        assert_matches(await recv(rq), 60)

        await cl.send_multipart(sent(61))
        assert_matches(await recv(cl), 62)
        await nothing(wk, 0.1)
    finally:
        md.stop()
        await asyncio.sleep(0.05)
        # broker shutdown says DISCONNECT to the worker (entry 65)
        got = [m async for m in _drain(wk)]
        assert any(m == received(65) for m in got), got
        ctx.destroy(linger=0)


async def _drain(sock, timeout=0.5):
    while await sock.poll(int(timeout * 1000)):
        yield await sock.recv_multipart()


async def test_broker_heartbeats_idle_worker(zctx, tmp_path):
    back = f"ipc://{tmp_path}/back"
    ctx = Context()
    md = AMajordomo(identity="capture-broker", context=ctx, heartbeat=100)
    md.bind_backend(back)
    md.run()
    wk = raw(zctx, zmq.DEALER, WORKER_ID)
    wk.connect(back)
    try:
        await wk.send_multipart(sent(1))
        assert_matches(await recv(wk), 2)
        # an idle worker gets a HEARTBEAT every interval (entry 63)
        assert_matches(await recv(wk, 1.0), 63)
    finally:
        md.stop()
        ctx.destroy(linger=0)


# ---------------------------------------------------------------------------
# Our client against a raw broker
# ---------------------------------------------------------------------------

async def test_client_frames_match_capture(zctx, tmp_path):
    front = f"ipc://{tmp_path}/front"
    broker = raw(zctx, zmq.ROUTER)
    broker.bind(front)
    ctx = Context()
    cli = Client(front, identity="capture-client", context=ctx, heartbeat=300)

    credits = []

    async def answer(i_req, i_replies):
        got = await recv(broker)
        for _ in range(100):  # bounded: HugeData credits, our extension, are not in the capture
            if got[2] != CREDIT_HEADER:
                break
            credits.append(got)
            got = await recv(broker)
        assert_matches(got, i_req)
        rid = got[4]
        for i in i_replies:
            frames = sent(i)
            frames[0] = CLIENT_ID
            frames[4] = rid
            await broker.send_multipart(frames)
        return rid

    try:
        connect = asyncio.ensure_future(cli.connect())
        await answer(4, [5])
        await connect
        assert cli._remote_services == {"GateRPC", "Gate"}

        call = asyncio.ensure_future(cli.GateRPC.echo("hello", 42, flag=True))
        await answer(6, [9])
        assert await call == {"args": ["hello", 42], "kwargs": {"flag": True}}

        call = asyncio.ensure_future(cli.GateRPC.gen(3))
        await answer(10, [16, 17, 18, 19])
        assert [i async for i in await call] == [0, 1, 2]

        call = asyncio.ensure_future(cli.GateRPC.boom())
        await answer(20, [23])
        with pytest.raises(RemoteException) as info:
            await call
        assert str(info.value).startswith("\n  RemoteTraceback (ValueError):\n  ValueError('boom!')\n  ")

        call = asyncio.ensure_future(cli.GateRPC.huge())
        huge_rid = await answer(24, [29, 30, 31])
        assert await call == {"payload": "x" * 64, "n": 3}

        call = asyncio.ensure_future(cli.GateRPC.agen_boom(2))
        await answer(32, [37, 38, 39])
        items = []
        with pytest.raises(RemoteException, match="stream boom"):
            async for i in await call:
                items.append(i)
        assert items == [0, 1]

        # idle for one heartbeat interval -> keepalive (entry 61)
        await answer(61, [62])
        await asyncio.sleep(0.05)
        assert len(cli.replies) == 0
        # The HugeData reply made the client credit it (docs/PROTOCOL.md, "HugeData
        # flow control"): 0 as its first chunk came, then what it had decompressed.
        assert credits and all(c[1:5] == [b"", CREDIT_HEADER, b"GateRPC", huge_rid] and len(c) == 6
                               for c in credits), credits
        values = [int.from_bytes(c[5], "big") for c in credits]
        assert values[0] == 0 and values == sorted(values), values
    finally:
        cli.close()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)
