"""ZAP authentication (PLAIN/NULL) and CURVE transport encryption, in one process.

Broker, ZAP service, worker and clients run on one event loop over ``ipc://``
in a tmp dir (tcp 127.0.0.1 for the CURVE sniffing tests).  Calls that reach
the worker are counted on the worker; ZAP requests are counted on the
service.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket

import pytest
import zmq

from gaterpc import counters, execute
from gaterpc.core import AMajordomo, AsyncZAPService, Client, Context, Service, Worker
from gaterpc.exceptions import RemoteException
from gaterpc.global_settings import Settings
from gaterpc.hugedata import HugeData
from gaterpc.serialization import msg_pack
from gaterpc.utils import interface

pytestmark = pytest.mark.timeout(30)

DOMAIN = "gate"
USER = "alice"
PASSWORD = "s3cr3t-Pa55-\u54d4"  # must never show up in logs, errors or cache keys
PW_B = PASSWORD.encode("utf-8")


class Echo(Worker):
    calls: list

    @interface
    async def echo(self, *args):
        self.calls.append(args)
        return list(args)

    @interface
    async def huge(self, n):
        return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG, compress_module="lz4",
                        data=msg_pack(random.Random(n).randbytes(n)))


class CountingZAP(AsyncZAPService):
    """Records the frames (without the password) of every request it answers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def _process(self, msg):
        self.seen.append(list(msg[:8]))
        return super()._process(msg)


class Env:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.ctx = Context()
        self.frontend = f"ipc://{tmp_path}/front"
        self.backend = f"ipc://{tmp_path}/back"
        self.zap_addr = f"ipc://{tmp_path}/zap"
        self.zap = None
        self.broker = None
        self.workers = []
        self.clients = []
        self.raw = []

    def start_zap(self, start=True):
        self.zap = CountingZAP(addr=self.zap_addr)
        self.zap.configure_plain(DOMAIN, {USER: PASSWORD, "bob": "bob-pw"})
        if start:
            self.zap.start()
        return self.zap

    def start_broker(self, zap=True, front_opt=None, back_opt=None, frontend=None, backend=None):
        b = self.broker = AMajordomo(context=self.ctx)
        b.bind_frontend(frontend or self.frontend, sock_opt=front_opt)
        b.bind_backend(backend or self.backend, sock_opt=back_opt)
        if zap:
            b.connect_zap(zap_addr=self.zap_addr)
        b.run()
        return b

    def start_worker(self, mechanism="PLAIN", credentials=(USER, PASSWORD), name="Echo", backend=None):
        kw = {}
        if mechanism:
            kw = {"zap_mechanism": mechanism, "zap_credentials": credentials}
        w = Service(name=name).create_worker(Echo, backend or self.backend, context=self.ctx, **kw)
        w.calls = []
        w.run()
        self.workers.append(w)
        return w

    async def registered(self, name="Echo", timeout=2.0):
        for _ in range(int(timeout / 0.01)):
            svc = self.broker.services.get(name)
            if svc is not None and svc.workers:
                return True
            await asyncio.sleep(0.01)
        return False

    def client(self, mechanism="PLAIN", credentials=(USER, PASSWORD), reply_timeout=2.0, frontend=None):
        kw = {}
        if mechanism:
            kw = {"zap_mechanism": mechanism, "zap_credentials": credentials}
        c = Client(frontend or self.frontend, context=self.ctx, reply_timeout=reply_timeout, **kw)
        self.clients.append(c)
        return c

    def raw_dealer(self, addr=None, **opts):
        s = self.ctx.socket(zmq.DEALER)
        s.linger = 0
        for k, v in opts.items():
            s.set(getattr(zmq, k), v)
        s.connect(addr or self.frontend)
        self.raw.append(s)
        return s

    def zap_requests(self, prefix=None):
        if prefix is None:
            return list(self.zap.seen)
        return [m for m in self.zap.seen if m[3].startswith(prefix)]

    async def close(self):
        for c in self.clients:
            c.close()
        for w in self.workers:
            w.stop()
        for s in self.raw:
            s.close(linger=0)
        if self.broker is not None:
            self.broker.stop()
        if self.zap is not None:
            self.zap.stop()
            self.zap.context.destroy(linger=0)
        await asyncio.sleep(0.05)
        self.ctx.destroy(linger=0)


