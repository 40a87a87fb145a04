"""The endpoints the fuzz harness attacks: one role instance and the raw socket(s) playing its peer.

Each :class:`Endpoint` subclass starts its role in the running event loop,
sends a batch of messages to it and checks its properties afterwards (see
``fuzz.py``); a violated property raises :class:`FuzzFailure`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from typing import TYPE_CHECKING, Any, Callable, Optional

import zmq
import zmq.asyncio

from gaterpc.base import Context
from gaterpc.bench.fuzz_strategies import (
    CLIENT_SERVICE, GATE01, HUGE_TAG, MDPC, MDPW, PROBE_SERVICE, STREAM_END, STREAM_TAG,
)
from gaterpc.helpers import interface
from gaterpc.serialization import msg_pack, msg_unpack

if TYPE_CHECKING:
    from gaterpc.broker import AMajordomo
    from gaterpc.client import Client
    from gaterpc.gate import Gate
    from gaterpc.worker import Worker
    from gaterpc.zap import AsyncZAPService

#: one multipart message
Frames = list[bytes]
#: what the client endpoint's strategy draws: ("own"/"other" request id, header, body) or ("raw", None, message)
ClientCase = tuple[str, Optional[bytes], Frames]

SYNC_TIMEOUT = 5.0                   # seconds for one well-formed exchange (loaded CI machine)
PROBE_EVERY = 10                     # a real call through the role every N batches
LOGGERS = ("gaterpc", "gaterpc.majordomo", "gaterpc.worker", "gaterpc.client", "gaterpc.gate",
           "gaterpc.zap", "asyncio")


class FuzzFailure(AssertionError):
    """A property of an endpoint does not hold after a batch."""


# ---------------------------------------------------------------------------
# error capture
# ---------------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self._seen: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if id(record) not in self._seen:
            self._seen.add(id(record))
            self.records.append(record)


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def recv_until(sock: zmq.asyncio.Socket, pred: Callable[[Frames], bool], timeout: float = SYNC_TIMEOUT,
                     limit: int = 100_000) -> Optional[Frames]:
    """Receive on ``sock`` until ``pred(msg)``; the message, or None after ``timeout``/``limit`` messages."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for _ in range(limit):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        if not await sock.poll(int(remaining * 1000) + 1):
            return None
        msg: Frames = await sock.recv_multipart()
        if pred(msg):
            return msg
    return None


def _probe_worker_class() -> type[Worker]:
    from gaterpc.worker import Worker

    class FuzzProbe(Worker):
        @interface
        async def echo(self, x: Any = None, *args: Any, **kwargs: Any) -> Any:
            return x

    return FuzzProbe


# ---------------------------------------------------------------------------
# endpoints
# ---------------------------------------------------------------------------


