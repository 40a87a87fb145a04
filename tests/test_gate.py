"""Gate cluster on 127.0.0.1: gates joined with ``connect_gate`` both ways, multicast off.

Each gate has its own context, an ``inproc`` frontend/backend and a gate
socket on a free port of 127.0.0.1; clients and workers live on the gate's
context.  Heartbeats are short (100–200 ms) so that expiry is fast.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid

import pytest

from gaterpc.core import Client, Context, Gate, Service, Worker
from gaterpc.exceptions import RemoteException
from gaterpc.global_settings import Settings
from gaterpc.protocol import GATE_WHISPER
from gaterpc.utils import interface, msg_pack, msg_unpack

from gate_roles.harness import free_port, name_id, start_gate

HB = 200  # ms


class Echo(Worker):
    @interface
    async def echo(self, *args, **kwargs):
        return {"args": list(args), "gate": self.node}

    @interface
    def count(self, n):
        yield from range(n)

    @interface
    async def fail(self):
        raise KeyError("missing")

    @interface
    async def slow(self, seconds):
        await asyncio.sleep(seconds)
        return self.node

    @interface
    async def dump(self, n):
        from gaterpc.hugedata import HugeData
        return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG,
                        data=msg_pack({"blob": bytes(range(256)) * (n // 256), "n": n}))


class HelloGate(Gate):
    """A gate with a notice handler and an internal method that reports its caller."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hello = []
        self.register_event_handler("Hello", self.on_hello)

    async def on_hello(self, gate, *body):
        self.hello.append((gate.identity, [msg_unpack(b) for b in body]))

    @interface
    def whoami(self, **kwargs):
        return kwargs["__client_id"]


class Node:
    """One gate with its context, workers and clients."""

    def __init__(self, name, heartbeat=HB, zap=None):
        self.name = name
        self.ctx = Context()
        self.port = free_port()
        self.addr = f"tcp://127.0.0.1:{self.port}"
        self.zap_args = {}
        self.zap = None
        gate_zap = {}
        if zap is not None:
            # zap = (users accepted by this gate's ZAP service, credentials this node sends)
            users, creds = zap
            from gaterpc.core import AsyncZAPService
            self.zap = AsyncZAPService(addr=f"inproc://zap-{name}", context=self.ctx)
            self.zap.configure_plain(Settings.ZAP_DEFAULT_DOMAIN, users)
            self.zap.start()
            self.zap_args = {"zap_mechanism": "PLAIN", "zap_credentials": creds}
            gate_zap = {"gate_zap_mechanism": "PLAIN", "gate_zap_credentials": creds}
        self.gate = HelloGate(self.port, identity=name, context=self.ctx, heartbeat=heartbeat,
                              multicast=False, gate_bind="127.0.0.1", **gate_zap)
        self.front = f"inproc://front-{name}"
        self.back = f"inproc://back-{name}"
        self.gate.bind_frontend(self.front)
        self.gate.bind_backend(self.back)
        if self.zap is not None:
            self.gate.connect_zap(zap_addr=f"inproc://zap-{name}")
        self.gate.run()
        self.heartbeat = heartbeat
        self.workers = []
        self.clients = []
        self.stopped = False

    async def add_worker(self, service="Echo", capacity=None, cls=None):
        w = Service(name=service).create_worker(cls or Echo, self.back, context=self.ctx,
                                                workers_heartbeat=self.heartbeat,
                                                max_allowed_request=capacity, **self.zap_args)
        w.node = self.name
        w.run()
        self.workers.append(w)
        await until(lambda: service in self.gate.services and w.identity in self.gate.workers)
        return w

    async def client(self, **kwargs):
        c = Client(self.front, context=self.ctx, heartbeat=self.heartbeat, **self.zap_args, **kwargs)
        await c.connect()
        self.clients.append(c)
        return c

    def peer(self, other):
        return self.gate.gate_cluster.get_workers().get(other.gate.identity)

    async def stop(self):
        if self.stopped:
            return
        self.stopped = True
        for c in self.clients:
            c.close()
        for w in self.workers:
            w.stop()
        self.gate.stop()
        if self.zap is not None:
            self.zap.stop()
        await asyncio.sleep(0.05)
        self.ctx.destroy(linger=0)


