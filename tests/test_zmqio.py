"""``ZSocketIO`` on both twins: batch receive, atomic multipart send, HWM, errors, parity."""

from __future__ import annotations

import errno
import importlib
import itertools
import threading
import time

import pytest
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gaterpc._speedups import zmqio as zmqio_selector

_names = itertools.count()


class Sockets:
    """Creates sockets on one context and closes them all (linger 0) at teardown."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.socks: list = []

    def socket(self, kind: int, **opts: int) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.linger = 0
        for k, v in opts.items():
            s.setsockopt(getattr(zmq, k), v)
        self.socks.append(s)
        return s

    def pair(self, addr: str, **opts: int):
        """A bound ROUTER and a connected DEALER on ``addr``."""
        router = self.socket(zmq.ROUTER, **opts)
        dealer = self.socket(zmq.DEALER, **opts)
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
    """A :class:`Sockets` factory, everything closed and the context terminated afterwards."""
    s = Sockets()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=["inproc", "ipc"])
def addr(request, tmp_path):
    """A fresh inproc or ipc (in a tmp dir) endpoint."""
    if request.param == "inproc":
        return f"inproc://zmqio-{next(_names)}"
    return f"ipc://{tmp_path}/zmqio-{next(_names)}.sock"


def recv_n(io, n: int, max_msgs: int = 1000, timeout: float = 5.0) -> list:
    """Receive exactly ``n`` messages with ``io.recv_batch`` (bounded in time)."""
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        batch = io.recv_batch(min(max_msgs, n - len(out)))
        if not batch:
            if time.monotonic() > deadline:
                break
            io.socket.poll(50, zmq.POLLIN)
            continue
        out.extend(batch)
    return out


def connected(zs, mod, addr, **opts):
    """ROUTER/DEALER twins' IO with the ROUTER knowing the DEALER (one hello exchanged)."""
    router, dealer = zs.pair(addr, **opts)
    r, d = mod.ZSocketIO(router), mod.ZSocketIO(dealer)
    deadline = time.monotonic() + 5
    while not d.send([b"hello"]):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    (hello,) = recv_n(r, 1)
    return r, d, hello[0]


def test_compiled_zmqio_active_when_expected(compiled_expected):
    """The selector must load the compiled twin whenever it is built and allowed."""
    if compiled_expected("zmqio"):
        assert zmqio_selector.USE_C, "compiled zmqio built but not active (libzmq not located?)"
        assert zmqio_selector.ZSocketIO.__module__ == "gaterpc._speedups._zmqio_c"


def test_public_names(zmqio_module):
    assert zmqio_module.__all__ == ("ZSocketIO", "release_sent")


def test_router_dealer_roundtrip(zs, zmqio_module, addr):
    r, d, ident = connected(zs, zmqio_module, addr)
    assert r.socket.type == zmq.ROUTER
    msg = [b"", b"MDPC01", b"\x01", b"service", b"method", b"x" * 100, b""]
    assert d.send(msg) is True
    assert recv_n(r, 1) == [[ident] + msg]
    assert r.send((ident, bytearray(b"rep"), memoryview(b"ly"), b"")) is True
    assert recv_n(d, 1) == [[b"rep", b"ly", b""]]
    assert d.recv_batch(10) == []
    assert r.recv_batch(10) == []


def test_recv_returns_bytes_and_lists(zs, zmqio_module):
    r, d, _ = connected(zs, zmqio_module, f"inproc://t{next(_names)}")
    d.send([b"a"])
    (msg,) = recv_n(r, 1)
    assert type(msg) is list and all(type(f) is bytes for f in msg)


def test_single_empty_frame(zs, zmqio_module):
    r, d, ident = connected(zs, zmqio_module, f"inproc://t{next(_names)}")
    assert d.send([b""])
    assert recv_n(r, 1) == [[ident, b""]]


def test_large_frames(zs, zmqio_module, addr):
    r, d, ident = connected(zs, zmqio_module, addr)
    big = bytes(range(256)) * (5 * 4096)  # 5 MiB
    assert d.send([b"head", big, bytearray(big[:3 << 20])])
    assert recv_n(r, 1) == [[ident, b"head", big, big[: 3 << 20]]]


def test_batches_respect_max_msgs(zs, zmqio_module):
    r, d, ident = connected(zs, zmqio_module, f"inproc://t{next(_names)}")
    for i in range(25):
        assert d.send([b"%d" % i, b"x"])
    got = recv_n(r, 25, max_msgs=1000)
    assert got == [[ident, b"%d" % i, b"x"] for i in range(25)]
    for i in range(25):
        d.send([b"%d" % i])
    deadline = time.monotonic() + 5
    while not r.events() & zmq.POLLIN and time.monotonic() < deadline:
        time.sleep(0.001)
    sizes = []
    total = 0
    while total < 25 and time.monotonic() < deadline:
        b = r.recv_batch(10)
        assert len(b) <= 10
        sizes.append(len(b))
        total += len(b)
    assert total == 25 and max(sizes) == 10
    assert r.recv_batch(0) == []


def test_events(zs, zmqio_module):
    r, d, _ = connected(zs, zmqio_module, f"inproc://t{next(_names)}")
    assert d.events() == zmq.POLLOUT
    assert r.events() & zmq.POLLOUT
    d.send([b"x"])
    deadline = time.monotonic() + 5
    while r.events() != zmq.POLLIN | zmq.POLLOUT and time.monotonic() < deadline:
        time.sleep(0.001)
    assert r.events() == zmq.POLLIN | zmq.POLLOUT
    assert type(r.events()) is int