class Endpoint:
    """One role under test plus our socket(s) talking to it."""

    name = ""
    heartbeat = 2000
    #: the role instance under test (set by ``_start``)
    role: Any = None
    broker: AMajordomo
    probe_worker: Worker

    def __init__(self, tmpdir: str) -> None:
        self.tmpdir = tmpdir
        self.ctx: Optional[Context] = None
        self.raw: Optional[zmq.asyncio.Context] = None
        self.capture = _Capture()
        self.loop_errors: list[dict[str, Any]] = []
        self.batches = 0
        self.messages = 0
        self._stack: list[Callable[[], object]] = []  # callables (sync or async) run (reversed) by close()
        self._client: Optional[Client] = None
        self._probe_n = 0
        self._errors_seen = 0
        self._old_handler: Any = None

    # -- subclass API --
    async def _start(self) -> None:
        raise NotImplementedError

    async def _send(self, batch: list[Any]) -> None:
        """Send one batch (its items are what the endpoint's ``<name>_batch`` strategy draws)."""
        raise NotImplementedError

    async def _sync(self) -> None:
        """A well-formed exchange on the fuzzed connection (raises FuzzFailure)."""
        raise NotImplementedError

    def _alive(self) -> None:
        """Raise FuzzFailure if the role is not running any more."""
        raise NotImplementedError

    def expected_error(self, record: logging.LogRecord) -> bool:
        return False

    # -- common --
    def addr(self, name: str) -> str:
        return f"ipc://{self.tmpdir}/{self.name}-{name}"

    async def start(self) -> Endpoint:
        loop = asyncio.get_running_loop()
        self._old_handler = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self.capture)
        self.ctx = Context()
        self.raw = zmq.asyncio.Context()
        await self._start()
        return self

    def sock(self, kind: int, identity: Optional[bytes] = None) -> zmq.asyncio.Socket:
        assert self.raw is not None, "start() first"
        s = self.raw.socket(kind)
        s.linger = 0
        if identity is not None:
            s.setsockopt(zmq.IDENTITY, identity)
        self._stack.append(lambda: s.close(linger=0))
        return s

    async def close(self) -> None:
        while self._stack:
            fn = self._stack.pop()
            try:
                r = fn()
                if asyncio.iscoroutine(r):
                    await r
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
        await asyncio.sleep(0.05)
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self.capture)
        asyncio.get_running_loop().set_exception_handler(self._old_handler)
        if self.raw is not None:
            self.raw.destroy(linger=0)
        if self.ctx is not None:
            self.ctx.destroy(linger=0)

    async def batch(self, batch: list[Any]) -> None:
        """Send one batch, then check every property."""
        self.batches += 1
        self.messages += len(batch)
        await self._send(batch)
        await self.check(probe=self.batches % PROBE_EVERY == 0)

    async def check(self, probe: bool = True) -> None:
        self._alive()
        await self._sync()
        if probe and self._client is not None:
            await self._probe()
        self._alive()
        self.crashes()

    async def _probe(self) -> None:
        assert self._client is not None
        self._probe_n += 1
        n = self._probe_n
        try:
            got = await asyncio.wait_for(getattr(self._client, PROBE_SERVICE).echo(n), SYNC_TIMEOUT)
        except Exception as exc:
            raise FuzzFailure(f"{self.name}: a well-formed call through the role failed: {exc!r}") from exc
        if got != n:
            raise FuzzFailure(f"{self.name}: a well-formed call returned {got!r}, not {n!r}")

    def crashes(self) -> None:
        bad = [r for r in self.capture.records if not self.expected_error(r)]
        # brokers log only their first errors: their error counter tells the rest
        errors_now = getattr(getattr(self, "role", None), "_errors", 0)
        if errors_now != self._errors_seen:
            self._errors_seen = errors_now
            if not bad:
                raise FuzzFailure(f"{self.name}: the role counted a message it failed to handle")
        self.capture.records.clear()
        errors, self.loop_errors = self.loop_errors, []
        if bad or errors:
            lines = [f"{r.name}: {r.getMessage()}" + _exc_text(r) for r in bad]
            lines += [f"loop: {c.get('message')} {c.get('exception')!r}" for c in errors]
            raise FuzzFailure(f"{self.name}: errors reported: " + "; ".join(lines))

    # helpers shared by broker-like endpoints
    async def _start_broker(self, cls: Optional[type[AMajordomo]] = None, **kwargs: Any) -> AMajordomo:
        from gaterpc.broker import AMajordomo
        from gaterpc.worker import Service

        broker = (cls or AMajordomo)(context=self.ctx, heartbeat=self.heartbeat, **kwargs)
        self._stack.append(broker.stop)
        broker.bind_frontend(self.addr("front"))
        broker.bind_backend(self.addr("back"))
        broker.run()
        worker = Service(name=PROBE_SERVICE).create_worker(
            _probe_worker_class(), self.addr("back"), context=self.ctx, workers_heartbeat=self.heartbeat)
        worker.run()
        self._stack.append(worker.stop)
        for _ in range(500):
            svc = broker.services.get(PROBE_SERVICE)
            if svc is not None and svc.workers:
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("the probe worker did not register")
        await self._start_client(self.addr("front"))
        self.broker = broker
        self.probe_worker = worker
        return broker

    async def _start_client(self, addr: str) -> None:
        from gaterpc.client import Client

        client = Client(addr, context=self.ctx, heartbeat=self.heartbeat * 10, reply_timeout=SYNC_TIMEOUT * 2)
        self._stack.append(client.close)
        await asyncio.wait_for(client.connect(), SYNC_TIMEOUT)
        self._client = client

    def _broker_alive(self, broker: AMajordomo) -> None:
        task = broker._broker_task
        if task is None or task.done():
            raise FuzzFailure(f"{self.name}: the broker task ended: {task!r}")
        for ls in (broker._lfront, broker._lback):
            if ls is None or ls.closed or ls.socket.closed:
                raise FuzzFailure(f"{self.name}: a broker socket is closed")
        w = self.probe_worker
        if w._recv_task is None or w._recv_task.done():
            raise FuzzFailure(f"{self.name}: the probe worker stopped")