async def until(predicate, timeout=5.0, interval=0.01):
    """Wait until ``predicate()`` is true (bounded); fail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    assert predicate(), "condition not reached in time"


async def join(*nodes):
    """Connect every pair of gates both ways and wait until all are registered."""
    for a in nodes:
        for b in nodes:
            if a is not b:
                await a.gate.connect_gate(b.gate.identity, b.addr)
    await until(lambda: all(a.peer(b) is not None for a in nodes for b in nodes if a is not b))


@pytest.fixture
async def nodes():
    made = []

    def make(name, **kwargs):
        node = Node(f"{name}-{uuid.uuid4().hex[:6]}", **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        await node.stop()


@pytest.fixture
def ipc_dir():
    """A short directory for ``ipc://`` endpoints (removed afterwards)."""
    path = tempfile.mkdtemp(prefix="gt-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def procs(tmp_path):
    started = []

    def start(name, *args):
        p = start_gate(tmp_path, name, *args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


# -- forwarding ---------------------------------------------------------------------------

async def test_forwarded_call_and_error(nodes):
    a, b = nodes("A"), nodes("B")
    await b.add_worker()
    await join(a, b)
    client = await a.client()
    assert "Echo" in await client.Gate.get_services()
    assert await client.Gate.query_service("Echo") == "GateCluster.Echo"
    assert await client.Echo.echo("via-gate") == {"args": ["via-gate"], "gate": b.name}
    with pytest.raises(RemoteException) as info:
        await client.Echo.fail()
    assert "KeyError" in str(info.value) and "missing" in str(info.value)
    # nothing left behind: forwarding entries, capacity and gate_replies are clean
    peer = a.peer(b)
    await until(lambda: not peer._inflight and not a.gate.request_map)
    assert peer.active_services["Echo"] == peer._advertised["Echo"]


async def test_unknown_service_is_unavailable(nodes):
    a, b = nodes("A"), nodes("B")
    await join(a, b)
    client = await a.client()
    with pytest.raises(AttributeError):
        await client.Nope.x()
    with pytest.raises(RemoteException) as info:
        await client._request("Nope", "x", (), {})
    assert "ServiceUnAvailableError" in str(info.value)


async def test_forwarded_stream_of_3000_items(nodes):
    a, b = nodes("A"), nodes("B")
    await b.add_worker()
    await join(a, b)
    client = await a.client()
    stream = await client.Echo.count(3000)
    items = [i async for i in stream]
    assert items == list(range(3000))
    await until(lambda: not a.peer(b)._inflight)


async def test_forwarded_hugedata(nodes):
    pytest.importorskip("gaterpc.hugedata")
    a, b = nodes("A"), nodes("B")
    await b.add_worker()
    await join(a, b)
    client = await a.client()
    n = 3 * 1024 * 1024
    result = await client.Echo.dump(n)
    assert result["n"] == n
    assert result["blob"] == bytes(range(256)) * (n // 256)
    await until(lambda: not a.peer(b)._inflight)


async def test_300_concurrent_forwarded_calls_with_small_capacity(nodes):
    a, b = nodes("A"), nodes("B")
    await b.add_worker(capacity=8)
    await join(a, b)
    assert a.peer(b).active_services["Echo"] == 8
    client = await a.client()
    results = await asyncio.gather(*(client.Echo.echo(i) for i in range(300)))
    assert [r["args"] for r in results] == [[i] for i in range(300)]
    peer = a.peer(b)
    await until(lambda: not peer._inflight)
    # capacity is given back after every reply (the original never did)
    assert peer.active_services["Echo"] == 8


async def test_three_gates_and_failover(nodes):
    a, b, c = nodes("A"), nodes("B"), nodes("C")
    await b.add_worker()
    await c.add_worker()
    await join(a, b, c)
    client = await a.client()
    seen = {(await client.Echo.echo(i))["gate"] for i in range(20)}
    assert seen == {b.name, c.name}
    await b.stop()
    await until(lambda: a.peer(b) is None)
    for i in range(10):
        assert (await client.Echo.echo(i))["gate"] == c.name


# -- gate to gate ----------------------------------------------------------------------------

async def test_internal_gate_to_gate_call(nodes):
    a, b = nodes("A"), nodes("B")
    await b.add_worker()
    await join(a, b)
    peer = a.peer(b)
    assert await a.gate.call_gate(peer, "whoami") == a.gate.identity
    assert "Echo" in await a.gate.call_gate(peer, "get_services")
    # the original's pattern: a Future in gate_replies and a WHISPER to service "Gate"
    rid = uuid.uuid4().bytes
    fut = asyncio.get_running_loop().create_future()
    a.gate.gate_replies[rid] = fut
    await a.gate.send_whisper_command(peer, rid, "Gate", (msg_pack("info"), msg_pack(()), msg_pack({})))
    reply = await asyncio.wait_for(fut, 5)
    assert reply["exception"] is None and reply["result"]["my_id"] == b.gate.identity
    assert a.gate.gate_replies.pop(rid) is None  # already cleaned
    with pytest.raises(RemoteException):
        await a.gate.call_gate(peer, "no_such_function")
    assert not a.gate.gate_replies


async def test_whisper_request_is_not_bounced_back_to_gates(nodes):
    # A asks B for a service only C has: B must answer ServiceUnAvailable, not forward it again.
    a, b, c = nodes("A"), nodes("B"), nodes("C")
    await c.add_worker(service="OnlyC")
    await join(a, b, c)
    await until(lambda: "OnlyC" in b.gate.gate_cluster.services)
    rid = uuid.uuid4().bytes
    fut = asyncio.get_running_loop().create_future()
    a.gate.gate_replies[rid] = fut
    await a.gate.send_to_gate(a.peer(b), GATE_WHISPER, ("OnlyC", rid),
                              (msg_pack("echo"), msg_pack((1,)), msg_pack({})))
    reply = await asyncio.wait_for(fut, 5)
    assert reply["result"] is None and reply["exception"][0] == "ServiceUnAvailableError"
    assert not c.peer(b)._inflight and not b.gate.request_map


async def test_late_replies_are_not_taken_for_requests(nodes):
    a, b = nodes("A"), nodes("B")
    w = await b.add_worker()
    await join(a, b)
    peer = a.peer(b)
    sent = []
    b.gate._route_request = lambda msg, service_b: sent.append(msg)
    for body in ((b"GateStreamGenerator", msg_pack(1)), (b"GateStreamHugData", b"chunk"),
                 (b"\x82\xa6result\xc0\xa9exception\xc0",)):
        await a.gate.send_to_gate(peer, GATE_WHISPER, ("Echo", uuid.uuid4().bytes), body)
    await a.gate.send_to_gate(peer, GATE_WHISPER, ("Echo", uuid.uuid4().bytes),
                              (msg_pack("echo"), msg_pack(()), msg_pack({})))
    await until(lambda: sent)
    await asyncio.sleep(0.1)
    assert len(sent) == 1 and sent[0][5] == msg_pack("echo")
    assert w.identity in b.gate.workers


async def test_notice_delivered_to_handler(nodes):
    a, b, c = nodes("A"), nodes("B"), nodes("C")
    await join(a, b, c)
    await a.gate.send_notice_command(uuid.uuid4().bytes, "Hello", (msg_pack("hi"), msg_pack([1, 2])))
    await until(lambda: b.gate.hello and c.gate.hello)
    assert b.gate.hello == [(a.gate.identity, ["hi", [1, 2]])]
    assert c.gate.hello == [(a.gate.identity, ["hi", [1, 2]])]
    assert not a.gate.hello
    # unknown events are ignored
    await a.gate.send_notice_command(uuid.uuid4().bytes, "Unknown", ())
    await asyncio.sleep(0.1)
    assert len(b.gate.hello) == 1


# -- membership and service changes -------------------------------------------------------------

async def test_service_changes_propagate_and_clients_learn_them(nodes):
    a, b = nodes("A"), nodes("B")
    await join(a, b)
    client = await a.client()
    assert "Late" not in await client.Gate.get_services()
    w = await b.add_worker(service="Late", capacity=4)
    t0 = time.monotonic()
    await until(lambda: "Late" in a.gate.gate_cluster.services, timeout=2)
    assert time.monotonic() - t0 < HB / 1000 + 0.2
    assert a.peer(b).active_services["Late"] == 4
    # the client learns the new service on its miss, without reconnecting
    assert (await client.Late.echo(1))["gate"] == b.name
    w.stop()
    await until(lambda: "Late" not in a.gate.gate_cluster.services, timeout=HB / 1000 * 4)
    assert "Late" not in await client.Gate.get_services()


async def test_gates_joined_by_hand_stay_joined(nodes):
    a, b = nodes("A", heartbeat=100), nodes("B", heartbeat=100)
    await b.add_worker()
    await join(a, b)
    pa, pb = a.peer(b), b.peer(a)
    await asyncio.sleep(1.2)  # four liveness windows (100 ms × 3)
    assert a.peer(b) is pa and b.peer(a) is pb
    client = await a.client()
    assert (await client.Echo.echo(1))["gate"] == b.name
    with pytest.raises(RuntimeError):
        await a.gate.connect_gate(b.gate.identity, b.addr)


async def test_stopped_gate_leaves_and_inflight_calls_fail_clearly(nodes):
    a, b = nodes("A"), nodes("B")
    await b.add_worker()
    await join(a, b)
    client = await a.client(reply_timeout=20)
    call = asyncio.ensure_future(client.Echo.slow(10))
    await until(lambda: a.peer(b) is not None and a.peer(b)._inflight)
    t0 = time.monotonic()
    await b.stop()
    with pytest.raises(RemoteException) as info:
        await asyncio.wait_for(call, 5)
    assert time.monotonic() - t0 < 3 * HB / 1000 + 0.5
    assert "lost before replying" in str(info.value)
    assert a.peer(b) is None and "Echo" not in a.gate.gate_cluster.services


async def test_killed_gate_expires_within_liveness_window(nodes, procs, ipc_dir):
    a = nodes("A")
    port = free_port()
    name = f"K-{uuid.uuid4().hex[:6]}"
    tmp = ipc_dir
    k = procs(name, "--port", str(port), "--frontend", f"ipc://{tmp}/f", "--backend", f"ipc://{tmp}/b",
              "--heartbeat", str(HB), "--service", "Echo", "--connect", f"{a.name}@{a.addr}")
    k.wait_ready()
    await a.gate.connect_gate(name_id(name), f"tcp://127.0.0.1:{port}")
    await until(lambda: name_id(name) in a.gate.gate_cluster.get_workers())
    client = await a.client(reply_timeout=20)
    assert await client.Echo.where() == name
    call = asyncio.ensure_future(client.Echo.slow(10))
    await until(lambda: a.gate.gate_cluster.get_workers()[name_id(name)]._inflight)
    t0 = time.monotonic()
    k.kill()
    with pytest.raises(RemoteException) as info:
        await asyncio.wait_for(call, 5)
    elapsed = time.monotonic() - t0
    window = HB * Settings.MDP_HEARTBEAT_LIVENESS / 1000
    assert elapsed < window + 0.5, elapsed
    assert "lost before replying" in str(info.value)
    assert name_id(name) not in a.gate.gate_cluster.workers


async def test_gate_zap_credentials(nodes):
    users = {"gate-user": "s3cret"}
    a = nodes("A", zap=(users, ("gate-user", "s3cret")))
    b = nodes("B", zap=(users, ("gate-user", "s3cret")))
    await b.add_worker()
    await join(a, b)
    client = await a.client()
    assert (await client.Echo.echo(1))["gate"] == b.name
    # a gate with wrong credentials never joins
    c = nodes("C", zap=(users, ("gate-user", "wrong")))
    await a.gate.connect_gate(c.gate.identity, c.addr)
    await c.gate.connect_gate(a.gate.identity, a.addr)
    await asyncio.sleep(1.0)
    assert a.peer(c) is None and c.peer(a) is None


async def test_wire_datagram_layout(nodes):
    a = nodes("A")
    msg = a.gate.mcast_msg
    assert len(msg) == 43
    assert msg[:16] == a.gate.identity and msg[16:22] == b"GATE01" and msg[22:23] == b"\x00"
    assert msg[23:39] == bytes.fromhex("7a6ffafc9c865df289b642699deddb34")
    assert int.from_bytes(msg[39:], "big", signed=True) == a.port


class TwoGates:
    """Two gates on one context with ipc frontends/backends in ``tmp_path`` (long heartbeats)."""

    def __init__(self, tmp_path, prefix, heartbeat_ms=20000, b_class=Gate):
        self.tmp = tmp_path
        self.ctx = Context()
        self.pa, self.pb = free_port(), free_port()
        tag = uuid.uuid4().hex[:6]
        self.a = Gate(self.pa, multicast=False, gate_bind="127.0.0.1", identity=f"{prefix}a-{tag}",
                      context=self.ctx, heartbeat=heartbeat_ms)
        self.b = b_class(self.pb, multicast=False, gate_bind="127.0.0.1", identity=f"{prefix}b-{tag}",
                         context=self.ctx, heartbeat=heartbeat_ms)
        self.workers = []

    async def __aenter__(self):
        for g, n in ((self.a, "a"), (self.b, "b")):
            g.bind_frontend(f"ipc://{self.tmp}/{n}-front")
            g.bind_backend(f"ipc://{self.tmp}/{n}-back")
            g.run()
        return self

    def worker_on_b(self, service):
        worker = Service(name=service).create_worker(Echo, f"ipc://{self.tmp}/b-back", context=self.ctx)
        worker.node = "b"
        worker.run()
        self.workers.append(worker)
        return worker

    async def connect_both_ways(self):
        await self.a.connect_gate(self.b.identity, f"tcp://127.0.0.1:{self.pb}")
        await self.b.connect_gate(self.a.identity, f"tcp://127.0.0.1:{self.pa}")

    async def __aexit__(self, *exc):
        for worker in self.workers:
            worker.stop()
        self.a.stop()
        self.b.stop()
        await asyncio.sleep(0.1)
        self.ctx.destroy(linger=0)


async def test_connect_gate_joins_without_waiting_for_a_heartbeat(tmp_path):
    """connect_gate on both sides: joined (and the peer's services known) long before one heartbeat.

    The first INVITE goes out before TCP has connected and is dropped (the
    gate sockets queue only on established connections); the quick re-invites
    after connect_gate make up for it.
    """
    heartbeat_ms = 20000
    async with TwoGates(tmp_path, "q", heartbeat_ms) as gates:
        a, b = gates.a, gates.b
        gates.worker_on_b("QuickEcho")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await gates.connect_both_ways()
        await a.wait_for_service("QuickEcho", timeout=heartbeat_ms / 1000 / 2)
        assert loop.time() - t0 < heartbeat_ms / 1000 / 2
        assert b.identity in a.gate_cluster.workers and a.identity in b.gate_cluster.workers


class HeldJoinGate(Gate):
    """Registers a peer only once ``release`` is set (the join hook of the original's API)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.release = asyncio.Event()

    async def process_join_command(self, gate_id, active_services):
        await asyncio.wait_for(self.release.wait(), 10)
        await super().process_join_command(gate_id, active_services)


async def test_a_worker_that_registers_between_our_join_and_the_peers_join_is_announced(tmp_path):
    """Gate B's JOIN (no services yet) has left; its worker registers; only then does
    gate A's JOIN register A at B.  B announced the worker to its ready peers only
    (none then), so A must learn of it when it registers: one UpdateActiveService
    notice for what changed since B's JOIN.  (docs/GATE.md's first example hit this.)"""
    async with TwoGates(tmp_path, "j", b_class=HeldJoinGate) as gates:
        a, b = gates.a, gates.b
        await gates.connect_both_ways()
        await until(lambda: b.identity in a.gate_cluster.workers)  # B's JOIN, without services
        assert a.identity not in b.gate_cluster.workers  # A's JOIN is held at B
        assert not a.service_reachable("LateEcho")
        worker = gates.worker_on_b("LateEcho")
        await until(lambda: "LateEcho" in b.services and b.services["LateEcho"].workers)
        b.release.set()
        await until(lambda: a.identity in b.gate_cluster.workers)
        await a.wait_for_service("LateEcho", timeout=5)
        client = Client(f"ipc://{tmp_path}/a-front", context=gates.ctx)
        await client.connect()
        try:
            got = await asyncio.wait_for(client.LateEcho.echo("hi"), 5)
            assert got == {"args": ["hi"], "gate": "b"}
        finally:
            client.close()
        # a worker that leaves is announced as before (capacity 0)
        worker.stop()
        await until(lambda: not a.service_reachable("LateEcho"))