def test_no_peer_would_block(zs, zmqio_module):
    lonely = zmqio_module.ZSocketIO(zs.socket(zmq.DEALER))
    assert lonely.send([b"a", b"b"]) is False
    assert lonely.send_many([[b"a"], [b"b"]]) == 0
    assert lonely.recv_batch(5) == []


def test_hwm_full_sends_nothing_partial(zs, zmqio_module, addr):
    r, d, ident = connected(zs, zmqio_module, addr, SNDHWM=2, RCVHWM=2)
    sent = 0
    msg = [b"part1", b"", b"part3" * 100]
    for _ in range(10000):
        if not d.send(msg):
            break
        sent += 1
    else:
        pytest.fail("HWM never reached")
    assert 0 < sent < 10000
    assert d.send(msg) is False
    got = recv_n(r, sent, timeout=5)
    assert got == [[ident] + msg] * sent
    assert r.recv_batch(100) == []  # nothing partial or extra was queued


def test_send_many_partial(zs, zmqio_module, addr):
    r, d, ident = connected(zs, zmqio_module, addr, SNDHWM=2, RCVHWM=2)
    messages = [[b"m%d" % i, b"payload"] for i in range(5000)]
    n = d.send_many(iter(messages))
    assert 0 < n < 5000
    got = recv_n(r, n)
    assert got == [[ident] + m for m in messages[:n]]
    assert r.recv_batch(10) == []
    assert d.send_many([]) == 0


def test_invalid_frames_send_nothing(zs, zmqio_module):
    r, d, ident = connected(zs, zmqio_module, f"inproc://t{next(_names)}")
    with pytest.raises(TypeError):
        d.send([b"ok", "not bytes"])
    with pytest.raises(TypeError):
        d.send([b"ok", 5])
    with pytest.raises(ValueError):
        d.send([])
    assert d.send([b"after"])
    assert recv_n(r, 1) == [[ident, b"after"]]
    assert r.recv_batch(5) == []


def test_many_frames(zs, zmqio_module):
    r, d, ident = connected(zs, zmqio_module, f"inproc://t{next(_names)}")
    frames = [b"%d" % i for i in range(100)]
    assert d.send(frames)
    assert recv_n(r, 1) == [[ident] + frames]


def test_closed_socket_raises_enotsock(zs, zmqio_module):
    r, d, _ = connected(zs, zmqio_module, f"inproc://t{next(_names)}")
    d.close()
    d.close()  # idempotent
    assert d.socket.closed
    for call in (lambda: d.recv_batch(1), lambda: d.send([b"x"]), lambda: d.send_many([[b"x"]]), d.events):
        with pytest.raises(zmq.ZMQError) as info:
            call()
        assert info.value.errno == errno.ENOTSOCK
    # Closed behind the wrapper's back: still an error, never freed memory.
    r.socket.close(linger=0)
    with pytest.raises(zmq.ZMQError) as info:
        r.recv_batch(1)
    assert info.value.errno == errno.ENOTSOCK
    with pytest.raises(zmq.ZMQError) as info:
        zmqio_module.ZSocketIO(r.socket)
    assert info.value.errno == errno.ENOTSOCK


def test_other_errors_raise_with_errno(zs, zmqio_module):
    pub = zmqio_module.ZSocketIO(zs.socket(zmq.PUB))
    with pytest.raises(zmq.ZMQError) as info:
        pub.recv_batch(1)
    assert info.value.errno == zmq.ENOTSUP and type(info.value) is zmq.ZMQError
    sub = zmqio_module.ZSocketIO(zs.socket(zmq.SUB))
    with pytest.raises(zmq.ZMQError) as info:
        sub.send([b"x"])
    assert info.value.errno == zmq.ENOTSUP


def test_rejects_non_sockets(zmqio_module):
    with pytest.raises(TypeError):
        zmqio_module.ZSocketIO(object())


def test_asyncio_socket_is_accepted(zs, zmqio_module):
    actx = zmq.asyncio.Context.shadow(zs.ctx)
    a = actx.socket(zmq.DEALER)
    a.linger = 0
    zs.socks.append(a)
    router = zs.socket(zmq.ROUTER)
    name = f"inproc://t{next(_names)}"
    router.bind(name)
    a.connect(name)
    io = zmqio_module.ZSocketIO(a)
    assert io.send([b"from", b"async"])
    r = zmqio_module.ZSocketIO(router)
    (msg,) = recv_n(r, 1)
    assert msg[1:] == [b"from", b"async"]
    assert r.send([msg[0], b"back"])
    assert recv_n(io, 1) == [[b"back"]]


_frames = st.lists(st.binary(max_size=300), min_size=1, max_size=9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(_frames, min_size=1, max_size=8), max_msgs=st.integers(1, 10))
def test_twins_roundtrip_identically(zs, messages, max_msgs):
    """Random multipart messages come out of both twins exactly as they went in."""
    mods = [importlib.import_module("gaterpc._speedups._zmqio_py")]
    try:
        mods.append(importlib.import_module("gaterpc._speedups._zmqio_c"))
    except ImportError:
        pass
    results = []
    for sender, receiver in itertools.product(mods, mods):
        name = f"inproc://h{next(_names)}"
        router, dealer = zs.pair(name)
        d, r = sender.ZSocketIO(dealer), receiver.ZSocketIO(router)
        assert d.send_many(messages) == len(messages)
        got = []
        deadline = time.monotonic() + 5
        while len(got) < len(messages) and time.monotonic() < deadline:
            batch = r.recv_batch(max_msgs)
            assert len(batch) <= max_msgs
            got.extend(batch)
        results.append([m[1:] for m in got])
        r.close()
        d.close()
    for got in results:
        assert got == messages