def _exc_text(record: logging.LogRecord) -> str:
    """`` [Type: message]`` of a record's exception, or nothing."""
    exc_type, exc, _tb = record.exc_info or (None, None, None)
    return f" [{exc_type.__name__}: {exc}]" if exc_type is not None else ""


def _keepalive_request(rid: bytes) -> Frames:
    return [msg_pack("keepalive"), msg_pack([b"heartbeat"]), b"\x80"]


def _ok_keepalive(body: bytes) -> bool:
    try:
        reply = msg_unpack(body)
    except Exception:
        return False
    return type(reply) is dict and reply.get("result") == b"200" and not reply.get("exception")


class FrontendEndpoint(Endpoint):
    """The broker frontend, fuzzed by a client DEALER."""

    name = "frontend"
    role: AMajordomo

    async def _start(self) -> None:
        self.role = await self._start_broker()
        self.dealer = self.sock(zmq.DEALER, b"fuzz-" + secrets.token_bytes(8))
        self.dealer.connect(self.addr("front"))

    async def _send(self, batch: list[Any]) -> None:
        for msg in batch:
            if msg:
                await self.dealer.send_multipart(msg)

    async def _sync(self) -> None:
        rid = secrets.token_bytes(16)
        await self.dealer.send_multipart([b"", MDPC, b"Gate", rid, *_keepalive_request(rid)])
        got = await recv_until(self.dealer, lambda m: len(m) == 5 and m[3] == rid)
        if got is None:
            raise FuzzFailure("frontend: no answer to a well-formed keepalive after the batch")
        if not _ok_keepalive(got[4]):
            raise FuzzFailure(f"frontend: a well-formed keepalive got {got!r}")

    def _alive(self) -> None:
        self._broker_alive(self.role)


class BackendEndpoint(Endpoint):
    """The broker backend, fuzzed by a worker DEALER."""

    name = "backend"
    role: AMajordomo

    async def _start(self) -> None:
        self.role = await self._start_broker()
        self.dealer = self.sock(zmq.DEALER, b"fuzz-" + secrets.token_bytes(8))
        self.dealer.connect(self.addr("back"))

    async def _send(self, batch: list[Any]) -> None:
        for msg in batch:
            if msg:
                await self.dealer.send_multipart(msg)

    async def _sync(self) -> None:
        # Unregister (silent), register under a sync service (answered by HEARTBEAT), unregister.
        d = self.dealer
        await d.send_multipart([b"", MDPW, b"\x05", b"bye"])
        await d.send_multipart([b"", MDPW, b"\x01", b"FuzzSync:sync:1"])
        got = await recv_until(d, lambda m: m[:3] == [b"", MDPW, b"\x04"])
        await d.send_multipart([b"", MDPW, b"\x05", b"bye"])
        if got is None:
            raise FuzzFailure("backend: a well-formed READY was not answered after the batch")

    def _alive(self) -> None:
        self._broker_alive(self.role)
        for name in self.role.services:
            if not isinstance(name, str):
                raise FuzzFailure(f"backend: a service name is not a str: {name!r}")

    async def check(self, probe: bool = True) -> None:
        await Endpoint.check(self, True)  # the probe is the only check on the client side


