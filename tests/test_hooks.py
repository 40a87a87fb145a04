"""The original's overridable hooks: a subclass overrides one, calls ``super()``, observes.

Each test subclasses ``AMajordomo`` or ``Worker`` the way a user of the
original would, checks that the hook is called at its point of the flow
with the original's arguments, and that the call still completes.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gaterpc.core import AMajordomo, AsyncZAPService, Client, Context, RemoteWorker, Service, Worker
from gaterpc.exceptions import RemoteException
from gaterpc.global_settings import Settings
from gaterpc.utils import interface

pytestmark = pytest.mark.timeout(60)


class Calc(Worker):
    @interface
    async def add(self, a, b):
        return a + b


async def until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    assert predicate(), "condition not reached in time"


class Env:
    """Broker + one Calc worker + one client over ipc:// in a tmp dir."""

    def __init__(self, tmp_path, broker_cls=AMajordomo, worker_cls=Calc, heartbeat=None, zap=False):
        self.ctx = Context()
        self.front = f"ipc://{tmp_path}/front"
        self.back = f"ipc://{tmp_path}/back"
        self.zap_addr = f"ipc://{tmp_path}/zap"
        self.broker_cls, self.worker_cls, self.heartbeat, self.use_zap = broker_cls, worker_cls, heartbeat, zap
        self.broker = self.worker = self.client = self.zap = None

    async def start(self, client=True):
        kw = {}
        if self.use_zap:
            self.zap = AsyncZAPService(addr=self.zap_addr)
            self.zap.configure_plain("gate", {"alice": "pw"})
            self.zap.start()
            kw = {"zap_mechanism": "PLAIN", "zap_credentials": ("alice", "pw")}
        self.broker = self.broker_cls(context=self.ctx, heartbeat=self.heartbeat)
        self.broker.bind_frontend(self.front)
        self.broker.bind_backend(self.back)
        if self.use_zap:
            self.broker.connect_zap(zap_addr=self.zap_addr)
        self.broker.run()
        self.worker = Service(name="Calc").create_worker(self.worker_cls, self.back, context=self.ctx,
                                                         workers_heartbeat=self.heartbeat, **kw)
        self.worker.run()
        await until(lambda: "Calc" in self.broker.services and self.broker.services["Calc"].workers)
        if client:
            self.client = Client(self.front, context=self.ctx, reply_timeout=5, **kw)
            await self.client.connect()
        return self

    async def stop(self):
        if self.client is not None:
            self.client.close()
        if self.worker is not None:
            self.worker.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.zap is not None:
            self.zap.stop()
        await asyncio.sleep(0.05)
        if self.zap is not None:
            assert self.zap.context.closed  # made by the service itself: stop() terminated it
        self.ctx.destroy(linger=0)


async def run(env_coro, body):
    env = await env_coro
    try:
        await body(env)
    finally:
        await env.stop()


# -- broker hooks -------------------------------------------------------------------


