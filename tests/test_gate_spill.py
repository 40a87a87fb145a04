"""Gate spill-over: requests that wait too long for a busy local worker go to a peer gate.

Two gates on 127.0.0.1 (multicast off, joined with ``connect_gate``), each
with its own context, ``inproc`` frontend/backend and in-process workers.
A worker can be held busy on an ``asyncio.Event`` so that the tests decide
when local capacity frees up; every worker records what it served, so each
test can tell which worker served a call and that none was served twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gaterpc.core import Client, Context, Gate, Service, Worker
from gaterpc.counters import events_snapshot
from gaterpc.utils import interface

from gate_roles.harness import free_port

HB = 300  # ms
SPILL = 0.3  # s

#: node name -> Event a held call waits for
HOLDS: dict[str, asyncio.Event] = {}
#: node name -> list of (function, argument) the node's workers served
SERVED: dict[str, list] = {}


class Spilly(Worker):
    @interface
    async def hold(self, tag):
        SERVED[self.node].append(("hold", tag))
        await HOLDS[self.node].wait()
        return self.node

    @interface
    async def where(self, tag):
        SERVED[self.node].append(("where", tag))
        return self.node

    @interface
    async def work(self, tag, seconds):
        SERVED[self.node].append(("work", tag))
        await asyncio.sleep(seconds)
        return [self.node, tag]

    @interface
    def count(self, n):
        SERVED[self.node].append(("count", n))
        yield from range(n)


class Node:
    def __init__(self, name: str) -> None:
        self.name = f"{name}-{uuid.uuid4().hex[:6]}"
        HOLDS[self.name] = asyncio.Event()
        SERVED[self.name] = []
        self.ctx = Context()
        self.port = free_port()
        self.addr = f"tcp://127.0.0.1:{self.port}"
        self.gate = Gate(self.port, multicast=False, identity=self.name, context=self.ctx, heartbeat=HB,
                         gate_bind="127.0.0.1")
        self.gate.spill_after = SPILL
        self.front = f"inproc://front-{self.name}"
        self.back = f"inproc://back-{self.name}"
        self.gate.bind_frontend(self.front)
        self.gate.bind_backend(self.back)
        self.gate.run()
        self.workers: list = []
        self.clients: list = []

    @property
    def served(self) -> list:
        return SERVED[self.name]

    def release(self) -> None:
        HOLDS[self.name].set()

    async def add_worker(self, capacity: int) -> None:
        w = Service(name="Echo").create_worker(Spilly, self.back, context=self.ctx,
                                               workers_heartbeat=HB, max_allowed_request=capacity)
        w.node = self.name
        w.run()
        self.workers.append(w)
        await until(lambda: w.identity in self.gate.workers)

    async def client(self) -> Client:
        c = Client(self.front, context=self.ctx, heartbeat=HB)
        await c.connect()
        self.clients.append(c)
        return c

    async def stop(self) -> None:
        self.release()
        for c in self.clients:
            c.close()
        for w in self.workers:
            w.stop()
        self.gate.stop()
        await asyncio.sleep(0.05)
        self.ctx.destroy(linger=0)
        HOLDS.pop(self.name, None)
        SERVED.pop(self.name, None)


async def until(predicate, timeout: float = 8.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    assert predicate(), "condition not reached in time"


@pytest.fixture
async def pair():
    """Two joined gates A and B, each knowing the other's Echo."""
    made: list[Node] = []

    async def make(cap_a: int, cap_b: int):
        a, b = Node("A"), Node("B")
        made.extend((a, b))
        await a.add_worker(cap_a)
        await b.add_worker(cap_b)
        await a.gate.connect_gate(b.gate.identity, b.addr)
        await b.gate.connect_gate(a.gate.identity, a.addr)
        await until(lambda: "Echo" in a.gate.gate_cluster.services
                    and "Echo" in b.gate.gate_cluster.services)
        return a, b

    try:
        yield make
    finally:
        for node in made:
            await node.stop()


def spilled() -> int:
    return events_snapshot().get("gate_spilled", 0)


def local_waiting(node: Node) -> int:
    return len(node.gate.services["Echo"]._waiting)


async def test_busy_local_worker_spills_to_idle_peer(pair):
    a, b = await pair(1, 1)
    client = await a.client()
    before = spilled()
    held = asyncio.ensure_future(client.Echo.hold("h"))
    await until(lambda: ("hold", "h") in a.served)
    t0 = time.monotonic()
    assert await asyncio.wait_for(client.Echo.where("w"), 10) == b.name
    # served by the peer, once the request had waited the spill delay locally
    assert time.monotonic() - t0 >= SPILL * 0.9
    assert spilled() - before == 1
    assert local_waiting(a) == 0
    a.release()
    assert await asyncio.wait_for(held, 10) == a.name
    assert a.served == [("hold", "h")] and b.served == [("where", "w")]
    peer = a.gate.gate_cluster.get_workers()[b.gate.identity]
    await until(lambda: not peer._inflight)
    assert peer.active_services["Echo"] == peer._advertised["Echo"]


