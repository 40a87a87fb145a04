"""Large frames: sent without a copy, intact, released, and counted along the RPC path.

Both twins of ``zmqio`` (the compiled one is imported directly, so it is
tested under ``GATERPC_NO_EXTENSIONS=1`` too), and the roles of one process
(client | broker | worker) on the selected backend.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import sys
import threading
import time

import pytest
import zmq

from gaterpc.core import AMajordomo, Client, Context, Service, Worker
from gaterpc.protocol import ZERO_COPY_MIN
from gaterpc.utils import interface

_names = itertools.count()
BIG = ZERO_COPY_MIN


class Sockets:
    """Sockets of one context, closed with linger 0 and the context terminated at teardown."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.socks: list = []

    def pair(self, addr: str, **opts: int):
        router = self.ctx.socket(zmq.ROUTER)
        dealer = self.ctx.socket(zmq.DEALER)
        for s in (router, dealer):
            s.linger = 0
            self.socks.append(s)
            for k, v in opts.items():
                s.setsockopt(getattr(zmq, k), v)
        dealer.identity = b"dealer"
        router.bind(addr)
        dealer.connect(addr)
        return router, dealer

    def close(self) -> None:
        for s in self.socks:
            s.close(linger=0)
        t = threading.Thread(target=self.ctx.term, daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), "context did not terminate: a socket leaked"


@pytest.fixture
def zs():
    s = Sockets()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=["inproc", "ipc"])
def addr(request, tmp_path):
    if request.param == "inproc":
        return f"inproc://big-{next(_names)}"
    return f"ipc://{tmp_path}/big-{next(_names)}.sock"


def recv_n(io, n: int, timeout: float = 5.0) -> list:
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        batch = io.recv_batch(n - len(out))
        if not batch:
            io.socket.poll(50, zmq.POLLIN)
        out.extend(batch)
    return out


def _refs_in_a_call(obj) -> int:
    return sys.getrefcount(obj)


_probe = object()
#: references a call adds to its argument: 1 from Python 3.11 on, 2 on 3.10
#: (the caller's stack keeps its own until the call returns)
_CALL_REFS = _refs_in_a_call(_probe) - sys.getrefcount(_probe)
del _probe


