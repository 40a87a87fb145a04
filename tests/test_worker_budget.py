"""A worker over the process-wide backlog budget tells every caller.

The worker's replies wait in its socket's backlog when the broker does not
read them.  A reply that would push the process over the budget
(``Settings.BACKLOG_MAX_*``) is replaced by a small error reply naming the
budget, sent past it: every request gets exactly one answer, none is lost
silently; a stream ends with that error and its generator stops.  The broker
here is a raw ROUTER socket the test reads only when it chooses to.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import zmq
import zmq.asyncio

from gaterpc import loopio
from gaterpc.core import Context, Service, Worker
from gaterpc.counters import drops_snapshot
from gaterpc.global_settings import Settings
from gaterpc.serialization import msg_pack, msg_unpack
from gaterpc.utils import interface

STREAM_TAG = b"GateStreamGenerator"
STREAM_END = b"GateStreamEnd"
STREAM_EXC = b"GateStreamException"
BIG = 100 * 1024
produced: list[int] = []


class Big(Worker):
    @interface
    def big(self, i):
        return bytes([i % 256]) * BIG

    @interface
    def items(self, n):
        for i in range(n):
            produced.append(i)
            yield bytes([i % 256]) * BIG


@pytest.fixture
def small_budget(monkeypatch):
    """A 256 KiB process budget and tiny high-water marks, restored afterwards."""
    monkeypatch.setattr(Settings, "BACKLOG_MAX_BYTES", 256 * 1024)
    monkeypatch.setattr(Settings, "BACKLOG_MAX_MESSAGES", 100_000)
    monkeypatch.setattr(Settings, "ZMQ_SOCK", {zmq.SNDHWM: 2, zmq.RCVHWM: 2, zmq.SNDBUF: 8192})
    loopio._BUDGET.refresh()
    try:
        yield
    finally:
        monkeypatch.undo()
        loopio._BUDGET.refresh()


@contextlib.asynccontextmanager
async def _worker_and_raw_broker(tmp_path):
    """A ``Big`` worker connected to a raw ROUTER that reads only when the test does;
    yields (broker socket, worker, the worker's identity), ends both."""
    raw_ctx = zmq.asyncio.Context()
    broker = raw_ctx.socket(zmq.ROUTER)
    broker.linger = 0
    broker.rcvhwm = 2
    broker.setsockopt(zmq.RCVBUF, 8192)
    broker.bind(f"ipc://{tmp_path}/b")
    ctx = Context()
    worker = Service(name="Big").create_worker(Big, f"ipc://{tmp_path}/b", context=ctx)
    worker._reconnect = False
    worker.run()
    try:
        ready = await asyncio.wait_for(broker.recv_multipart(), 5)
        yield broker, worker, ready[0]
    finally:
        worker.stop()
        await asyncio.sleep(0.05)
        raw_ctx.destroy(linger=0)
        ctx.destroy(linger=0)


async def _read_all(broker, finished, timeout=30.0, quiet_ms=300, limit=10_000):
    """What the worker sends until ``finished(got)`` (bounded by ``timeout`` and ``limit``),
    then until it is quiet for ``quiet_ms``: anything sent after the end is caught too.

    Waiting for the end rather than for a quiet gap keeps a worker that a loaded
    machine starves for a moment from looking finished."""
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < limit and not finished(got) and loop.time() < deadline:
        if await broker.poll(100):
            got.append(await broker.recv_multipart())
    while len(got) < limit and await broker.poll(quiet_ms):
        got.append(await broker.recv_multipart())
    return got


def _replies_to(n):
    """``finished`` for :func:`_read_all`: ``n`` replies arrived."""
    return lambda got: sum(1 for m in got if m[3] == b"\x03") >= n


def _streams_ended(rids):
    """``finished`` for :func:`_read_all`: each stream of ``rids`` ended (end or error)."""
    def finished(got):
        ended = {m[6] for m in got if m[3] == b"\x03" and len(m) > 8 and m[7] == STREAM_TAG
                 and m[8] in (STREAM_END, STREAM_EXC)}
        return set(rids) <= ended
    return finished


async def _until(pred, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and not pred():
        await asyncio.sleep(0.02)
    return pred()


def _triple(body: bytes):
    return msg_unpack(body)["exception"]


async def test_every_refused_reply_becomes_an_error_reply(tmp_path, small_budget):
    async with _worker_and_raw_broker(tmp_path) as (broker, worker, wid):
        drops0 = drops_snapshot().get("backlog_budget", 0)
        n = 40  # 4 MiB of results against a 256 KiB budget
        for i in range(n):
            await broker.send_multipart([wid, b"", b"MDPW01", b"\x02", b"cli", b"", b"r%03d" % i,
                                         msg_pack("big"), msg_pack([i]), msg_pack({})])
        # the broker does not read: the worker's backlog meets the budget
        assert await _until(lambda: drops_snapshot().get("backlog_budget", 0) > drops0)
        got = await _read_all(broker, _replies_to(n))
        # counted once every reply has left (a slow worker may still be refusing when the first count shows)
        refused = drops_snapshot()["backlog_budget"] - drops0
        replies = [m for m in got if m[3] == b"\x03"]
        by_id: dict[bytes, list[bytes]] = {}
        for m in replies:
            assert m[4] == b"cli" and m[5] == b""
            by_id.setdefault(m[6], []).append(m[7])
        # every request answered exactly once, in order
        assert sorted(by_id) == [b"r%03d" % i for i in range(n)]
        assert all(len(v) == 1 for v in by_id.values())
        assert [m[6] for m in replies] == [b"r%03d" % i for i in range(n)]
        errors = {rid: body[0] for rid, body in by_id.items() if msg_unpack(body[0])["exception"]}
        assert len(errors) == refused > 0
        for body in errors.values():
            triple = _triple(body)
            assert triple[0] == "BacklogBudgetError" and "BACKLOG_MAX_BYTES=262144" in triple[1]
        for rid, body in by_id.items():
            if rid not in errors:
                i = int(rid[1:])
                assert msg_unpack(body[0])["result"] == bytes([i % 256]) * BIG
        # the budget is given back once everything left
        assert await _until(lambda: loopio.backlog_budget()["messages"] == 0)


async def test_refused_stream_ends_with_one_error_and_stops(tmp_path, small_budget):
    produced.clear()
    async with _worker_and_raw_broker(tmp_path) as (broker, worker, wid):
        drops0 = drops_snapshot().get("backlog_budget", 0)
        # four streams of 300 items of 100 KiB each: each waits for the backlog to drain
        # between items, so together they meet the budget only by being four
        streams = [b"s%d" % k for k in range(4)]
        for rid in streams:
            await broker.send_multipart([wid, b"", b"MDPW01", b"\x02", b"cli", b"", rid,
                                         msg_pack("items"), msg_pack([300]), msg_pack({})])
        assert await _until(lambda: drops_snapshot().get("backlog_budget", 0) > drops0)
        # the refused streams stop producing
        assert await _until(lambda: not worker._runner.active or len(worker._runner.active) < 4)
        got = await _read_all(broker, _streams_ended(streams))
        bodies: dict[bytes, list[list[bytes]]] = {rid: [] for rid in streams}
        for m in got:
            if m[3] == b"\x03":
                bodies[m[6]].append(m[7:])
        failed = [rid for rid, b in bodies.items() if b and b[-1][:2] == [STREAM_TAG, STREAM_EXC]]
        assert failed, {rid: len(b) for rid, b in bodies.items()}
        for rid in failed:
            b = bodies[rid]
            # items in order, then exactly one error naming the budget, nothing after it
            assert [x[:2] for x in b].count([STREAM_TAG, STREAM_EXC]) == 1
            triple = msg_unpack(b[-1][2])
            assert triple[0] == "BacklogBudgetError" and "BACKLOG_MAX_BYTES" in triple[1]
            items = b[:-1]
            assert all(x[0] == STREAM_TAG and len(x) == 2 for x in items)
            assert [msg_unpack(x[1]) for x in items] == [bytes([i % 256]) * BIG for i in range(len(items))]
        # a refused stream's generator stopped long before its 300 items
        assert len(produced) < 4 * 300
        assert await _until(lambda: not worker._runner._refused)
