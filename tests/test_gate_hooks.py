"""Gate subclasses written as for the original: overridden hooks are called, with the original's arguments.

Each test overrides one method of the original's Gate the way user code does
(record the arguments, then ``await super()...``), joins two gates on
127.0.0.1 with ``connect_gate`` (multicast off) and checks both that the hook
saw what the original passes and that the cluster still works through it.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import zmq

from gaterpc.core import Client, Context, Gate, Service
from gaterpc.gate import RemoteGate
from gaterpc.global_settings import Settings
from gaterpc.protocol import GATE_INVITE, GATE_JOIN
from gaterpc.utils import msg_pack, msg_unpack

from gate_roles.harness import free_port
from test_gate import Echo, until

HB = 200  # ms


class Member:
    """One gate of class ``cls`` with an inproc frontend/backend and its own context."""

    def __init__(self, cls, name):
        self.name = f"{name}-{uuid.uuid4().hex[:6]}"
        self.ctx = Context()
        self.port = free_port()
        self.addr = f"tcp://127.0.0.1:{self.port}"
        self.gate = cls(self.port, identity=self.name, context=self.ctx, heartbeat=HB,
                        multicast=False, gate_bind="127.0.0.1")
        self.front, self.back = f"inproc://front-{self.name}", f"inproc://back-{self.name}"
        self.gate.bind_frontend(self.front)
        self.gate.bind_backend(self.back)
        self.gate.run()
        self.workers, self.clients = [], []
        self.stopped = False

    async def add_worker(self, service="Echo"):
        w = Service(name=service).create_worker(Echo, self.back, context=self.ctx, workers_heartbeat=HB)
        w.node = self.name
        w.run()
        self.workers.append(w)
        await until(lambda: service in self.gate.services and w.identity in self.gate.workers)

    async def client(self):
        c = Client(self.front, context=self.ctx, heartbeat=HB)
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
        await asyncio.sleep(0.05)
        self.ctx.destroy(linger=0)


@pytest.fixture
async def members():
    made = []

    def make(name, cls=Gate):
        m = Member(cls, name)
        made.append(m)
        return m

    yield make
    for m in made:
        await m.stop()


async def join(a, b):
    await a.gate.connect_gate(b.gate.identity, b.addr)
    await b.gate.connect_gate(a.gate.identity, a.addr)
    await until(lambda: a.peer(b) is not None and b.peer(a) is not None)


async def forwarded_echo(a, b):
    """A call made on ``a`` for a service only ``b`` has."""
    await b.add_worker()
    await join(a, b)
    await until(lambda: "Echo" in a.gate.gate_cluster.services)
    cli = await a.client()
    return await cli.Echo.echo(1, x=2)


def test_no_override_keeps_the_inline_path(members):
    plain = Gate.__new__(Gate)
    for hook in ("process_gate_request", "process_gate_reply", "process_whisper_command",
                 "process_messages_from_gate", "ban_gate", "register_gate"):
        assert getattr(type(plain), hook) is getattr(Gate, hook)

    class OneHook(Gate):
        async def process_gate_request(self, gate_id, request_id, service_name, body):
            await super().process_gate_request(gate_id, request_id, service_name, body)

    async def make():
        g, h = members("plain"), members("hooked", OneHook)
        flags = [f for f in vars(g.gate) if f.startswith("_hook_")]
        # the gate's 17 hook flags, beside the broker's own
        assert len(flags) >= 17 and not any(getattr(g.gate, f) for f in flags)
        assert h.gate._hook_request and not h.gate._hook_reply and not h.gate._hook_whisper

    asyncio.run(make())


async def test_process_messages_from_gate(members):
    seen = []

    class G(Gate):
        async def process_messages_from_gate(self, messages):
            seen.append(list(messages))
            await super().process_messages_from_gate(messages)

    a, b = members("A"), members("B", G)
    reply = await forwarded_echo(a, b)
    assert reply["args"] == [1]
    commands = {m[3] for m in seen if m[0] == a.gate.identity}
    assert GATE_INVITE in commands and GATE_JOIN in commands
    assert all(m[1] == b"" and m[2] == Settings.GATE_MEMBER for m in seen)


async def test_process_whisper_command(members):
    seen = []

    class G(Gate):
        async def process_whisper_command(self, gate, messages):
            seen.append((gate, list(messages)))
            await super().process_whisper_command(gate, messages)

    a, b = members("A"), members("B", G)
    assert (await forwarded_echo(a, b))["gate"] == b.name
    gate, messages = seen[0]
    assert isinstance(gate, RemoteGate) and gate.identity == a.gate.identity
    service, rid, func, args, kwargs = messages
    assert service == b"Echo" and len(rid) == 16
    assert msg_unpack(func) == "echo" and msg_unpack(args) == [1] and msg_unpack(kwargs) == {"x": 2}


async def test_process_gate_request(members):
    seen = []

    class G(Gate):
        async def process_gate_request(self, gate_id, request_id, service_name, body):
            seen.append((gate_id, request_id, service_name, list(body)))
            await super().process_gate_request(gate_id, request_id, service_name, body)

    a, b = members("A"), members("B", G)
    assert (await forwarded_echo(a, b))["args"] == [1]
    gate_id, rid, service, body = seen[0]
    assert gate_id == a.gate.identity and len(rid) == 16 and service == b"Echo"
    assert [msg_unpack(f) for f in body] == ["echo", [1], {"x": 2}]


async def test_process_gate_reply(members):
    seen = []

    class G(Gate):
        async def process_gate_reply(self, request_id, service_name, body):
            seen.append((request_id, service_name, list(body)))
            await super().process_gate_reply(request_id, service_name, body)

    a, b = members("A", G), members("B")
    assert (await forwarded_echo(a, b))["gate"] == b.name
    rid, service, body = seen[0]
    assert len(rid) == 16 and service == b"Echo"
    assert msg_unpack(body[0])["result"]["args"] == [1]
    # a stream comes back one message per reply, in order
    cli = a.clients[0]
    items = [x async for x in await cli.Echo.count(50)]
    assert items == list(range(50))
    # this gate's own call to the peer's internal service goes through the hook too
    assert (await a.gate.call_gate(a.peer(b), "info"))["my_id"] == b.gate.identity
    assert seen[-1][1] == b"Gate"
    assert not a.peer(b)._inflight


async def test_process_notice_command(members):
    seen = []

    class G(Gate):
        async def process_notice_command(self, gate, messages):
            seen.append((gate, list(messages)))
            await super().process_notice_command(gate, messages)

    a, b = members("A"), members("B", G)
    got = []

    async def on_hello(gate, *body):
        got.append((gate.identity, [msg_unpack(x) for x in body]))

    b.gate.register_event_handler("Hello", on_hello)
    await join(a, b)
    nid = uuid.uuid4().bytes
    await a.gate.send_notice_command(nid, "Hello", (msg_pack("hi"),))
    await until(lambda: got)
    assert got == [(a.gate.identity, ["hi"])]
    hello = [(g, m) for g, m in seen if m[1] == b"Hello"]
    assert hello[0][0].identity == a.gate.identity and hello[0][1][0] == nid


async def test_process_invite_command(members):
    seen = []

    class G(Gate):
        async def process_invite_command(self, gate_id):
            seen.append(gate_id)
            await super().process_invite_command(gate_id)

    a, b = members("A"), members("B", G)
    await join(a, b)
    assert a.gate.identity in seen


async def test_process_join_command(members):
    seen = []

    class G(Gate):
        async def process_join_command(self, gate_id, active_services):
            seen.append((gate_id, active_services))
            await super().process_join_command(gate_id, active_services)

    a, b = members("A"), members("B", G)
    await a.add_worker()
    await join(a, b)
    assert seen[0][0] == a.gate.identity
    assert isinstance(seen[0][1], dict) and seen[0][1].get("Echo", 0) > 0
    await until(lambda: "Echo" in b.gate.gate_cluster.services)


async def test_register_gate(members):
    seen = []

    class G(Gate):
        async def register_gate(self, gate_id, active_services):
            seen.append((gate_id, dict(active_services), gate_id in self.gate_cluster.unready_gates))
            await super().register_gate(gate_id, active_services)

    a, b = members("A"), members("B", G)
    await a.add_worker()
    await join(a, b)
    gate_id, services, pending = seen[0]
    assert gate_id == a.gate.identity and "Echo" in services and pending
    assert b.peer(a).identity == a.gate.identity


async def test_ban_gate(members):
    seen = []

    class G(Gate):
        async def ban_gate(self, gate):
            seen.append((gate, gate.identity in self.gate_cluster.workers))
            return await super().ban_gate(gate)

    a, b = members("A"), members("B", G)
    await join(a, b)
    await a.stop()  # says LEAVE
    await until(lambda: seen and b.peer(a) is None, timeout=4 * HB / 1000 * Settings.MDP_HEARTBEAT_LIVENESS)
    gate, registered = seen[0]
    assert isinstance(gate, RemoteGate) and gate.identity == a.gate.identity and registered
    assert len(seen) == 1


async def test_send_gate_heartbeat(members):
    seen = []

    class G(Gate):
        async def send_gate_heartbeat(self, gate):
            seen.append(gate.identity)
            await super().send_gate_heartbeat(gate)

    a, b = members("A"), members("B", G)
    await join(a, b)
    # idle peers: the hook is called every heartbeat, and its beats keep B joined on A
    liveness = HB / 1000 * Settings.MDP_HEARTBEAT_LIVENESS
    await asyncio.sleep(2 * liveness)
    assert seen.count(a.gate.identity) >= 2
    assert a.peer(b) is not None and b.peer(a) is not None


async def test_process_mcast_messages(members):
    seen = []

    class G(Gate):
        async def process_mcast_messages(self, messages, addr):
            seen.append((messages, addr))
            await super().process_mcast_messages(messages, addr)

    a, b = members("A"), members("B", G)
    # a datagram as the discovery transport delivers it (multicast itself stays off)
    b.gate._multicast_recv_callback(a.gate.mcast_msg, ("127.0.0.1", 9))
    await until(lambda: seen)
    assert seen == [(a.gate.mcast_msg, ("127.0.0.1", 9))]
    # super() connected to the advertised port: A answers B's INVITE and B registers A once A invites too
    await until(lambda: a.gate.identity in b.gate.gate_cluster.unready_gates
                or b.peer(a) is not None)
    await a.gate.connect_gate(b.gate.identity, b.addr)
    await until(lambda: a.peer(b) is not None and b.peer(a) is not None)


async def test_delay_ban_gate(members):
    seen = []

    class G(Gate):
        async def delay_ban_gate(self, gate):
            seen.append((gate, gate.identity in self.gate_cluster.workers))
            await super().delay_ban_gate(gate)

    a, b = members("A"), members("B", G)
    reply = await forwarded_echo(b, a)  # B forwards to A: A's WHISPER reply reaches B
    assert reply["gate"] == a.name
    assert seen and all(isinstance(g, RemoteGate) and g.identity == a.gate.identity and joined
                        for g, joined in seen)
    # idle: A's heartbeats go through the hook, and its super() keeps A joined on B
    n = len(seen)
    liveness = HB / 1000 * Settings.MDP_HEARTBEAT_LIVENESS
    await asyncio.sleep(2 * liveness)
    assert len(seen) >= n + 2
    assert b.peer(a) is not None


async def test_delay_ban_gate_decides(members):
    """An override that never prolongs: the peer expires although it keeps beating."""
    seen = []

    class G(Gate):
        async def delay_ban_gate(self, gate):
            seen.append(gate.identity)

    a, b = members("A"), members("B", G)
    await join(a, b)
    liveness = HB / 1000 * Settings.MDP_HEARTBEAT_LIVENESS
    await until(lambda: seen and b.peer(a) is None, timeout=6 * liveness)
    assert a.gate.identity in seen


async def test_now_ban_gate(members):
    seen = []

    class G(Gate):
        async def now_ban_gate(self, gate):
            seen.append((gate, gate.identity in self.gate_cluster.workers, gate.ready))
            await super().now_ban_gate(gate)

    a, b = members("A"), members("B", G)
    await join(a, b)
    await a.stop()  # says LEAVE: the original bans such a peer with now_ban_gate
    await until(lambda: seen and b.peer(a) is None, timeout=4 * HB / 1000 * Settings.MDP_HEARTBEAT_LIVENESS)
    gate, registered, ready = seen[0]
    assert isinstance(gate, RemoteGate) and gate.identity == a.gate.identity and registered and not ready
    assert len(seen) == 1
    # disconnect_all bans every peer through it too
    c = members("C")
    await join(b, c)
    await b.gate.disconnect_all()
    assert seen[-1][0].identity == c.gate.identity and seen[-1][1]
    assert b.peer(c) is None and not b.gate.gate_cluster.workers


async def test_send_invite_command(members):
    seen = []

    class G(Gate):
        async def send_invite_command(self, sock):
            pending = {gid for gid, s in self.gate_cluster.unready_gates.items() if s is sock}
            seen.append((sock, pending))
            await super().send_invite_command(sock)

    a, b = members("A", G), members("B")
    await join(a, b)
    sock, pending = seen[0]
    assert isinstance(sock, zmq.Socket) and pending == {b.gate.identity}
    assert a.peer(b) is not None and b.peer(a) is not None


async def test_send_join_command(members):
    seen = []

    class G(Gate):
        async def send_join_command(self, gate_id):
            seen.append(gate_id)
            await super().send_join_command(gate_id)

    a, b = members("A"), members("B", G)
    await b.add_worker()
    await join(a, b)
    assert a.gate.identity in seen
    # the JOIN sent by the hook's super() carried B's services
    await until(lambda: "Echo" in a.gate.gate_cluster.services)


async def test_send_join_command_decides(members):
    """An override that sends nothing: the peer never registers this gate."""
    seen = []

    class G(Gate):
        async def send_join_command(self, gate_id):
            seen.append(gate_id)

    a, b = members("A"), members("B", G)
    await a.gate.connect_gate(b.gate.identity, b.addr)
    await b.gate.connect_gate(a.gate.identity, a.addr)
    await until(lambda: b.peer(a) is not None and a.gate.identity in seen)
    await asyncio.sleep(3 * HB / 1000)
    assert a.peer(b) is None


async def test_reply_gate(members):
    seen = []

    class G(Gate):
        async def reply_gate(self, gate, service, request_id, *body):
            seen.append((gate, service, request_id, list(body)))
            await super().reply_gate(gate, service, request_id, *body)

    a, b = members("A"), members("B", G)
    assert (await forwarded_echo(a, b))["args"] == [1]
    gate, service, rid, body = seen[0]
    assert isinstance(gate, RemoteGate) and gate.identity == a.gate.identity
    assert service == "Echo" and len(rid) == 16
    assert msg_unpack(body[0])["result"]["args"] == [1]
    # a stream goes back one reply_gate call per message, in order
    items = [x async for x in await a.clients[0].Echo.count(20)]
    assert items == list(range(20))
    # the answer to a peer's call of this gate's internal service too
    assert (await a.gate.call_gate(a.peer(b), "info"))["my_id"] == b.gate.identity
    assert seen[-1][1] == "Gate"


async def test_send_whisper_command(members):
    seen = []

    class G(Gate):
        async def send_whisper_command(self, gate, request_id, service_name, body):
            seen.append((gate, request_id, service_name, list(body)))
            await super().send_whisper_command(gate, request_id, service_name, body)

    a, b = members("A", G), members("B")
    assert (await forwarded_echo(a, b))["gate"] == b.name
    forwarded = [s for s in seen if s[2] == "Echo"]
    gate, rid, service, body = forwarded[0]
    assert isinstance(gate, RemoteGate) and gate.identity == b.gate.identity and len(rid) == 16
    assert [msg_unpack(f) for f in body] == ["echo", [1], {"x": 2}]
    assert not a.peer(b)._inflight  # the reply came back and completed the forward


async def test_request_zap_for_gate_commands():
    """As the original: with ZAP on, every gate command is asked about (b"gate_" + command, channel b"gate")."""
    from gaterpc.core import AsyncZAPService

    seen = []

    class G(Gate):
        async def request_zap(self, identity, address, request_id, mechanism, credentials, channel=b"frontend"):
            ok = await super().request_zap(identity, address, request_id, mechanism, credentials, channel)
            seen.append((identity, address, request_id, mechanism, tuple(credentials), channel, ok))
            return ok

    made = []
    try:
        for name, cls, creds in (("A", Gate, ("gate-user", "s3cret")), ("B", G, ("gate-user", "s3cret")),
                                 ("C", Gate, ("gate-user", "wrong"))):
            ctx = Context()
            port = free_port()
            zap = AsyncZAPService(addr=f"inproc://zap-hook-{name}-{port}", context=ctx)
            zap.configure_plain(Settings.ZAP_DEFAULT_DOMAIN, {"gate-user": "s3cret"})
            zap.start()
            gate = cls(port, identity=f"{name}-{uuid.uuid4().hex[:6]}", context=ctx, heartbeat=HB,
                       multicast=False, gate_bind="127.0.0.1", gate_zap_mechanism="PLAIN",
                       gate_zap_credentials=creds)
            made.append((ctx, zap, gate))
            gate.connect_zap(zap_addr=f"inproc://zap-hook-{name}-{port}")
            gate.run()
        (_, _, a), (_, _, b), (_, _, c) = made

        def addr(g):
            return f"tcp://127.0.0.1:{g.gate_port}"

        await a.connect_gate(b.identity, addr(b))
        await b.connect_gate(a.identity, addr(a))
        await until(lambda: b.identity in a.gate_cluster.get_workers() and a.identity in b.gate_cluster.get_workers())
        from_a = [s for s in seen if s[0] == a.identity]
        assert (a.identity, a.identity, b"gate_" + GATE_INVITE, b"PLAIN", (b"gate-user", b"s3cret"), b"gate",
                True) in from_a
        assert any(s[2] == b"gate_" + GATE_JOIN for s in from_a)
        # a gate with a wrong password is refused by the verdict: B never registers it
        await c.connect_gate(b.identity, addr(b))
        await b.connect_gate(c.identity, addr(c))
        await until(lambda: any(s[0] == c.identity and s[6] is False for s in seen))
        await asyncio.sleep(3 * HB / 1000)
        assert c.identity not in b.gate_cluster.get_workers()
    finally:
        for ctx, zap, gate in made:
            gate.stop()
            zap.stop()
        await asyncio.sleep(0.05)
        for ctx, _, _ in made:
            ctx.destroy(linger=0)