async def test_process_messages_from_frontend(tmp_path):
    class Broker(AMajordomo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seen = []

        async def process_messages_from_frontend(self, request):
            self.seen.append(list(request))
            await super().process_messages_from_frontend(request)

    async def body(env):
        assert await env.client.Calc.add(2, 3) == 5
        msgs = [m for m in env.broker.seen if m[3] == b"Calc"]
        assert msgs, "the call went through the hook"
        m = msgs[-1]
        assert m[0] == env.client.identity and m[1] == b"" and m[2] == b"MDPC01"

    await run(Env(tmp_path, broker_cls=Broker).start(), body)


async def test_process_messages_from_backend(tmp_path):
    class Broker(AMajordomo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.commands = []

        async def process_messages_from_backend(self, messages):
            self.commands.append((messages[0], messages[3]))
            await super().process_messages_from_backend(messages)

    async def body(env):
        assert await env.client.Calc.add(1, 1) == 2
        wid = env.worker.identity
        assert (wid, b"\x01") in env.broker.commands, "READY went through the hook"
        assert (wid, b"\x03") in env.broker.commands, "the REPLY went through the hook"

    await run(Env(tmp_path, broker_cls=Broker).start(), body)


async def test_process_reply_command_from_backend(tmp_path):
    class Broker(AMajordomo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.replies = []

        async def process_reply_command_from_backend(self, service_name, messages):
            self.replies.append((service_name, list(messages)))
            await super().process_reply_command_from_backend(service_name, messages)

    async def body(env):
        assert await env.client.Calc.add(4, 5) == 9
        assert len(env.broker.replies) == 1
        service_name, messages = env.broker.replies[0]
        assert service_name == "Calc"
        assert messages[0] == env.client.identity and messages[1] == b"" and len(messages) == 4
        assert await env.client.Calc.add(1, 2) == 3, "capacity was released"

    await run(Env(tmp_path, broker_cls=Broker).start(), body)


async def test_reply_frontend(tmp_path):
    class Broker(AMajordomo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.sent = []

        async def reply_frontend(self, client_id, service_name, request_id, *body):
            self.sent.append((client_id, service_name, request_id, len(body)))
            await super().reply_frontend(client_id, service_name, request_id, *body)

    async def body(env):
        assert await env.client.Calc.add(3, 3) == 6
        assert (env.client.identity, "Calc") in [s[:2] for s in env.broker.sent]
        assert (env.client.identity, "Gate") in [s[:2] for s in env.broker.sent], "internal replies too"
        n = len(env.broker.sent)
        with pytest.raises(RemoteException, match="Function not found"):
            await env.client.Gate.no_such_function()  # the error reply also goes through it
        assert env.broker.sent[n][:2] == (env.client.identity, "Gate")

    await run(Env(tmp_path, broker_cls=Broker).start(), body)


async def test_process_ready_command_and_register_worker(tmp_path):
    class Broker(AMajordomo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.ready = []
            self.registered = []

        async def process_ready_command(self, worker_id, service_info):
            self.ready.append((worker_id, service_info))
            await super().process_ready_command(worker_id, service_info)

        async def register_worker(self, worker_id, max_allowed_request, sock, service):
            self.registered.append((worker_id, max_allowed_request, sock, service))
            await super().register_worker(worker_id, max_allowed_request, sock, service)

    async def body(env):
        wid = env.worker.identity
        cap = env.worker.max_allowed_request
        assert env.broker.ready == [(wid, f"Calc:gate-rpc service:{cap}".encode())]
        (rid, rcap, sock, service), = env.broker.registered
        assert (rid, rcap, sock) == (wid, cap, env.broker.backend)
        assert service is env.broker.services["Calc"]
        assert isinstance(env.broker.workers[wid], RemoteWorker)
        assert await env.client.Calc.add(2, 2) == 4

    await run(Env(tmp_path, broker_cls=Broker).start(), body)


async def test_ban_worker(tmp_path):
    class Broker(AMajordomo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.banned = []

        async def ban_worker(self, worker):
            self.banned.append(worker)
            return await super().ban_worker(worker)

    async def body(env):
        wid = env.worker.identity
        w = env.broker.workers[wid]
        env.worker._reconnect = False
        env.worker.stop()  # the worker says DISCONNECT
        await until(lambda: env.broker.banned)
        assert env.broker.banned == [w]
        await until(lambda: wid not in env.broker.workers)
        assert not env.broker.services["Calc"].workers
        with pytest.raises(RemoteException, match="ServiceUnAvailable"):
            await env.client.Calc.add(1, 1)

    await run(Env(tmp_path, broker_cls=Broker).start(), body)


async def test_send_heartbeat(tmp_path):
    class Broker(AMajordomo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.beats = []

        async def send_heartbeat(self, worker):
            self.beats.append(worker.identity)
            await super().send_heartbeat(worker)

    async def body(env):
        wid = env.worker.identity
        await until(lambda: env.broker.beats.count(wid) >= 3)
        # the worker heard them: it stays registered beyond its liveness window
        await asyncio.sleep(0.2 * 3 * 1.5)
        assert wid in env.broker.workers
        assert await env.client.Calc.add(5, 5) == 10

    await run(Env(tmp_path, broker_cls=Broker, heartbeat=200).start(), body)


async def test_internal_interface(tmp_path):
    class Broker(AMajordomo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls = []

        async def internal_interface(self, client_id, request_id, func_name, args, kwargs):
            self.calls.append((client_id, func_name, list(args), dict(kwargs)))
            await super().internal_interface(client_id, request_id, func_name, args, kwargs)

    async def body(env):
        assert await env.client.Gate.query_service("Calc") == "gate-rpc service"
        assert (env.client.identity, "query_service", ["Calc"], {}) in env.broker.calls
        with pytest.raises(RemoteException, match="Function not found"):
            await env.client.Gate.no_such_function()

    await run(Env(tmp_path, broker_cls=Broker).start(), body)


async def test_request_zap(tmp_path):
    class Broker(AMajordomo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.asked = []

        async def request_zap(self, identity, address, request_id, mechanism, credentials, channel=b"frontend"):
            ok = await super().request_zap(identity, address, request_id, mechanism, credentials, channel)
            self.asked.append((identity, mechanism, tuple(credentials), channel, ok))
            return ok

    async def body(env):
        assert await env.client.Calc.add(6, 1) == 7
        assert (env.client.identity, b"PLAIN", (b"alice", b"pw"), b"frontend", True) in env.broker.asked
        bad = Client(env.front, context=env.ctx, reply_timeout=3, zap_mechanism="PLAIN",
                     zap_credentials=("alice", "wrong"))
        try:
            with pytest.raises(Exception):
                await bad.connect()
            assert (bad.identity, b"PLAIN", (b"alice", b"wrong"), b"frontend", False) in env.broker.asked
        finally:
            bad.close()

    await run(Env(tmp_path, broker_cls=Broker, zap=True).start(), body)


async def test_request_zap_for_workers(tmp_path):
    """As the original: every worker message is asked about, request id b"worker_" + command."""

    class Broker(AMajordomo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.asked = []

        async def request_zap(self, identity, address, request_id, mechanism, credentials, channel=b"frontend"):
            ok = await super().request_zap(identity, address, request_id, mechanism, credentials, channel)
            self.asked.append((identity, address, request_id, mechanism, tuple(credentials), channel, ok))
            return ok

    async def body(env):
        assert await env.client.Calc.add(2, 2) == 4
        wid = env.worker.identity
        backend = [a for a in env.broker.asked if a[5] == b"backend"]
        assert (wid, wid, b"worker_\x01", b"PLAIN", (b"alice", b"pw"), b"backend", True) in backend
        await until(lambda: any(a[2] == b"worker_\x03" for a in backend))  # the REPLY was asked about too
        # a worker with a wrong password: refused by the verdict, never registered
        bad = Service(name="Bad").create_worker(Calc, env.back, context=env.ctx, zap_mechanism="PLAIN",
                                                zap_credentials=("alice", "nope"))
        bad.run()
        try:
            await until(lambda: any(a[0] == bad.identity and a[6] is False for a in env.broker.asked))
            await asyncio.sleep(0.2)
            assert bad.identity not in env.broker.workers
            assert "Bad" not in env.broker.services or not env.broker.services["Bad"].workers
        finally:
            bad.stop()

    await run(Env(tmp_path, broker_cls=Broker, zap=True).start(), body)


async def test_request_zap_override_decides(tmp_path):
    """An override that refuses without asking the service: the client gets an error, nothing is routed."""

    class Broker(AMajordomo):
        async def request_zap(self, identity, address, request_id, mechanism, credentials, channel=b"frontend"):
            if channel == b"frontend" and credentials[0] == b"mallory":
                return False
            return await super().request_zap(identity, address, request_id, mechanism, credentials, channel)

    async def body(env):
        assert await env.client.Calc.add(1, 2) == 3
        env.zap.configure_plain("gate", {"alice": "pw", "mallory": "pw"})
        bad = Client(env.front, context=env.ctx, reply_timeout=3, zap_mechanism="PLAIN",
                     zap_credentials=("mallory", "pw"))
        try:
            with pytest.raises(Exception):
                await bad.connect()
        finally:
            bad.close()
        assert env.worker.identity in env.broker.workers

    await run(Env(tmp_path, broker_cls=Broker, zap=True).start(), body)


async def test_process_replies_from_zap(tmp_path):
    class Broker(AMajordomo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.replies = []

        async def process_replies_from_zap(self, replies):
            self.replies.append(list(replies))
            await super().process_replies_from_zap(replies)

    async def body(env):
        assert await env.client.Calc.add(3, 4) == 7
        # one ZAP round trip per sender (client, worker), each reply handed to the hook as received
        assert len(env.broker.replies) >= 2
        for r in env.broker.replies:
            assert len(r) == 7 and r[0] == b"" and r[1] == b"1.0" and r[3] == b"200" and r[4] == b"OK"
        ids = {r[2].split(b"-")[0] for r in env.broker.replies}
        assert b"worker_\x01" in ids
        assert {r[5] for r in env.broker.replies} == {b"alice"}

    await run(Env(tmp_path, broker_cls=Broker, zap=True).start(), body)


async def test_process_replies_from_zap_without_super(tmp_path):
    """An override that keeps the replies to itself: no verdict reaches the broker, nothing is let in."""

    class Broker(AMajordomo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.replies = []

        async def process_replies_from_zap(self, replies):
            self.replies.append(list(replies))

    env = Env(tmp_path, broker_cls=Broker, zap=True)
    saved = Settings.ZAP_REPLY_TIMEOUT
    Settings.ZAP_REPLY_TIMEOUT = 0.5
    try:
        env.zap = AsyncZAPService(addr=env.zap_addr)
        env.zap.configure_plain("gate", {"alice": "pw"})
        env.zap.start()
        env.broker = Broker(context=env.ctx)
        env.broker.bind_frontend(env.front)
        env.broker.connect_zap(zap_addr=env.zap_addr)
        env.broker.run()
        env.client = Client(env.front, context=env.ctx, reply_timeout=3, zap_mechanism="PLAIN",
                            zap_credentials=("alice", "pw"))
        with pytest.raises(Exception):
            await env.client.connect()
        assert env.broker.replies and env.broker.replies[0][3] == b"200"
    finally:
        Settings.ZAP_REPLY_TIMEOUT = saved
        await env.stop()


async def test_no_override_means_no_hook():
    ctx = Context()
    broker = AMajordomo(context=ctx)
    try:
        flags = [k for k in vars(broker) if k.startswith("_hook_") and k != "_hook_tasks"]
        assert flags and not any(getattr(broker, k) for k in flags)
    finally:
        broker.stop()
        ctx.destroy(linger=0)


# -- worker hooks ---------------------------------------------------------------------


async def test_worker_process_request(tmp_path):
    class W(Calc):
        seen: list

        async def process_request(self, messages):
            type(self).seen.append(list(messages))
            await super().process_request(messages)

    W.seen = []

    async def body(env):
        assert await env.client.Calc.add(7, 8) == 15
        (messages,) = W.seen
        assert messages[0] == env.client.identity and messages[1] == b"" and len(messages) == 6

    await run(Env(tmp_path, worker_cls=W).start(), body)


async def test_worker_send_to_majordomo(tmp_path):
    class W(Calc):
        sent: list

        async def send_to_majordomo(self, command, option=None, messages=None):
            type(self).sent.append((command, tuple(option or ()), messages))
            await super().send_to_majordomo(command, option, messages)

    W.sent = []

    async def body(env):
        assert await env.client.Calc.add(1, 9) == 10
        commands = [s[0] for s in W.sent]
        assert commands[0] == b"\x01", "READY first"
        replies = [s for s in W.sent if s[0] == b"\x03"]
        assert len(replies) == 1 and replies[0][1][0] == env.client.identity and replies[0][1][1] == b""

    await run(Env(tmp_path, worker_cls=W).start(), body)
