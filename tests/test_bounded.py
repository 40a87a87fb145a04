"""Bounded memory and nothing silent, in one process.

* the process-wide backlog budget of every LoopSocket (refused sends raise or
  reach ``on_over_budget``; the budget is given back when messages leave);
* a stream whose client cannot keep up ends for that client with an error
  naming the budget (never a silent gap), and is cancelled at the worker;
* a client whose connection vanishes is forgotten: its in-flight requests
  are cancelled at the worker (CANCEL) and their capacity released;
* a ``BaseException`` raised by user code gets an error reply;
* HugeData pipe mode: a producer racing the consumer loses nothing.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

import pytest
import zmq

from gaterpc import loopio
from gaterpc.core import AMajordomo, Context, Service, Worker
from gaterpc.counters import drops_snapshot
from gaterpc.global_settings import Settings
from gaterpc.hugedata import HugeData
from gaterpc.loopio import BacklogBudgetError, LoopSocket, backlog_budget
from gaterpc.serialization import msg_pack, msg_unpack
from gaterpc.utils import interface

STREAM_TAG = b"GateStreamGenerator"
STREAM_END = b"GateStreamEnd"
STREAM_EXC = b"GateStreamException"


async def until(pred, timeout=10.0, step=0.02):
    """Poll ``pred`` (bounded); True once it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return bool(pred())


@pytest.fixture
def small_budget():
    """A 256 KiB process budget for the test, restored afterwards."""
    old = Settings.BACKLOG_MAX_BYTES, Settings.BACKLOG_MAX_MESSAGES
    Settings.BACKLOG_MAX_BYTES = 256 * 1024
    Settings.BACKLOG_MAX_MESSAGES = 100_000
    loopio._BUDGET.refresh()
    try:
        yield
    finally:
        Settings.BACKLOG_MAX_BYTES, Settings.BACKLOG_MAX_MESSAGES = old
        loopio._BUDGET.refresh()


# -- LoopSocket budget ------------------------------------------------------------------


def _pair(ctx, tmp_path, name, hwm=5):
    a = ctx.socket(zmq.DEALER)
    a.linger = 0
    a.sndhwm = hwm
    b = ctx.socket(zmq.DEALER)
    b.linger = 0
    b.rcvhwm = hwm
    a.bind(f"ipc://{tmp_path}/{name}")
    b.connect(f"ipc://{tmp_path}/{name}")
    return a, b


async def test_budget_refuses_with_error_and_is_given_back(tmp_path, small_budget):
    loop = asyncio.get_running_loop()
    ctx = zmq.Context()
    a, b = _pair(ctx, tmp_path, "p1")
    refused = []
    ls = LoopSocket(loop, a, lambda msgs: None)
    ls2 = None
    base = backlog_budget()
    drops0 = drops_snapshot().get("backlog_budget", 0)
    try:
        payload = b"x" * 4096
        sent = 0
        with pytest.raises(BacklogBudgetError, match="BACKLOG_MAX_BYTES=262144"):
            for _ in range(10_000):  # bounded: 40 MiB would be far over the budget
                ls.send([payload])
                sent += 1
        assert sent > 0
        use = backlog_budget()
        assert use["bytes"] - base["bytes"] <= 256 * 1024
        assert use["bytes"] - base["bytes"] == ls.backlog_bytes() > 200 * 1024
        assert drops_snapshot().get("backlog_budget", 0) == drops0 + 1
        # another socket of the process meets the same budget: its callback gets the frames
        c, d = _pair(ctx, tmp_path, "p2")
        ls2 = LoopSocket(loop, c, lambda msgs: None, on_over_budget=refused.append)
        for i in range(100):
            if not ls2.send([b"%d" % i, payload]):
                break
        assert refused and refused[0][1] == payload
        # the reader drains: everything queued arrives, the budget comes back
        got = 0
        for _ in range(2000):
            try:
                b.recv_multipart(zmq.NOBLOCK)
                got += 1
            except zmq.Again:
                if got >= sent:
                    break
                await asyncio.sleep(0.005)
        assert got == sent
        assert await until(lambda: ls.backlog_size() == 0)
        ls2.close()
        assert backlog_budget()["bytes"] == base["bytes"]
        assert backlog_budget()["messages"] == base["messages"]
        d.close(linger=0)
    finally:
        ls.close()
        if ls2 is not None:
            ls2.close()
        b.close(linger=0)
        ctx.term()


# -- broker, worker, raw client -------------------------------------------------------------


