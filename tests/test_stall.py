"""A stalled event loop does not make a role give up on live peers.

When a role's loop does not run for longer than heartbeat x liveness (a long
batch, a garbage-collector pause, a machine starved of CPU), the heartbeats
of its peers wait unread in its sockets, and its own heartbeats are late.
Each role measures how late its maintenance tick woke up and does not count
that stall as the peer's silence:

* the broker pushes its workers' expiry back (a gate also its peer gates')
  and sends its heartbeats at once;
* the worker and the client do not count the stall as the broker's silence.

The roles here share one loop, which is then blocked for several liveness
spans; before this rule the broker expired the worker, the gates banned each
other and a forwarded stream lost the items sent meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest
import zmq

from gaterpc.core import AMajordomo, Client, Context, Gate, Service, Worker
from gaterpc.counters import drops_snapshot
from gaterpc.global_settings import Settings
from gaterpc.protocol import READY
from gaterpc.utils import interface

HB = 200  # ms: with the default liveness of 3, a peer is given up after 0.6 s of silence
STALL = 3 * HB * Settings.MDP_HEARTBEAT_LIVENESS / 1000  # three liveness spans


class Echo(Worker):
    @interface
    def echo(self, x):
        return x


async def until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    assert predicate(), "condition not reached in time"


async def stall_loop(seconds: float) -> None:
    """Block the running loop for ``seconds`` from a callback, then let it run a few ticks."""
    loop = asyncio.get_running_loop()
    blocked = loop.create_future()
    loop.call_soon(lambda: (time.sleep(seconds), blocked.set_result(None)))
    await blocked
    await asyncio.sleep(5 * HB / 1000)  # several ticks and heartbeats after the stall


@pytest.fixture
async def lab():
    ctx = Context()
    name = uuid.uuid4().hex
    front, back = f"inproc://{name}-f", f"inproc://{name}-b"
    broker = AMajordomo(context=ctx, heartbeat=HB)
    broker.bind_frontend(front)
    broker.bind_backend(back)
    worker = Service(name="Echo").create_worker(Echo, back, workers_heartbeat=HB, context=ctx)
    client = Client(front, context=ctx, heartbeat=HB, reply_timeout=30)
    try:
        broker.run()
        worker.run()
        await until(lambda: "Echo" in broker.services and bool(broker.services["Echo"].workers))
        await client.connect()
        yield broker, worker, client, ctx, back
    finally:
        client.close()
        worker.stop()
        broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)


async def test_a_stalled_loop_keeps_the_worker_and_the_connections(lab):
    broker, worker, client, _ctx, _back = lab
    assert await client.Echo.echo(1) == 1
    registered = dict(broker.workers)
    worker_sock, client_sock = worker._lsock, client._lsock
    await stall_loop(STALL)
    # the broker kept the same registration: the worker was not expired and did not register again
    assert broker.workers == registered
    assert all(broker.workers[k] is w for k, w in registered.items())
    # neither the worker nor the client thought the broker gone (no new connection)
    assert worker._lsock is worker_sock and not worker_sock.closed
    assert client._lsock is client_sock and not client_sock.closed
    assert await asyncio.wait_for(client.Echo.echo("after"), 5) == "after"


async def test_stalls_do_not_keep_a_silent_worker_alive(lab):
    broker, _worker, _client, ctx, back = lab
    # a worker that registers and then says nothing more (as a frozen process would)
    sep = Settings.MDP_DESCRIPTION_SEP
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.IDENTITY, b"silent-" + uuid.uuid4().hex.encode())
    try:
        sock.connect(back)
        sock.send_multipart([b"", Settings.MDP_WORKER, READY, f"Quiet{sep}a silent worker{sep}1".encode()])
        await until(lambda: "Quiet" in broker.services and bool(broker.services["Quiet"].workers))
        for _ in range(3):  # stalls shorter than the liveness span, one after another
            await stall_loop(HB / 1000)
        # each stall postpones its expiry only by the stall itself: it still expires
        await until(lambda: not broker.services["Quiet"].workers, timeout=10)
    finally:
        sock.close(linger=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Node:
    def __init__(self, name: str) -> None:
        self.ctx = Context()
        self.port = _free_port()
        self.addr = f"tcp://127.0.0.1:{self.port}"
        self.gate = Gate(self.port, identity=name, context=self.ctx, heartbeat=HB, multicast=False, gate_bind="127.0.0.1")
        self.front, self.back = f"inproc://front-{name}", f"inproc://back-{name}"
        self.gate.bind_frontend(self.front)
        self.gate.bind_backend(self.back)
        self.gate.run()
        self.worker = None

    def peer(self, other: "_Node"):
        return self.gate.gate_cluster.get_workers().get(other.gate.identity)

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.gate.stop()
        await asyncio.sleep(0.05)
        self.ctx.destroy(linger=0)


class Counter(Worker):
    @interface
    async def count(self, n):
        for i in range(n):
            yield i


async def test_gates_keep_each_other_through_a_stall_and_a_stream_loses_nothing():
    a = _Node(f"A-{uuid.uuid4().hex[:6]}")
    b = _Node(f"B-{uuid.uuid4().hex[:6]}")
    client = None
    try:
        b.worker = Service(name="Counter").create_worker(Counter, b.back, context=b.ctx, workers_heartbeat=HB)
        b.worker.run()
        await until(lambda: "Counter" in b.gate.services)
        await a.gate.connect_gate(b.gate.identity, b.addr)
        await b.gate.connect_gate(a.gate.identity, a.addr)
        await until(lambda: a.peer(b) is not None and b.peer(a) is not None)
        peer_of_a, peer_of_b = a.peer(b), b.peer(a)
        client = Client(a.front, context=a.ctx, heartbeat=HB, reply_timeout=30)
        await client.connect()
        await until(lambda: "Counter" in peer_of_a.active_services)
        before = drops_snapshot().get("gate_reply_peer_gone", 0)
        stream = await client.Counter.count(3000)
        items = []
        async for item in stream:
            items.append(item)
            if item == 100:
                await stall_loop(STALL)  # mid-stream: both gates and the worker stall together
        assert items == list(range(3000))
        assert a.peer(b) is peer_of_a and b.peer(a) is peer_of_b  # nobody was banned and re-joined
        assert drops_snapshot().get("gate_reply_peer_gone", 0) == before
    finally:
        if client is not None:
            client.close()
        await a.stop()
        await b.stop()