@pytest.fixture
async def env(tmp_path, clean_settings, caplog):
    caplog.set_level(logging.DEBUG)
    clean_settings.DEBUG = 2  # the most talkative logging must not leak secrets either
    e = Env(tmp_path)
    try:
        yield e
    finally:
        await e.close()
        assert PASSWORD not in caplog.text
        assert "bob-pw" not in caplog.text
        for k in e.broker.zap_cache.cache if e.broker is not None else ():
            assert PW_B not in repr(k).encode() and all(PW_B not in (x if isinstance(x, bytes) else b"")
                                                         for x in k)


async def plain_env(env):
    env.start_zap()
    env.start_broker()
    env.start_worker()
    assert await env.registered()
    return env


def mdp_request(service, zap_frames, request_id, *args):
    from gaterpc.serialization import msg_pack
    return [b"", b"MDPC01", service, *zap_frames, request_id, msg_pack("echo"), msg_pack(list(args)),
            msg_pack({})]


async def recv_or_none(sock, timeout):
    try:
        return await asyncio.wait_for(sock.recv_multipart(), timeout)
    except asyncio.TimeoutError:
        return None


# -- PLAIN: the good path, the wire format, the cache ---------------------------------------


async def test_plain_calls_work_and_zap_frames_follow_the_wire_spec(env):
    await plain_env(env)
    ready = env.zap_requests(b"worker_\x01-")
    assert len(ready) == 1
    _, empty, version, zap_id, domain, address, identity, mechanism = ready[0]
    assert (empty, version, domain, mechanism) == (b"", b"1.0", b"gate", b"PLAIN")
    assert address == identity == env.workers[0].identity
    assert len(zap_id) == len(b"worker_\x01-") + 16

    c = env.client()
    await c.connect()
    assert await c.Echo.echo("hi", 1) == ["hi", 1]
    assert env.workers[0].calls == [("hi", 1)]
    client_reqs = [m for m in env.zap.seen if m[5] == c.identity]
    assert len(client_reqs) == 1  # connect() made it; the call used the cache
    assert client_reqs[0][3][16:17] == b"-" and len(client_reqs[0][3]) == 33


async def test_hugedata_credits_reach_the_worker_through_a_zap_broker(env, monkeypatch):
    # A client's credits carry no ZAP frames: they only name its own requests in flight.
    credits = []
    credit = execute.Runner.credit

    def spy(self, client_id, request_id, value):
        credits.append(int.from_bytes(value, "big"))
        return credit(self, client_id, request_id, value)

    monkeypatch.setattr(execute.Runner, "credit", spy)
    await plain_env(env)
    errors = counters.drops_snapshot().get("broker_error", 0)
    c = env.client(reply_timeout=10.0)
    n = 4 * 1024 * 1024
    assert await c.Echo.huge(n) == random.Random(n).randbytes(n)
    assert credits and credits == sorted(credits) and max(credits) > n // 2, credits[:5]
    assert counters.drops_snapshot().get("broker_error", 0) == errors


async def test_second_call_does_not_reach_the_zap_service(env):
    await plain_env(env)
    c = env.client()
    await c.connect()
    n = len(env.zap.seen)
    for i in range(5):
        assert await c.Echo.echo(i) == [i]
    assert len(env.zap.seen) == n


async def test_messages_of_one_key_wait_behind_one_zap_round_trip_in_order(env):
    await plain_env(env)
    sock = env.raw_dealer()
    zap = (b"PLAIN", USER.encode(), PW_B)
    rids = [secrets.token_bytes(16) for _ in range(30)]
    for i, rid in enumerate(rids):
        sock.send_multipart(mdp_request(b"Echo", zap, rid, i))
    got = []
    for _ in rids:
        m = await recv_or_none(sock, 2.0)
        assert m is not None
        got.append(m[3])
    assert sorted(got) == sorted(rids)
    assert env.workers[0].calls == [(i,) for i in range(30)]
    assert len([m for m in env.zap.seen if m[5] != env.workers[0].identity]) == 1