class WorkerEndpoint(Endpoint):
    """A worker, fuzzed by the ROUTER it connects to (we are its broker)."""

    name = "worker"
    role: Worker
    heartbeat = 60_000

    async def _start(self) -> None:
        from gaterpc.worker import Service

        self.router = self.sock(zmq.ROUTER)
        self.router.bind(self.addr("broker"))
        worker = Service(name="FuzzW").create_worker(
            _probe_worker_class(), self.addr("broker"), context=self.ctx, workers_heartbeat=self.heartbeat)
        worker.run()
        self._stack.append(worker.stop)
        ready = await recv_until(self.router, lambda m: len(m) >= 4 and m[3] == b"\x01")
        if ready is None:
            raise RuntimeError("the worker sent no READY")
        self.wid = ready[0]
        self.role = worker
        self._n = 0

    async def _send(self, batch: list[Any]) -> None:
        for msg in batch:
            if len(msg) >= 3 and msg[0] == b"" and msg[1] == MDPW and msg[2] == b"\x05":
                continue  # a valid DISCONNECT stops the worker: that is its job
            if msg:
                await self.router.send_multipart([self.wid, *msg])

    async def _sync(self) -> None:
        self._n += 1
        rid = secrets.token_bytes(16)
        await self.router.send_multipart([self.wid, b"", MDPW, b"\x02", b"sync", b"", rid,
                                          msg_pack("echo"), msg_pack([self._n]), b"\x80"])
        got = await recv_until(self.router, lambda m: len(m) == 8 and m[3] == b"\x03" and m[6] == rid)
        if got is None:
            raise FuzzFailure("worker: no reply to a well-formed request after the batch")
        reply = msg_unpack(got[7])
        if reply != {"result": self._n, "exception": None}:
            raise FuzzFailure(f"worker: a well-formed request got {reply!r}")

    def _alive(self) -> None:
        w = self.role
        if w._recv_task is None or w._recv_task.done():
            raise FuzzFailure(f"worker: the receive task ended: {w._recv_task!r}")
        if w._lsock is None or w._lsock.closed or w._socket is None or w._socket.closed:
            raise FuzzFailure("worker: its socket is closed")