def released(mod, obj, baseline: int, timeout: float = 5.0) -> bool:
    """True once ``obj``'s reference count is back to the caller's ``baseline`` (libzmq let it go)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mod.release_sent()
        gc.collect()
        if sys.getrefcount(obj) - _CALL_REFS <= baseline:  # minus the references of this call
            return True
        time.sleep(0.01)
    return False


def test_big_bytes_frames_are_sent_without_copy(zs, zmqio_module, addr):
    mod = zmqio_module
    router, dealer = zs.pair(addr)
    r, d = mod.ZSocketIO(router), mod.ZSocketIO(dealer)
    big = bytes(range(256)) * (BIG // 256) + b"tail"
    exact = b"e" * BIG
    small = b"s" * (BIG - 1)
    mutable = bytearray(b"m" * (BIG * 2))
    baseline = sys.getrefcount(big)
    assert d.send([b"head", big, small, exact, mutable, memoryview(big)])
    # A bytearray (or a view) could change under libzmq: those are copied.
    mutable[:] = b"z" * len(mutable)
    (msg,) = recv_n(r, 1)
    assert msg == [b"dealer", b"head", big, small, exact, b"m" * (BIG * 2), big]
    assert all(type(f) is bytes for f in msg)
    assert (d.tx_nocopy_frames, d.tx_nocopy_bytes) == (2, len(big) + len(exact))
    assert d.tx_msgs == 1 and d.tx_bytes == 4 + len(big) * 2 + len(small) + len(exact) + BIG * 2
    # Echo the received (immutable) frames back: the big ones go without a copy again.
    assert r.send(msg)
    (back,) = recv_n(d, 1)
    assert back == msg[1:]
    assert (r.tx_nocopy_frames, r.tx_nocopy_bytes) == (4, len(big) * 2 + len(exact) + BIG * 2)
    assert released(mod, big, baseline), "libzmq's reference to a sent frame was never dropped"


def test_would_block_sends_nothing_and_releases(zs, zmqio_module):
    """At the high-water mark a message with big frames is refused whole, counted nowhere, and let go."""
    mod = zmqio_module
    router, dealer = zs.pair(f"inproc://big-{next(_names)}", SNDHWM=1, RCVHWM=1)
    d = mod.ZSocketIO(dealer)
    big = b"b" * (BIG * 2)
    baseline = sys.getrefcount(big)
    results = []
    for _ in range(100):  # bounded: the HWM is reached after a few
        results.append(d.send([big, b"x"]))
        if not results[-1]:
            break
    assert results[-1] is False
    sent = results.count(True)
    assert (d.tx_msgs, d.tx_nocopy_frames, d.tx_nocopy_bytes) == (sent, sent, sent * len(big))
    r = mod.ZSocketIO(router)
    got = recv_n(r, sent)
    assert got == [[b"dealer", big, b"x"]] * sent
    del got
    assert released(mod, big, baseline)


def test_twins_agree_on_big_frames(twins_zmqio, zs):
    """The same sends give the same frames and counters on both twins."""
    seen = []
    for mod in twins_zmqio:
        router, dealer = zs.pair(f"inproc://big-{next(_names)}")
        r, d = mod.ZSocketIO(router), mod.ZSocketIO(dealer)
        msgs = [[b"a" * n, b"b" * m] for n, m in ((BIG, 1), (BIG - 1, BIG + 1), (0, 3 * BIG))]
        sent = d.send_many(msgs)
        got = recv_n(r, len(msgs))
        seen.append((sent, got, d.tx_msgs, d.tx_bytes, d.tx_nocopy_frames, d.tx_nocopy_bytes))
    assert seen[0] == seen[1]
    assert seen[0][4:] == (3, BIG + (BIG + 1) + 3 * BIG)


def test_recv_nocopy_gives_readonly_views_of_big_frames(zs, zmqio_module, addr):
    """With ``recv_nocopy_min`` big frames arrive as read-only views that every consumer can use."""
    import msgpack

    mod = zmqio_module
    router, dealer = zs.pair(addr)
    r, d = mod.ZSocketIO(router, recv_nocopy_min=BIG), mod.ZSocketIO(dealer)
    assert r.recv_nocopy_min == BIG and d.recv_nocopy_min == 0
    payload = msgpack.packb(["x", b"\x00" * BIG])
    big = b"b" * BIG
    assert d.send([b"", b"MDPC01", big, payload, b"s" * (BIG - 1)])
    (msg,) = recv_n(r, 1)
    assert [type(f) for f in msg] == [bytes, bytes, bytes, memoryview, memoryview, bytes]
    assert r.rx_nocopy_frames == 2 and r.rx_bytes == sum(len(f) for f in msg)
    view = msg[3]
    assert view.readonly and view == big and view.nbytes == BIG and len(view) == BIG
    assert hash(view) == hash(big) and {big: 1}[view] == 1
    assert msgpack.unpackb(msg[4]) == ["x", b"\x00" * BIG]
    with pytest.raises(TypeError):
        view[0] = 1
    # Forwarded as is: each whole view is sent again sharing libzmq's message (no copy).
    assert r.send(msg)
    assert (r.tx_nocopy_frames, r.tx_nocopy_bytes) == (2, BIG + len(payload))
    (back,) = recv_n(d, 1)
    assert back == [b"", b"MDPC01", big, payload, b"s" * (BIG - 1)]
    assert all(type(f) is bytes for f in back)
    # A slice of a view is not the received message: copied (and not counted).
    assert r.send([msg[0], msg[4][1:]])
    (back,) = recv_n(d, 1)
    assert back == [payload[1:]] and r.tx_nocopy_frames == 2
    # The view keeps libzmq's message alive after the socket is gone.
    r.close()
    assert bytes(view) == big
    del view, msg


@pytest.mark.parametrize("bad", [-1, 1.5, "64", None])
def test_recv_nocopy_min_must_be_a_non_negative_int(zs, zmqio_module, bad):
    router, _dealer = zs.pair(f"inproc://big-{next(_names)}")
    with pytest.raises(ValueError, match="recv_nocopy_min must be an int >= 0"):
        zmqio_module.ZSocketIO(router, recv_nocopy_min=bad)


def test_twins_agree_on_recv_nocopy(twins_zmqio, zs):
    seen = []
    for mod in twins_zmqio:
        router, dealer = zs.pair(f"inproc://big-{next(_names)}")
        r, d = mod.ZSocketIO(router, recv_nocopy_min=10), mod.ZSocketIO(dealer)
        d.send_many([[b"a" * 9, b"b" * 10], [b"c" * 100], [b""]])
        got = recv_n(r, 3)
        seen.append(([[(type(f).__name__, bytes(f)) for f in m] for m in got],
                     r.rx_msgs, r.rx_bytes, r.rx_nocopy_frames))
    assert seen[0] == seen[1]
    assert seen[0][3] == 2


@pytest.fixture(scope="module")
def twins_zmqio():
    from gaterpc._speedups import _zmqio_py

    try:
        from gaterpc._speedups import _zmqio_c
    except ImportError:
        pytest.skip("compiled zmqio not built")  # a pure build has no compiled twin to compare
    return (_zmqio_py, _zmqio_c)


async def test_loopsocket_forwards_views_through_its_backlog(tmp_path):
    """A LoopSocket that receives big frames as views forwards them, queued at the HWM, intact."""
    from gaterpc.loopio import LoopSocket, backlog_budget

    loop = asyncio.get_running_loop()
    ctx = zmq.Context()
    socks = []

    def sock(kind, **opts):
        s = ctx.socket(kind)
        s.linger = 0
        for k, v in opts.items():
            s.setsockopt(getattr(zmq, k), v)
        socks.append(s)
        return s

    lsocks = []
    try:
        src, inbound = sock(zmq.DEALER), sock(zmq.ROUTER)
        outbound, dst = sock(zmq.DEALER, SNDHWM=2), sock(zmq.ROUTER, RCVHWM=2)
        src.identity = b"src"
        inbound.bind(f"ipc://{tmp_path}/in")
        src.connect(f"ipc://{tmp_path}/in")
        dst.bind(f"ipc://{tmp_path}/out")
        outbound.connect(f"ipc://{tmp_path}/out")
        seen_types = set()
        out_ls = LoopSocket(loop, outbound, lambda batch: None)
        lsocks.append(out_ls)

        def forward(batch):
            for msg in batch:
                seen_types.update(type(f) for f in msg)
                out_ls.send(msg[1:])

        lsocks.append(LoopSocket(loop, inbound, forward, recv_nocopy_min=BIG))
        n = 40
        blobs = [bytes([i]) * (BIG + i) for i in range(n)]
        for i, blob in enumerate(blobs):
            src.send_multipart([b"%d" % i, blob])
        got = []
        deadline = loop.time() + 20
        while len(got) < n and loop.time() < deadline:
            try:
                got.append(dst.recv_multipart(zmq.NOBLOCK)[1:])
            except zmq.Again:
                await asyncio.sleep(0.005)
        assert got == [[b"%d" % i, blob] for i, blob in enumerate(blobs)]
        assert seen_types == {bytes, memoryview}
        for _ in range(100):
            if not out_ls.backlog_size():
                break
            await asyncio.sleep(0.01)
        assert out_ls.backlog_size() == 0 and backlog_budget()["bytes"] == 0
    finally:
        for ls in lsocks:
            ls.close()
        for s in socks:
            s.close(linger=0)
        ctx.term()


# -- nothing keeps a large result alive ---------------------------------------------


@pytest.fixture(params=["py", "c"])
def reqtable_twin(request):
    import importlib

    try:
        return importlib.import_module(f"gaterpc._speedups._reqtable_{request.param}")
    except ImportError:
        pytest.skip("compiled reqtable not built")  # a pure build has only the pure twin


def test_request_table_drops_values_on_pop_and_touch(reqtable_twin):
    """The lazily cleaned deadline index must not keep a popped value (a future and its result) alive."""
    import weakref

    class Value:
        pass

    table = reqtable_twin.RequestTable()
    refs = []
    for i in range(50):  # far below the compaction slack: every popped entry stays in the index
        v = Value()
        refs.append(weakref.ref(v))
        table.add(b"%d" % i, v, 100.0 + i)
        del v
    for i in range(0, 50, 2):
        assert table.touch(b"%d" % i, 50.0) is True  # an earlier deadline: the old entry goes stale
    for i in range(25):
        assert isinstance(table.pop(b"%d" % i), Value)
    gc.collect()
    assert [r() is None for r in refs] == [True] * 25 + [False] * 25
    assert sorted(k for k, _ in table.expire(1000.0)) == sorted(b"%d" % i for i in range(25, 50))
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("twin", ["py", "c"])
def test_single_reply_body_copies_a_large_result_once(twin):
    """``singleton_ok`` allocates the body once: no temporary the size of the result."""
    import importlib
    import tracemalloc

    import msgpack

    try:
        frames = importlib.import_module(f"gaterpc._speedups._frames_{twin}")
    except ImportError:
        pytest.skip("compiled frames not built")  # a pure build has only the pure twin
    size = 4 * 1024 * 1024
    packed = msgpack.packb(b"r" * size)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        body = frames.singleton_ok(packed)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert msgpack.unpackb(body) == {"result": b"r" * size, "exception": None}
    assert peak - before < 1.5 * size, "a temporary copy of the result was made"


# -- the RPC path ------------------------------------------------------------------


class Echo(Worker):
    @interface
    def echo(self, blob):
        return blob


async def _cluster(transport, tmp_path):
    ctx = Context()
    if transport == "inproc":
        frontend, backend = f"inproc://bf-front-{id(ctx)}", f"inproc://bf-back-{id(ctx)}"
    else:
        frontend, backend = f"ipc://{tmp_path}/front", f"ipc://{tmp_path}/back"
    broker = AMajordomo(context=ctx)
    broker.bind_frontend(frontend)
    broker.bind_backend(backend)
    broker.run()
    worker = Service(name="Big").create_worker(Echo, backend, context=ctx)
    worker.run()
    for _ in range(300):
        if "Big" in broker.services and broker.services["Big"].workers:
            break
        await asyncio.sleep(0.01)
    client = Client(frontend, context=ctx)
    return ctx, broker, worker, client


@pytest.mark.parametrize("transport", ["inproc", "ipc"])
@pytest.mark.parametrize("size", [BIG, 1024 * 1024])
async def test_large_argument_and_result_cross_every_hop_without_send_copies(transport, size, tmp_path):
    """One call with a big ``bytes`` argument: every process hands the big frame to libzmq uncopied.

    The argument frame is sent by the client and forwarded by the broker; the
    result frame is sent by the worker and forwarded by the broker: four
    zero-copy sends per call, counted on the sockets that made them.
    """
    ctx, broker, worker, client = await _cluster(transport, tmp_path)
    try:
        await client.connect()
        blob = bytes(range(256)) * (size // 256)
        socks = {"client": client._lsock.io, "front": broker._lfront.io, "back": broker._lback.io,
                 "worker": worker._lsock.io}
        before = {k: io.tx_nocopy_frames for k, io in socks.items()}
        calls = 3
        for i in range(calls):
            result = await asyncio.wait_for(client.Big.echo(blob + bytes([i])), 10)
            assert result == blob + bytes([i])
        after = {k: io.tx_nocopy_frames - before[k] for k, io in socks.items()}
        # client -> broker (args), broker -> worker (args), worker -> broker (result), broker -> client.
        assert after == {"client": calls, "back": calls, "worker": calls, "front": calls}
    finally:
        client.close()
        worker.stop()
        broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)
