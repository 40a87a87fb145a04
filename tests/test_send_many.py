"""``LoopSocket.send_many``: a burst handed to the socket in one call, in order, nothing lost.

The worker sends the replies of one batch and the client the requests of one
loop iteration this way; what the socket does not take at once (high-water
mark) is handed by the caller to ``send``, which queues it behind, so the
receiver gets every message once and in order.
"""

from __future__ import annotations

import asyncio

import pytest
import zmq

from gaterpc.loopio import LoopSocket


async def until(pred, timeout=10.0, step=0.01):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return bool(pred())


@pytest.fixture
def pair(tmp_path):
    ctx = zmq.Context()
    socks = []

    def make(hwm=0):
        a = ctx.socket(zmq.DEALER)
        b = ctx.socket(zmq.DEALER)
        for s in (a, b):
            s.linger = 0
            socks.append(s)
        a.sndhwm = hwm
        b.rcvhwm = hwm
        name = f"ipc://{tmp_path}/p{len(socks)}"
        a.bind(name)
        b.connect(name)
        return a, b

    try:
        yield make
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.term()


@pytest.fixture
def loop_socket():
    """``make(sock, handler)``: a LoopSocket on the running loop, closed after the test."""
    made = []

    def make(sock, handler=lambda msgs: None):
        ls = LoopSocket(asyncio.get_running_loop(), sock, handler)
        made.append(ls)
        return ls

    yield make
    for ls in made:
        ls.close()


def _msgs(n, start=0):
    return [(b"", b"H", b"%d" % i, b"x" * 100) for i in range(start, start + n)]


async def test_send_many_sends_a_burst_in_order(pair):
    loop = asyncio.get_running_loop()
    a, b = pair()
    got = []
    la = LoopSocket(loop, a, lambda msgs: None)
    lb = LoopSocket(loop, b, got.extend)
    try:
        assert await until(lambda: la.send_many([(b"first",)]) == 1)
        msgs = _msgs(500)
        assert la.send_many(msgs) == 500
        assert la.io.tx_msgs == 501
        assert await until(lambda: len(got) == 501)
        assert [tuple(m) for m in got[1:]] == msgs
        assert la.send_many([]) == 0
    finally:
        la.close()
        lb.close()


async def test_what_the_socket_does_not_take_is_queued_behind_by_send(pair, loop_socket):
    a, b = pair(hwm=5)
    got = []
    la = loop_socket(a)
    msgs = _msgs(2000)
    n = la.send_many(msgs)
    assert n < 2000  # the high-water marks stop it (nobody reads yet)
    for frames in msgs[n:]:
        assert la.send(frames)
    assert la.backlog_size() == 2000 - n
    # With a backlog, send_many takes nothing (order): the caller uses send.
    assert la.send_many(_msgs(3, 2000)) == 0
    for frames in _msgs(3, 2000):
        assert la.send(frames)
    loop_socket(b, got.extend)
    assert await until(lambda: len(got) == 2003)
    assert [tuple(m) for m in got] == _msgs(2003)
    assert la.backlog_size() == 0


async def test_send_many_on_a_closed_or_per_peer_socket_takes_nothing(pair):
    loop = asyncio.get_running_loop()
    a, _ = pair()
    la = LoopSocket(loop, a, lambda msgs: None)
    la.close()
    assert la.send_many(_msgs(3)) == 0
    assert not la.send(_msgs(1)[0])  # send drops the rest of a closed socket, as always

    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.linger = 0
    try:
        lr = LoopSocket(loop, r, lambda msgs: None, per_peer=True)
        try:
            assert lr.send_many([(b"peer", b"", b"x")]) == 0
        finally:
            lr.close()
    finally:
        r.close(linger=0)
        ctx.term()


async def test_a_frame_that_is_not_a_buffer_raises_as_send_does(pair):
    loop = asyncio.get_running_loop()
    a, _ = pair()
    la = LoopSocket(loop, a, lambda msgs: None)
    try:
        # The peer is connected once a message goes through (a DEALER without one would block).
        assert await until(lambda: la.send_many([(b"first",)]) == 1)
        with pytest.raises(TypeError):
            la.send_many([(b"ok",), (b"", 12)])
        assert la.io.tx_msgs == 2  # the message before it was sent whole
        assert not la.closed
    finally:
        la.close()


async def test_send_all_sends_the_burst_and_queues_the_rest_in_order(pair, loop_socket):
    a, b = pair(hwm=5)
    got = []
    la = loop_socket(a)
    # The peer is connected once a message goes through (a DEALER without one would block).
    assert await until(lambda: la.send_many([(b"first",)]) == 1)
    la.send_all(_msgs(2000))  # nobody reads yet: the socket takes a few, the rest waits
    taken = la.io.tx_msgs - 1
    assert taken > 0 and la.backlog_size() == 2000 - taken
    la.send_all(_msgs(3, 2000))  # behind the backlog, in order
    assert la.io.tx_msgs - 1 == taken
    loop_socket(b, got.extend)
    assert await until(lambda: len(got) == 2004)
    assert [tuple(m) for m in got[1:]] == _msgs(2003)
    assert la.backlog_size() == 0
    la.send_all([])