class ClientEndpoint(Endpoint):
    """A client, fuzzed by the ROUTER it connects to (a broker answering with garbage)."""

    name = "client"
    role: Client
    heartbeat = 60_000

    async def _start(self) -> None:
        from gaterpc.client import Client

        self.router = self.sock(zmq.ROUTER)
        self.router.bind(self.addr("broker"))
        client = Client(self.addr("broker"), context=self.ctx, heartbeat=self.heartbeat,
                        reply_timeout=SYNC_TIMEOUT * 2)
        self._stack.append(client.close)
        connecting = asyncio.ensure_future(client.connect())
        # (requests only: the client also sends HugeData credits, header MDPC01-credit)
        req = await recv_until(self.router, lambda m: len(m) >= 5 and m[2] == MDPC and m[3] == b"Gate")
        if req is None:
            connecting.cancel()
            raise RuntimeError("the client did not ask for the services")
        await self.router.send_multipart([req[0], b"", MDPC, b"Gate", req[4],
                                          msg_pack({"result": [CLIENT_SERVICE, "Gate"], "exception": None})])
        await asyncio.wait_for(connecting, SYNC_TIMEOUT)
        self.role = client
        self._n = 0

    async def _call(self, garbage: list[ClientCase], terminate: bool = True) -> asyncio.Future[Any]:
        """One call of the client answered by ``garbage``, then by terminators; returns its outcome."""
        self._n += 1
        n = self._n
        call: asyncio.Future[Any] = asyncio.ensure_future(getattr(self.role, CLIENT_SERVICE).f(n))
        req = await recv_until(self.router, lambda m: len(m) >= 5 and m[2] == MDPC
                               and m[3] == CLIENT_SERVICE.encode())
        if req is None:
            call.cancel()
            raise FuzzFailure("client: the call was not sent")
        cid, rid = req[0], req[4]
        svc = CLIENT_SERVICE.encode()
        for kind, header, body in garbage:
            if kind == "raw" or header is None:  # only raw cases carry no header
                msg = [cid, *body]
            else:
                msg = [cid, b"", header, svc, rid if kind == "own" else secrets.token_bytes(16), *body]
            if len(msg) > 1:
                await self.router.send_multipart(msg)
        if terminate:
            # end any stream (this also ends a HugeData transfer); then the plain reply
            await self.router.send_multipart([cid, b"", MDPC, svc, rid, STREAM_TAG, STREAM_END])
        await self.router.send_multipart([cid, b"", MDPC, svc, rid,
                                          msg_pack({"result": n, "exception": None})])
        done, _ = await asyncio.wait((call,), timeout=SYNC_TIMEOUT)
        if not done:
            call.cancel()
            raise FuzzFailure("client: the call did not end after its terminators")
        exc = call.exception()
        if exc is None:
            result = call.result()
            if hasattr(result, "__aiter__"):
                async def drain() -> None:
                    try:
                        async for _ in result:
                            pass
                    except Exception:  # noqa: BLE001 - garbage may end the stream with an error
                        pass
                try:
                    await asyncio.wait_for(drain(), SYNC_TIMEOUT)
                except asyncio.TimeoutError:
                    raise FuzzFailure("client: a stream did not end after its end tag") from None
        elif not isinstance(exc, Exception) or isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            raise FuzzFailure(f"client: the call ended with {exc!r}")
        for table in ("replies", "_streams", "_huge"):
            if rid in getattr(self.role, table):
                raise FuzzFailure(f"client: the finished call is still in Client.{table}")
        return call

    async def _send(self, batch: list[Any]) -> None:
        self._garbage = batch

    async def _sync(self) -> None:
        # the end tag only when the garbage may have opened a stream that nothing else ends
        await self._call(self._garbage, terminate=any(b and b[0] == STREAM_TAG for k, _, b in self._garbage
                                                      if k == "own"))
        call = await self._call([], terminate=False)
        if call.exception() is not None or call.result() != self._n:
            raise FuzzFailure(f"client: a well-formed reply gave {call!r}")

    async def check(self, probe: bool = True) -> None:
        await Endpoint.check(self, False)

    def _alive(self) -> None:
        c = self.role
        if c._recv_task is None or c._recv_task.done():
            raise FuzzFailure(f"client: the receive task ended: {c._recv_task!r}")
        if c._lsock is None or c._lsock.closed or c.socket is None or c.socket.closed:
            raise FuzzFailure("client: its socket is closed")