class Streamer(Worker):
    @interface
    def endless(self, size):
        blob = b"y" * size
        i = 0
        while True:
            yield i, blob
            i += 1

    @interface
    async def slow(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    @interface
    def exit_inline(self):
        raise GeneratorExit("inline generator exit")

    @interface("thread")
    def exit_in_thread(self):
        raise SystemExit(3)

    @interface
    async def custom_base(self):
        raise _CustomBase("custom base exception")

    @interface
    def stream_then_exit(self):
        yield 1
        raise GeneratorExit("stream generator exit")


class _CustomBase(BaseException):
    pass


class Lab:
    def __init__(self, tmp_path, capacity=4, heartbeat=300):
        self.ctx = Context()
        self.front = f"ipc://{tmp_path}/front"
        self.back = f"ipc://{tmp_path}/back"
        self.broker = AMajordomo(context=self.ctx, heartbeat=heartbeat)
        self.broker.bind_frontend(self.front)
        self.broker.bind_backend(self.back)
        self.capacity = capacity
        self.heartbeat = heartbeat
        self.worker = None
        self.raw = []
        self.raw_ctx = zmq.Context()  # plain (blocking API) sockets for the raw clients

    async def start(self):
        self.broker.run()
        self.worker = Service(name="S").create_worker(Streamer, self.back, context=self.ctx,
                                                      workers_heartbeat=self.heartbeat,
                                                      max_allowed_request=self.capacity)
        self.worker.run()
        assert await until(lambda: "S" in self.broker.services and self.broker.services["S"].workers)

    def remote(self):
        return next(iter(self.broker.services["S"].workers.values()))

    def client(self, rcvhwm=1000):
        s = self.raw_ctx.socket(zmq.DEALER)
        s.linger = 0
        s.rcvhwm = rcvhwm
        s.connect(self.front)
        self.raw.append(s)
        return s

    @staticmethod
    def call(sock, rid, func, *args, service=b"S"):
        sock.send_multipart([b"", b"MDPC01", service, rid, msg_pack(func), msg_pack(list(args)),
                             msg_pack({})])

    async def stop(self):
        for s in self.raw:
            s.close(linger=0)
        if self.worker is not None:
            self.worker.stop()
        self.broker.stop()
        await asyncio.sleep(0.05)
        self.ctx.destroy(linger=0)
        self.raw_ctx.term()


async def read(sock, timeout=10.0, until_pred=None, limit=1_000_000):
    """Replies ``[service, rid, *body]`` read within ``timeout`` (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    out = []
    while loop.time() < deadline and len(out) < limit:
        try:
            msg = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            if until_pred is not None and until_pred(out):
                break
            await asyncio.sleep(0.005)
            continue
        assert msg[0] == b"" and msg[1] == b"MDPC01"
        out.append(msg[2:])
        if until_pred is not None and until_pred(out):
            break
    return out


@pytest.fixture
async def lab(tmp_path):
    lab = Lab(tmp_path)
    await lab.start()
    try:
        yield lab
    finally:
        await lab.stop()


def assert_idle(lab):
    """Exact capacity accounting: nothing in flight, every unit back."""
    w = lab.remote()
    assert w._inflight == {}
    assert w.max_allowed_request == lab.capacity
    assert lab.broker.services["S"]._waiting == deque()
    assert lab.worker._runner.active == {}
    assert lab.worker.requests == set()


async def test_base_exceptions_get_error_replies(lab):
    c = lab.client()
    lab.call(c, b"r1", "exit_inline")
    lab.call(c, b"r2", "exit_in_thread")
    lab.call(c, b"r3", "custom_base")
    lab.call(c, b"r4", "stream_then_exit")
    out = await read(c, until_pred=lambda o: len(o) >= 5)
    by_rid = {}
    for service, rid, *body in out:
        by_rid.setdefault(rid, []).append(body)
    for rid, name in ((b"r1", "GeneratorExit"), (b"r2", "SystemExit"), (b"r3", "_CustomBase")):
        reply = msg_unpack(by_rid[rid][0][0])
        assert reply["exception"][0] == name, reply
    assert by_rid[b"r4"][0][0] == STREAM_TAG
    last = by_rid[b"r4"][-1]
    assert last[:2] == [STREAM_TAG, STREAM_EXC]
    assert msg_unpack(last[2])[0] == "GeneratorExit"
    assert await until(lambda: lab.worker.requests == set())
    assert_idle(lab)


async def test_vanished_client_is_cancelled_at_the_worker(lab):
    drops0 = drops_snapshot()
    c = lab.client()
    lab.call(c, b"s1", "endless", 100)
    lab.call(c, b"s2", "slow", 60)
    out = await read(c, until_pred=lambda o: len(o) >= 50)
    assert len(out) >= 50
    w = lab.remote()
    assert len(w._inflight) == 2 and w.max_allowed_request == lab.capacity - 2
    assert len(lab.worker._runner.active) == 2
    c.close(linger=0)
    lab.raw.remove(c)
    # the next send to the vanished client fails: within two heartbeats all is forgotten
    assert await until(lambda: not w._inflight and not lab.worker._runner.active,
                       timeout=2 * lab.heartbeat / 1000 + 3)
    assert await until(lambda: lab.worker.requests == set())
    assert_idle(lab)
    assert lab.broker._lfront.backlog_size() == 0
    drops = drops_snapshot()
    assert drops.get("client_gone_inflight", 0) - drops0.get("client_gone_inflight", 0) >= 1
    # the worker still serves others, with all its capacity
    c2 = lab.client()
    lab.call(c2, b"t", "slow", 0)
    out = await read(c2, until_pred=lambda o: len(o) >= 1)
    assert msg_unpack(out[0][2])["result"] == 0
    assert await until(lambda: lab.remote()._inflight == {})
    assert_idle(lab)


async def test_stream_over_budget_ends_with_an_error(tmp_path, small_budget):
    lab = Lab(tmp_path)
    await lab.start()
    try:
        drops0 = drops_snapshot().get("backlog_budget", 0)
        c = lab.client(rcvhwm=5)
        c.setsockopt(zmq.RCVBUF, 4096)
        lab.call(c, b"s", "endless", 2000)
        # the client does not read: the broker's backlog for it reaches the budget
        assert await until(lambda: drops_snapshot().get("backlog_budget", 0) > drops0, timeout=30)
        w = lab.remote()
        assert await until(lambda: not w._inflight and not lab.worker._runner.active)
        # now it reads everything: items in order, then the error -- no gap, no end
        out = await read(c, timeout=30, until_pred=lambda o: o and o[-1][2:4] == [STREAM_TAG, STREAM_EXC])
        # the broker's liveness probes of clients with calls pending (empty request id) are not replies
        bodies = [m[2:] for m in out if m[1]]
        assert bodies[-1][:2] == [STREAM_TAG, STREAM_EXC]
        triple = msg_unpack(bodies[-1][2])
        assert triple[0] == "BacklogBudgetError" and "BACKLOG_MAX_BYTES" in triple[1]
        items = [msg_unpack(b[1])[0] for b in bodies[:-1]]
        assert items == list(range(len(items))) and len(items) > 10
        assert [STREAM_TAG, STREAM_END] not in bodies
        assert await until(lambda: lab.worker.requests == set())
        assert_idle(lab)
        assert await until(lambda: lab.broker._lfront.backlog_size() == 0)
    finally:
        await lab.stop()


# -- HugeData pipe mode races -------------------------------------------------------------------


class _RacingDeque(deque):
    """Simulates a producer thread running exactly when the consumer finds the pipe empty."""

    def __init__(self, on_empty):
        super().__init__()
        self.on_empty = on_empty

    def __bool__(self):
        empty = len(self) == 0
        if empty and self.on_empty is not None:
            hook, self.on_empty = self.on_empty, None
            hook()
        return not empty


async def test_hugedata_pipe_piece_added_right_before_close_is_not_lost():
    hd = HugeData(b"END", b"EXC", compress_module="gzip", timeout=None)
    hd.add_data(b"first|")

    def producer_runs():  # between "pipe is empty" and "is it closed?"
        hd.add_data(b"tail")
        hd.flush()

    hd._pipe = _RacingDeque(producer_runs)
    hd._pipe.extend([b"first|"])
    chunks = [c async for c in hd.compress()]
    back = HugeData(b"END", b"EXC", compress_module="gzip", timeout=None)
    for c in chunks:
        back.add_data(c)
    back.flush()
    data = b"".join([p async for p in back.decompress()])
    assert data == b"first|tail"


async def test_hugedata_pipe_producer_thread_without_timeout():
    """Pieces and the close from a thread, no wait timeout: nothing lost, no hang."""
    for round_ in range(20):
        hd = HugeData(b"END", b"EXC", compress_module="gzip", timeout=None)
        pieces = [b"%d-%d;" % (round_, i) for i in range(200)]

        def produce():
            for p in pieces:
                hd.add_data(p)
            hd.flush()

        t = threading.Thread(target=produce)
        t.start()
        try:
            chunks = await asyncio.wait_for(_collect(hd.compress()), 10)
        finally:
            t.join(10)
        back = HugeData(b"END", b"EXC", compress_module="gzip", timeout=None)
        for c in chunks:
            back.add_data(c)
        back.flush()
        data = b"".join([p async for p in back.decompress()])
        assert data == b"".join(pieces)


async def _collect(agen):
    return [c async for c in agen]


async def test_forced_sends_pass_the_budget_and_are_given_back(tmp_path, small_budget):
    loop = asyncio.get_running_loop()
    ctx = zmq.Context()
    a, b = _pair(ctx, tmp_path, "p3")
    ls = LoopSocket(loop, a, lambda msgs: None)
    base = backlog_budget()
    try:
        payload = b"f" * 4096
        n = 0
        for _ in range(200):  # 800 KiB, three times the budget: all accepted
            assert ls.send_forced([payload])
            n += 1
        assert backlog_budget()["bytes"] - base["bytes"] > 256 * 1024
        with pytest.raises(BacklogBudgetError):
            ls.send([payload])
        got = 0
        for _ in range(5000):
            try:
                b.recv_multipart(zmq.NOBLOCK)
                got += 1
            except zmq.Again:
                if got >= n:
                    break
                await asyncio.sleep(0.005)
        assert got == n
        assert await until(lambda: backlog_budget()["bytes"] == base["bytes"])
    finally:
        ls.close()
        b.close(linger=0)
        ctx.term()