async def test_null_mechanism_works(env):
    await plain_env(env)
    c = env.client(mechanism="NULL", credentials=None)
    await c.connect()
    assert await c.Echo.echo("null") == ["null"]
    req = [m for m in env.zap.seen if m[5] == c.identity]
    assert len(req) == 1 and req[0][7] == b"NULL"


async def test_null_worker_registers(env):
    env.start_zap()
    env.start_broker()
    env.start_worker(mechanism="NULL", credentials=None)
    assert await env.registered()


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["wrong_password", "unknown_user", "missing_frames", "unknown_mechanism",
                                  "curve_mechanism", "short_plain"])
async def test_refused_requests_never_reach_a_worker_and_fail_fast(env, case):
    await plain_env(env)
    zap = {
        "wrong_password": (b"PLAIN", USER.encode(), b"not-" + PW_B),
        "unknown_user": (b"PLAIN", b"mallory", PW_B),
        "missing_frames": (),
        "unknown_mechanism": (b"GSSAPI", b"x"),
        "curve_mechanism": (b"CURVE", secrets.token_bytes(32)),
        "short_plain": (b"PLAIN", USER.encode()),
    }[case]
    sock = env.raw_dealer()
    loop = asyncio.get_running_loop()
    n_zap = len(env.zap.seen)
    for i in range(3):  # the first asks the ZAP service, the next ones hit the cached failure
        rid = secrets.token_bytes(16)
        t0 = loop.time()
        sock.send_multipart(mdp_request(b"Echo", zap, rid, "payload"))
        reply = await recv_or_none(sock, 1.0)
        assert reply is not None, f"no reply for {case} #{i}"
        assert loop.time() - t0 < 0.5
        # [PLAIN, user, rid, ...] or [GSSAPI, x, rid, ...]: where the request id is cannot be known
        if case not in ("short_plain", "unknown_mechanism"):
            assert reply[3] == rid
        from gaterpc.serialization import msg_unpack
        body = msg_unpack(reply[4])
        assert body["exception"][0] == "PermissionError"
        assert "authentication failed" in body["exception"][1]
        assert PASSWORD not in repr(body)
    assert env.workers[0].calls == []
    # the cache: at most one round trip to the ZAP service for the three refusals
    # the cache: one round trip to the ZAP service for the three refusals, none when the
    # frames cannot be parsed; PLAIN with a user and no password reads the request id
    # as the password, so each request is a distinct credential and is asked again
    expected = {"missing_frames": 0, "unknown_mechanism": 0, "short_plain": 3}.get(case, 1)
    assert len(env.zap.seen) - n_zap == expected
    # exact capacity accounting: refusals take nothing and give nothing back;
    # a good call after them takes one unit and gives back exactly one
    remote = next(iter(env.broker.workers.values()))
    full = env.workers[0].max_allowed_request
    assert remote.max_allowed_request == full and remote._inflight == {}
    c = env.client()
    await c.connect()
    assert await c.Echo.echo("ok") == ["ok"]
    for _ in range(100):
        if remote.max_allowed_request == full:
            break
        await asyncio.sleep(0.01)
    assert remote.max_allowed_request == full and remote._inflight == {}
    assert list(env.broker.services["Echo"]._ready) == [remote]