class GateEndpoint(Endpoint):
    """A Gate's gate socket, fuzzed by a joined peer (our DEALER to it, our ROUTER it talks to)."""

    name = "gate"
    role: Gate

    async def _start(self) -> None:
        from gaterpc.gate import Gate

        self.port = free_port()
        gate = Gate(self.port, identity=f"FuzzGate-{secrets.token_hex(4)}", multicast=False,
                    gate_bind="127.0.0.1", context=self.ctx, heartbeat=self.heartbeat)
        self._stack.append(gate.stop)
        gate.bind_frontend(self.addr("front"))
        gate.bind_backend(self.addr("back"))
        gate.run()
        self.role = gate
        await self._start_broker_parts(gate)
        self.peer_id = secrets.token_bytes(16)
        self.inbox = self.sock(zmq.ROUTER)
        # the gate reconnects (new DEALER, same id) after it banned us: take the route over
        self.inbox.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.peer_port = free_port()
        self.inbox_addr = f"tcp://127.0.0.1:{self.peer_port}"
        self.inbox.bind(self.inbox_addr)
        self.dealer = self.sock(zmq.DEALER, self.peer_id)
        self.dealer.connect(f"tcp://127.0.0.1:{self.port}")
        await self._join()

    async def _start_broker_parts(self, gate: Gate) -> None:
        from gaterpc.worker import Service

        worker = Service(name=PROBE_SERVICE).create_worker(
            _probe_worker_class(), self.addr("back"), context=self.ctx, workers_heartbeat=self.heartbeat)
        worker.run()
        self._stack.append(worker.stop)
        for _ in range(500):
            svc = gate.services.get(PROBE_SERVICE)
            if svc is not None and svc.workers:
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("the probe worker did not register")
        self.probe_worker = worker
        await self._start_client(self.addr("front"))

    async def _join(self) -> None:
        gate = self.role
        cluster = gate.gate_cluster
        if self.peer_id in cluster.workers:
            return
        if self.peer_id not in cluster.unready_gates:
            await gate.connect_gate(self.peer_id, self.inbox_addr)
        for _ in range(100):
            await self.dealer.send_multipart([b"", GATE01, b"\x02", msg_pack({CLIENT_SERVICE: 3})])
            for _ in range(10):
                await asyncio.sleep(0.005)
                if self.peer_id in cluster.workers:
                    return
        raise FuzzFailure("gate: our peer could not join (again)")

    async def _send(self, batch: list[Any]) -> None:
        for msg in batch:
            if isinstance(msg, tuple):
                await self._gate_call(msg[1])
            elif msg:
                await self.dealer.send_multipart(msg)

    async def _gate_call(self, body: Frames) -> None:
        """The gate calls our internal service; we answer with ``body``, then with terminators."""
        gate = self.role
        if self.peer_id not in gate.gate_cluster.workers:
            return
        call = asyncio.ensure_future(gate.call_gate(self.peer_id, "fuzz", timeout=SYNC_TIMEOUT * 2))
        whisper = asyncio.ensure_future(recv_until(
            self.inbox, lambda m: len(m) >= 6 and m[3] == b"\x03" and m[4] == b"Gate" and m[5] in gate.gate_replies))
        await asyncio.wait((call, whisper), return_when=asyncio.FIRST_COMPLETED)
        if not whisper.done() and self._dropped_during(call):
            # a LEAVE earlier in the batch reached the gate after the call started:
            # it banned us, closed its connection (the WHISPER went with it) and
            # failed the call in flight, as it must
            whisper.cancel()
            await asyncio.gather(whisper, return_exceptions=True)
            return
        req = await whisper
        if req is None:
            call.cancel()
            ended = f" (the call ended with {call.exception()!r})" if call.done() and not call.cancelled() else ""
            raise FuzzFailure(f"gate: call_gate sent no WHISPER{ended}")
        rid = req[5]
        head = [b"", GATE01, b"\x03", b"Gate", rid]
        if body:
            await self.dealer.send_multipart(head + list(body))
            if body[0] == STREAM_TAG:
                await self.dealer.send_multipart(head + [STREAM_TAG, STREAM_END])
        await self.dealer.send_multipart(head + [msg_pack({"result": 1, "exception": None})])
        done, _ = await asyncio.wait((call,), timeout=SYNC_TIMEOUT)
        if not done:
            call.cancel()
            raise FuzzFailure("gate: call_gate did not end after its reply")
        if call.exception() is None and hasattr(call.result(), "__aiter__"):
            async def drain(stream: Any) -> None:
                try:
                    async for _ in stream:
                        pass
                except Exception:  # noqa: BLE001 - garbage may end the stream with an error
                    pass
            try:
                await asyncio.wait_for(drain(call.result()), SYNC_TIMEOUT)
            except asyncio.TimeoutError:
                raise FuzzFailure("gate: a stream from call_gate did not end after its end tag") from None
        elif isinstance(call.exception(), (asyncio.TimeoutError, TimeoutError)):
            raise FuzzFailure(f"gate: call_gate ended with {call.exception()!r}")
        if rid in gate.gate_replies or rid in gate._gate_streams:
            raise FuzzFailure("gate: a finished call_gate is still pending")

    def _dropped_during(self, call: asyncio.Future[Any]) -> bool:
        """True when ``call`` failed (not by timeout) because the gate dropped our peer."""
        if not call.done() or call.cancelled() or self.peer_id in self.role.gate_cluster.workers:
            return False
        exc = call.exception()
        return exc is not None and not isinstance(exc, (asyncio.TimeoutError, TimeoutError))

    async def _sync(self) -> None:
        await self._join()
        rid = secrets.token_bytes(16)
        await self.dealer.send_multipart([b"", GATE01, b"\x03", b"Gate", rid, *_keepalive_request(rid)])
        got = await recv_until(self.inbox, lambda m: len(m) == 7 and m[3] == b"\x03" and m[5] == rid,
                               timeout=SYNC_TIMEOUT)
        if got is None:
            if self.peer_id not in self.role.gate_cluster.workers:
                return  # the batch made the gate drop us (e.g. a LEAVE right before): fine
            raise FuzzFailure("gate: no answer to a well-formed WHISPER keepalive after the batch")
        if not _ok_keepalive(got[6]):
            raise FuzzFailure(f"gate: a well-formed WHISPER keepalive got {got!r}")

    def _alive(self) -> None:
        self._broker_alive(self.role)
        lg = self.role._lgate
        if lg is None or lg.closed or self.role.gate is None or self.role.gate.closed:
            raise FuzzFailure("gate: the gate socket is closed")