async def test_no_peer_capacity_keeps_waiting_locally(pair):
    a, b = await pair(1, 1)
    client = await a.client()
    before = spilled()
    h1 = asyncio.ensure_future(client.Echo.hold("local"))
    await until(lambda: ("hold", "local") in a.served)
    h2 = asyncio.ensure_future(client.Echo.hold("spilled"))
    await until(lambda: ("hold", "spilled") in b.served)  # B's one unit is now taken
    w = asyncio.ensure_future(client.Echo.where("third"))
    await asyncio.sleep(SPILL * 3)
    assert not w.done() and local_waiting(a) == 1  # still waiting at A, not forwarded
    assert spilled() - before == 1
    a.release()
    assert await asyncio.wait_for(w, 10) == a.name  # served locally once A's worker freed
    assert await asyncio.wait_for(h1, 10) == a.name
    b.release()
    assert await asyncio.wait_for(h2, 10) == b.name
    assert a.served == [("hold", "local"), ("where", "third")]
    assert b.served == [("hold", "spilled")]
    assert spilled() - before == 1


async def test_waiting_request_spills_when_peer_capacity_returns(pair):
    a, b = await pair(1, 1)
    client = await a.client()
    before = spilled()
    h1 = asyncio.ensure_future(client.Echo.hold("local"))
    await until(lambda: ("hold", "local") in a.served)
    h2 = asyncio.ensure_future(client.Echo.hold("spilled"))
    await until(lambda: ("hold", "spilled") in b.served)
    w = asyncio.ensure_future(client.Echo.where("third"))
    await asyncio.sleep(SPILL * 2)
    assert not w.done()
    b.release()  # the peer's unit comes back: the waiting request goes there
    assert await asyncio.wait_for(h2, 10) == b.name
    assert await asyncio.wait_for(w, 10) == b.name
    assert spilled() - before == 2
    assert local_waiting(a) == 0
    a.release()
    assert await asyncio.wait_for(h1, 10) == a.name
    assert a.served == [("hold", "local")]
    assert b.served == [("hold", "spilled"), ("where", "third")]


async def test_spilled_stream_arrives_whole(pair):
    a, b = await pair(1, 1)
    client = await a.client()
    held = asyncio.ensure_future(client.Echo.hold("h"))
    await until(lambda: ("hold", "h") in a.served)
    stream = await asyncio.wait_for(client.Echo.count(3000), 10)
    items = [i async for i in stream]
    assert items == list(range(3000))
    assert b.served == [("count", 3000)]
    assert a.served == [("hold", "h")]
    a.release()
    assert await asyncio.wait_for(held, 10) == a.name


async def test_many_calls_each_served_exactly_once(pair):
    a, b = await pair(1, 4)
    a.gate.spill_after = 0.05
    client = await a.client()
    before = spilled()
    n = 40
    results = await asyncio.wait_for(
        asyncio.gather(*(client.Echo.work(i, 0.05) for i in range(n))), 30)
    assert sorted(tag for _, tag in results) == list(range(n))
    served = [tag for _, tag in a.served] + [tag for _, tag in b.served]
    assert sorted(served) == list(range(n))  # nothing served twice, nothing lost
    for node, tag in results:  # each caller got the answer of the worker that served it
        assert ("work", tag) in SERVED[node]
    assert b.served, "nothing spilled"
    assert spilled() - before == len(b.served)
    assert local_waiting(a) == 0


async def test_peer_request_is_not_spilled_back(pair):
    a, b = await pair(1, 1)
    ca, cb = await a.client(), await b.client()
    before = spilled()
    ha = asyncio.ensure_future(ca.Echo.hold("a"))
    hb = asyncio.ensure_future(cb.Echo.hold("b"))
    await until(lambda: ("hold", "a") in a.served and ("hold", "b") in b.served)
    # B's second call spills to A, where it waits: A must not send it back to B
    w = asyncio.ensure_future(cb.Echo.where("from-b"))
    await until(lambda: local_waiting(a) == 1)
    await asyncio.sleep(SPILL * 3)
    assert not w.done() and local_waiting(a) == 1
    assert spilled() - before == 1
    a.release()
    assert await asyncio.wait_for(w, 10) == a.name
    b.release()
    assert await asyncio.wait_for(ha, 10) == a.name
    assert await asyncio.wait_for(hb, 10) == b.name
    assert b.served == [("hold", "b")]


async def test_spill_after_is_a_gate_attribute_defaulting_to_timeout():
    from gaterpc.global_settings import Settings

    ctx = Context()
    gate = Gate(free_port(), context=ctx, multicast=False, gate_bind="127.0.0.1")
    try:
        assert gate.spill_after == Settings.TIMEOUT
    finally:
        gate.stop()
        ctx.destroy(linger=0)