async def test_client_with_wrong_password_gets_permission_error(env):
    await plain_env(env)
    c = env.client(credentials=(USER, "wrong"), reply_timeout=5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(RemoteException) as info:
        await c.connect()
    assert loop.time() - t0 < 0.5
    assert "PermissionError" in str(info.value)
    assert "wrong" not in str(info.value)
    assert env.workers[0].calls == []
    # the failure is cached: only one ZAP request for this client
    assert len([m for m in env.zap.seen if m[5] == c.identity]) == 1


async def test_reason_is_given_only_when_not_secure(env, clean_settings):
    clean_settings.SECURE = False
    await plain_env(env)
    c = env.client(credentials=(USER, "wrong"))
    with pytest.raises(RemoteException) as info:
        await c.connect()
    assert "Invalid password" in str(info.value)


async def test_worker_with_bad_credentials_is_not_registered_and_told(env):
    env.start_zap()
    env.start_broker()
    w = env.start_worker(credentials=(USER, "wrong"))
    task = w._recv_task
    for _ in range(100):
        if task.done():
            break
        await asyncio.sleep(0.01)
    assert task.done(), "the worker was not told to disconnect"
    assert not env.broker.workers
    assert "Echo" not in env.broker.services
    c = env.client()
    await c.connect()
    with pytest.raises(AttributeError, match="Echo"):  # not in the broker's service list
        await c.Echo.echo(1)
    assert w.calls == []


# -- expiry and revocation -------------------------------------------------------------------


async def test_expiry_asks_again_and_revocation_takes_effect(env):
    await plain_env(env)
    checker = env.broker._zap_checker
    checker.success_ttl = 0.3
    c = env.client()
    await c.connect()
    assert await c.Echo.echo(1) == [1]
    n = len([m for m in env.zap.seen if m[5] == c.identity])
    await asyncio.sleep(0.35)
    assert await c.Echo.echo(2) == [2]
    assert len([m for m in env.zap.seen if m[5] == c.identity]) == n + 1
    # revoke: within success_ttl the password stops working
    env.zap.configure_plain(DOMAIN, {"bob": "bob-pw"})
    await asyncio.sleep(0.35)
    with pytest.raises(RemoteException) as info:
        await c.Echo.echo(3)
    assert "PermissionError" in str(info.value)
    assert [a for a in env.workers[0].calls] == [(1,), (2,)]


async def test_failures_expire_too(env):
    await plain_env(env)
    env.broker._zap_checker.failure_ttl = 0.2
    c = Client(env.frontend, identity="bob-client", context=env.ctx, reply_timeout=2,
               zap_mechanism="PLAIN", zap_credentials=("bob", "late"))
    env.clients.append(c)
    with pytest.raises(RemoteException):
        await c.connect()
    c.close()
    env.zap.configure_plain(DOMAIN, {"bob": "late"})
    assert env.broker.zap_cache.cache  # the failure is cached ...
    await asyncio.sleep(0.25)  # ... until it expires; then the same identity is asked about again
    c2 = Client(env.frontend, identity="bob-client", context=env.ctx, reply_timeout=2,
                zap_mechanism="PLAIN", zap_credentials=("bob", "late"))
    assert c2.identity == c.identity
    env.clients.append(c2)
    await c2.connect()
    assert await c2.Echo.echo("ok") == ["ok"]
    assert len([m for m in env.zap.seen if m[5] == c.identity]) == 2


# -- the ZAP service down or slow -------------------------------------------------------------


async def test_zap_service_down_gives_clear_error_and_others_keep_working(env, clean_settings):
    clean_settings.ZAP_REPLY_TIMEOUT = 0.4
    await plain_env(env)
    good = env.client()
    await good.connect()
    assert await good.Echo.echo(0) == [0]
    env.zap.stop()  # the ZAP service goes away

    loop = asyncio.get_running_loop()
    newcomer = env.client(credentials=("bob", "bob-pw"), reply_timeout=5)

    async def slow_path():
        t0 = loop.time()
        with pytest.raises(RemoteException) as info:
            await newcomer.connect()
        return loop.time() - t0, str(info.value)

    task = asyncio.ensure_future(slow_path())
    # meanwhile, the authenticated client and its worker are served at once
    for i in range(10):
        t0 = loop.time()
        assert await good.Echo.echo(i) == [i]
        assert loop.time() - t0 < 0.2
    elapsed, text = await task
    assert 0.3 <= elapsed < 0.4 + 0.3
    assert "TimeoutError" in text and "authentication service" in text


async def test_worker_registers_once_a_slow_zap_service_answers(env, clean_settings):
    """A ZAP timeout is transient for workers: a plain DISCONNECT, and ours registers again."""
    clean_settings.ZAP_REPLY_TIMEOUT = 0.3
    clean_settings.MDP_HEARTBEAT_INTERVAL = 300
    zap = env.start_zap(start=False)  # bound, not answering yet
    env.start_broker()
    worker = env.start_worker()
    assert not await env.registered(timeout=1.0)
    assert worker._recv_task is not None and not worker._recv_task.done(), "the worker gave up"
    zap.start()
    assert await env.registered(timeout=10.0)
    cli = env.client()
    await cli.connect()
    assert await cli.Echo.echo(7) == [7]


async def test_zap_service_never_started(env, clean_settings):
    clean_settings.ZAP_REPLY_TIMEOUT = 0.3
    env.start_broker()  # nothing listens on zap_addr
    sock = env.raw_dealer()
    rid = secrets.token_bytes(16)
    sock.send_multipart(mdp_request(b"Echo", (b"PLAIN", USER.encode(), PW_B), rid, 1))
    reply = await recv_or_none(sock, 1.0)
    assert reply is not None and reply[3] == rid
    # a timeout is not cached: the next request asks again
    assert not list(env.broker.zap_cache.cache)


# -- the service itself ----------------------------------------------------------------------


async def test_service_stop_before_start_and_short_requests(env):
    zap = AsyncZAPService(addr=env.zap_addr)
    zap.stop()  # Z5: no KeyError
    assert zap.zap_socket is None
    zap.context.destroy(linger=0)

    env.start_zap()
    d = env.raw_dealer(env.zap_addr)
    d.send_multipart([b"", b"1.0", b"rid-1", b"gate"])  # Z6: too short, but answerable
    reply = await recv_or_none(d, 1.0)
    assert reply == [b"", b"1.0", b"rid-1", b"400", b"Not enough frames", b"", b""]
    d.send_multipart([b"", b"1.0", b"rid-2", b"gate", b"a", b"a"])
    assert (await recv_or_none(d, 1.0)) == [b"", b"1.0", b"rid-2", b"400", b"Not enough frames", b"", b""]
    d.send_multipart([b"", b"9.9", b"rid-3", b"gate", b"a", b"a", b"NULL"])
    d.send_multipart([b"", b"1.0", b"rid-4", b"gate", b"a", b"a", b"PLAIN", USER.encode()])
    d.send_multipart([b"", b"1.0", b"rid-5", b"gate", b"a", b"a", b"PLAIN", USER.encode(), PW_B])
    d.send_multipart([b"", b"1.0", b"rid-6", b"other", b"a", b"a", b"PLAIN", USER.encode(), PW_B])
    d.send_multipart([b"", b"1.0", b"rid-7", b"gate", b"a", b"a", b"NULL"])
    got = [await recv_or_none(d, 1.0) for _ in range(5)]
    assert [g[2:5] for g in got] == [
        [b"rid-3", b"400", b"Invalid version"],
        [b"rid-4", b"400", b"Invalid credentials"],
        [b"rid-5", b"200", b"OK"],
        [b"rid-6", b"400", b"Invalid domain"],
        [b"rid-7", b"200", b"OK"],
    ]
    assert got[2][5] == USER.encode() and got[4][5] == b"anonymous"
    env.zap.deny("a")
    d.send_multipart([b"", b"1.0", b"rid-8", b"gate", b"a", b"a", b"NULL"])
    assert (await recv_or_none(d, 1.0))[3:5] == [b"400", b"Address denied"]
    task = env.zap._recv_task
    env.zap.stop()
    await task  # ends quietly


# -- CURVE transport encryption ---------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """A TCP relay on 127.0.0.1 that records every byte crossing it."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.captured = bytearray()
        self.server = None
        self.tasks = set()

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(r, w):
            try:
                while True:
                    data = await r.read(65536)
                    if not data:
                        break
                    self.captured += data
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        for coro in (pipe(reader, up_writer), pipe(up_reader, writer)):
            t = asyncio.ensure_future(coro)
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def close(self):
        for t in list(self.tasks):
            t.cancel()
        self.server.close()
        await self.server.wait_closed()


MARKER = "MARKER-plaintext-7f3a9c"


@pytest.fixture
async def curve_env(env, clean_settings):
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    server_opt = {zmq.CURVE_SECRETKEY: server_secret, zmq.CURVE_PUBLICKEY: server_public,
                  zmq.CURVE_SERVER: True}
    env.front_port = free_port()
    env.tcp_frontend = f"tcp://127.0.0.1:{env.front_port}"
    env.keys = (server_public, client_public, client_secret)
    env.start_zap()
    env.start_broker(front_opt=dict(server_opt), back_opt=dict(server_opt), frontend=env.tcp_frontend)
    # clients and workers of this process: CURVE client keys through Settings.ZMQ_SOCK
    clean_settings.ZMQ_SOCK.update({zmq.CURVE_SECRETKEY: client_secret, zmq.CURVE_PUBLICKEY: client_public,
                                    zmq.CURVE_SERVERKEY: server_public})
    env.start_worker()
    assert await env.registered(), "worker over CURVE (and the ZAP link despite ZMQ_SOCK) failed"
    relay = Relay(env.front_port)
    env.relay_addr = f"tcp://127.0.0.1:{await relay.start()}"
    yield env, relay
    await relay.close()


async def test_curve_client_with_server_key_talks_and_nothing_is_plaintext(curve_env):
    env, relay = curve_env
    c = env.client(frontend=env.relay_addr)
    await c.connect()
    assert await c.Echo.echo(MARKER) == [MARKER]
    assert len(relay.captured) > 0
    assert MARKER.encode() not in relay.captured
    assert PW_B not in relay.captured and USER.encode() not in relay.captured


async def test_curve_client_with_wrong_server_key_gets_nothing(curve_env):
    env, relay = curve_env
    wrong_public, _ = zmq.curve_keypair()
    _, client_public, client_secret = env.keys
    sock = env.raw_dealer(env.relay_addr, CURVE_SERVERKEY=wrong_public, CURVE_PUBLICKEY=client_public,
                          CURVE_SECRETKEY=client_secret)
    sock.send_multipart(mdp_request(b"Echo", (b"PLAIN", USER.encode(), PW_B), secrets.token_bytes(16), MARKER))
    assert await recv_or_none(sock, 0.5) is None
    assert len(relay.captured) > 0  # the handshake went through the relay
    assert MARKER.encode() not in relay.captured and PW_B not in relay.captured
    assert env.workers[0].calls == []


async def test_relay_sees_plaintext_without_curve(env):
    """Control: the relay does capture the marker when CURVE is off."""
    env.start_zap()
    port = free_port()
    env.start_broker(frontend=f"tcp://127.0.0.1:{port}")
    env.start_worker()
    assert await env.registered()
    relay = Relay(port)
    addr = f"tcp://127.0.0.1:{await relay.start()}"
    try:
        c = env.client(frontend=addr)
        await c.connect()
        assert await c.Echo.echo(MARKER) == [MARKER]
        assert MARKER.encode() in relay.captured
    finally:
        await relay.close()


# -- the gate channel (used by gaterpc.gate) ---------------------------------------------------


async def test_gate_channel_checks_and_strips(env):
    await plain_env(env)
    checker = env.broker._zap_checker
    peer = secrets.token_bytes(16)
    got = []
    good = [peer, b"", b"GATE01", b"\x04", b"PLAIN", USER.encode(), PW_B, b"tail"]
    bad = [peer, b"", b"GATE01", b"\x04", b"PLAIN", USER.encode(), b"nope", b"tail"]
    checker.gate(peer, list(bad), got.append)
    checker.gate(peer, list(good), got.append)
    checker.gate(peer, [b"PLAIN", USER.encode(), PW_B, b"a", b"b"], got.append)  # frames-only form
    for _ in range(100):
        if len(got) == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert got == [[peer, b"", b"GATE01", b"\x04", b"tail"], [b"a", b"b"]]
    reqs = [m for m in env.zap.seen if m[5] == peer]
    assert [m[3][:7] for m in reqs] == [b"gate_\x04-", b"gate_\x04-"]
    assert [m[4] for m in reqs] == [b"gate", b"gate"]