class ZapEndpoint(Endpoint):
    """The ZAP service, fuzzed by a broker DEALER."""

    name = "zap"
    role: AsyncZAPService

    async def _start(self) -> None:
        from gaterpc.zap import AsyncZAPService

        zap = AsyncZAPService(addr=self.addr("zap"), context=self.ctx)
        self._stack.append(zap.stop)
        zap.start()
        self.role = zap
        self.dealer = self.sock(zmq.DEALER)
        self.dealer.connect(self.addr("zap"))
        await asyncio.sleep(0)

    async def _send(self, batch: list[Any]) -> None:
        for msg in batch:
            if msg:
                await self.dealer.send_multipart(msg)

    async def _sync(self) -> None:
        rid = b"sync-" + secrets.token_bytes(16)
        await self.dealer.send_multipart([b"", b"1.0", rid, b"gate", b"peer", b"peer", b"NULL"])
        got = await recv_until(self.dealer, lambda m: len(m) == 7 and m[2] == rid)
        if got is None:
            raise FuzzFailure("zap: no answer to a well-formed request after the batch")
        if got[3] != b"200":
            raise FuzzFailure(f"zap: a well-formed NULL request got {got!r}")

    def expected_error(self, record: logging.LogRecord) -> bool:
        # malformed requests are reported at ERROR, as pyzmq's Authenticator does
        return record.name == "gaterpc.zap" and record.getMessage().startswith(
            ("Invalid ZAP", "Invalid PLAIN", "Invalid CURVE", "Invalid GSSAPI", "Not enough information"))

    def _alive(self) -> None:
        z = self.role
        if z._recv_task is None or z._recv_task.done():
            raise FuzzFailure(f"zap: the service task ended: {z._recv_task!r}")
        if z._lsock is None or z._lsock.closed or z.zap_socket is None or z.zap_socket.closed:
            raise FuzzFailure("zap: its socket is closed")


ENDPOINTS = {cls.name: cls for cls in (FrontendEndpoint, BackendEndpoint, WorkerEndpoint,
                                       ClientEndpoint, GateEndpoint, ZapEndpoint)}
