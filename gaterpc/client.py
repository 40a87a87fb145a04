"""Client side: ``Client``, ``SimpleClient`` and the dot-call proxy.

Frames: docs/PROTOCOL.md, "Client and broker".

``Client`` sends each call as one request message and keeps a Future per
request id.  A call is one coroutine (``knock`` or the dot-call): it encodes
the request, queues it and awaits the Future; the requests queued during
one event-loop iteration leave together right after it (one callback per
burst, not per call), so the broker gets them in batches.  Request ids are
16 bytes: 8 random bytes drawn once per client and a 64-bit counter.
Replies are read in batches from the socket's event-loop callback and
resolve their Futures there (no task per reply).  Deadlines replace one
timer per call: a single call's deadline is appended to a deque (in order,
since every call has the same ``reply_timeout``), streams and HugeData
replies (whose deadline moves with each chunk) use a request table, and a
single maintenance task (``_recv_task``) sweeps both, sends keepalives and
watches the broker's liveness.

Losing the broker.  Every pending call, open stream and HugeData result
fails with ``BrokerUnavailableError`` (a ``TimeoutError``) as soon as the
client knows the broker is gone:

* tcp/ipc: a ZeroMQ socket monitor on the DEALER (a second, inproc PAIR
  socket read by its own ``LoopSocket``; nothing per message) reports
  ``EVENT_DISCONNECTED``, and the client gives up the connection at once;
* any transport (a hung broker, inproc, nobody listening at connect): the
  maintenance task sends the broker's internal ``keepalive`` whenever nothing
  was *received* for one heartbeat (any reply proves the broker alive; no
  Future is kept for it), and gives up after ``heartbeat x liveness`` of
  silence.

The next call on the same client connects again with a new socket.  A
client binds to the running loop at its first use (``_bind_loop``), so it
may be built outside one.

Differences from the original: user keyword arguments named
``service_name``/``func_name`` pass through; finished, failed and
abandoned streams leave ``client.replies``; a client can reconnect after
the broker went offline or after ``close()``; a ``connect()`` timeout
does not poison later calls; a service unknown to the client's list is
looked up once more before ``AttributeError``; HugeData transfers have
a per-chunk timeout; ``SimpleClient`` honours ``reply_timeout``;
a lost broker fails calls within ``heartbeat x liveness`` instead of
``reply_timeout``; large HugeData results are decoded in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import sys
import uuid
from collections import deque
from typing import Any, Deque, Mapping, Optional, Sequence, Union

import zmq
from zmq import constants as z_const

from gaterpc.base import Context, check_zap_args, new_socket, set_ctx, set_sock, zap_frames_of
from gaterpc.base import live_context, own_context, release_context
from gaterpc.counters import count_drop
from gaterpc.exceptions import BrokerUnavailableError, RemoteException
from gaterpc.global_settings import Settings
from gaterpc.client_replies import INLINE_DECODE_MAX, _remote_error, _ReplyHandler  # noqa: F401 (re-exported)
from gaterpc.calls import _EMPTY_MAP, _RID, _CallSender, _plain_future_loop
from gaterpc.helpers import check_socket_addr, name2uuid
from gaterpc.hugedata import HugeDataReceiver
from gaterpc.loopio import LoopSocket
from gaterpc.protocol import KEEPALIVE_ARG, OWN_RID_COUNTER_BASE, ZERO_COPY_MIN
from gaterpc.serialization import msg_pack, msg_unpack
from gaterpc.streams import StreamReply
from gaterpc._speedups.reqtable import RequestTable

__all__ = ("Client", "SimpleClient", "_RemoteMethodProxy")

Clogger = logging.getLogger("gaterpc.client")

_TIMEOUT_MESSAGE = "Timeout while requesting the Majordomo service."

_KEEPALIVE_FUNC = msg_pack("keepalive")
_KEEPALIVE_ARGS = msg_pack((KEEPALIVE_ARG,))
_EVENT_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)


if sys.version_info >= (3, 11):
    # The builtin, as the original raises (it is also asyncio.TimeoutError).
    ReplyTimeout = TimeoutError
else:  # pragma: no cover - exercised on 3.10 only
    class ReplyTimeout(TimeoutError, asyncio.TimeoutError):
        """A reply did not arrive in time (also an ``asyncio.TimeoutError``)."""




class _RemoteMethodProxy:
    """``client.Service.method`` / ``client.method``: an immutable call path."""

    __slots__ = ("_client", "_service", "_func")

    def __init__(
        self, client: Union[Client, SimpleClient], service: Optional[str] = None, func: Optional[str] = None
    ) -> None:
        object.__setattr__(self, "_client", client)
        object.__setattr__(self, "_service", service)
        object.__setattr__(self, "_func", func)

    # Slots, declared for type checkers (set with object.__setattr__ above).
    _client: Union[Client, SimpleClient]
    _service: Optional[str]
    _func: str  # every proxy that is called was built with a name (by __getattr__)

    def __getattr__(self, name: str) -> _RemoteMethodProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        service = self._func if self._service is None else f"{self._service}.{self._func}"
        return _RemoteMethodProxy(self._client, service, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("remote method proxies are immutable")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client._invoke_remote(self._service, self._func, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self._service or '<default>'}.{self._func}>"


class Client(_ReplyHandler, _CallSender):
    """Asynchronous client of a broker frontend (DEALER socket)."""

    def __init__(self, broker_addr: Optional[str] = None, identity: Optional[str] = None,
                 context: Optional[zmq.Context[Any]] = None, heartbeat: Optional[int] = None,
                 reply_timeout: Optional[float] = None, zap_mechanism: Union[str, bytes, None] = None,
                 zap_credentials: Optional[Sequence[Union[str, bytes]]] = None) -> None:
        self._broker_addr = broker_addr
        zap_mechanism, zap_credentials = check_zap_args(zap_mechanism, zap_credentials)  # fails before ctx
        identity = identity or f"gc-{secrets.token_hex(8)}"
        self.identity = name2uuid(identity).bytes
        self.ready: Optional[asyncio.Future[bool]] = None
        # a context made here is the client's own: close() terminates it (connect() makes a new one)
        self.ctx: zmq.Context[Any] = own_context(self, context)
        set_ctx(self.ctx)
        self.socket: Optional[zmq.Socket[bytes]] = None
        self.heartbeat = heartbeat or Settings.MDP_HEARTBEAT_INTERVAL
        self.heartbeat_liveness = Settings.MDP_HEARTBEAT_LIVENESS
        self.last_message_sent_time = 0.0
        self.reply_timeout = float(reply_timeout or Settings.REPLY_TIMEOUT)
        self.replies: dict[bytes, asyncio.Future[Any]] = {}
        self.stream_reply_maxsize = Settings.STREAM_REPLY_MAXSIZE
        self.default_service = Settings.SERVICE_DEFAULT_NAME
        self.zap_frames, self._zap_frames_bytes = zap_frames_of(zap_mechanism, zap_credentials)
        # Bound to the running loop at first use (a Client may be built before
        # ``asyncio.run``), see ``_bind_loop``.
        self._loop: Optional[asyncio.AbstractEventLoop]
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._recv_task: Optional[asyncio.Task[None]] = None
        self._remote_services: set[str] = set()
        self._poller: object = None
        self._heartbeat_task: Optional[asyncio.Task[Any]] = None
        self._executor: object = None
        self._process_replies_tasks: set[asyncio.Task[Any]] = set()
        self._lsock: Optional[LoopSocket] = None
        self._is_ready = False
        self._last_recv = 0.0
        # Deadlines.  A single call's deadline goes to ``_deadlines`` (flat pairs
        # deadline, request id: no tracked object per call), in order as long as
        # ``reply_timeout`` stays the same; a call that would break the order, and
        # every stream and HugeData reply (each chunk moves its deadline), is kept
        # in ``_table``.  Answered calls leave stale pairs, dropped in bulk.
        self._table = RequestTable()
        self._deadlines: Deque[Any] = deque()
        self._last_deadline = 0.0
        self._outbox: list[Sequence[bytes]] = []
        self._plain_loop = _plain_future_loop(self._loop)
        self._streams: dict[bytes, StreamReply] = {}
        # figures read by gaterpc.metrics; the latency histogram is kept only once the
        # client is registered there (service -> [bucket counts], count, sum)
        self._stat_calls = 0
        self._rid_prefix = secrets.token_bytes(8)
        self._rid_next = OWN_RID_COUNTER_BASE  # the mark of our ids (gaterpc.protocol)
        self._stat_errors = 0
        self._latency: Optional[dict[str, list[Any]]] = None
        self._huge: dict[bytes, HugeDataReceiver] = {}
        self._service_cache: dict[str, bytes] = {}
        self._func_cache: dict[str, bytes] = {}
        self._header = Settings.MDP_CLIENT
        self._internal_name = Settings.MDP_INTERNAL_SERVICE
        self._monitor: Optional[LoopSocket] = None  # LoopSocket of the DEALER's monitor (tcp/ipc)
        self._addr: Optional[str] = None            # the address of the current connection
        self._last_probe = 0.0
        self._probe_id: Optional[bytes] = None      # request id of the last keepalive probe
        self._lost: Optional[BrokerUnavailableError] = None  # why the last connection was given up

    # -- the dot-call namespace -------------------------------------------------

    def __getattr__(self, name: str) -> _RemoteMethodProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return _RemoteMethodProxy(self, None, name)

    def _invoke_remote(
        self, service: Optional[str], func: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Any:
        return self._call(service or self.default_service, func, args, kwargs)

    # -- connection -------------------------------------------------------------

    async def connect(self, broker_addr: Optional[str] = None) -> None:
        """Connect to the broker and fetch its service list.

        Raises ``BrokerUnavailableError`` (a ``TimeoutError``) when the broker
        does not answer within ``heartbeat x liveness``.
        """
        loop = self._bind_loop()
        task = self._recv_task
        if task is not None and not task.done():
            raise RuntimeError("Broker is connected.")
        if broker_addr:
            self._broker_addr = broker_addr
        if not self._broker_addr:
            raise ValueError("no broker address: give one to Client() or to connect()")
        addr = check_socket_addr(self._broker_addr)
        self._close_sockets()
        self.ctx = live_context(self, self.ctx)
        sock = new_socket(self.ctx, zmq.DEALER, {z_const.IDENTITY: self.identity})
        self._monitor = self._open_monitor(sock, addr, loop)
        sock.connect(addr)
        self.socket = sock
        self._addr = addr
        self._lost = None
        self._header = Settings.MDP_CLIENT
        self._internal_name = Settings.MDP_INTERNAL_SERVICE
        self._lsock = LoopSocket(loop, sock, self._on_messages, on_error=self._on_socket_error,
                                 recv_nocopy_min=ZERO_COPY_MIN)
        self.ready = loop.create_future()
        self._is_ready = False
        self._last_recv = self._last_probe = loop.time()
        self._recv_task = loop.create_task(self._recv())
        await self._fetch_services()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop; the client binds to it at its first use there.

        State left from a connection on another (finished) loop is dropped
        without touching that loop's futures.
        """
        loop = asyncio.get_running_loop()
        old = self._loop
        if old is not loop:
            self._loop = loop
            self._plain_loop = _plain_future_loop(loop)
            if old is not None:
                self._recv_task = None
                self._close_sockets()
                for receiver in self._huge.values():
                    receiver.close()
                self.replies.clear()
                self._streams.clear()
                self._huge.clear()
                self._table.clear()
                self._deadlines.clear()
                self._last_deadline = 0.0
                self.ready = None
                self._is_ready = False
        return loop

    def _open_monitor(
        self, sock: zmq.Socket[bytes], addr: str, loop: asyncio.AbstractEventLoop
    ) -> Optional[LoopSocket]:
        """Watch ``sock`` for a lost connection (tcp/ipc; inproc has no such events)."""
        if addr.startswith("inproc://"):
            return None
        maddr = f"inproc://gaterpc.client-monitor.{secrets.token_hex(8)}"
        mon: Optional[zmq.Socket[bytes]] = None
        try:
            sock.monitor(maddr, zmq.EVENT_DISCONNECTED)
            mon = self.ctx.socket(zmq.PAIR, socket_class=zmq.Socket)
            mon.setsockopt(zmq.LINGER, 0)
            mon.connect(maddr)
            return LoopSocket(loop, mon, self._on_monitor)
        except zmq.ZMQError as exc:  # liveness probing still detects a lost broker
            Clogger.warning("cannot monitor the broker connection: %s", exc)
            if mon is not None:
                mon.close(linger=0)
            return None

    def _on_monitor(self, msgs: Sequence[Sequence[bytes]]) -> None:
        for msg in msgs:
            if len(msg) == 2 and len(msg[0]) >= 2 and struct.unpack_from("=H", msg[0])[0] == _EVENT_DISCONNECTED:
                # Requests in flight cannot be answered over a connection the broker lost.
                self._lose("peer disconnected")
                return

    def _lose(self, cause: str) -> None:
        """Give up the connection now: every pending call fails with ``BrokerUnavailableError``."""
        loop = self._loop
        assert loop is not None  # a connection exists only on a bound loop
        waited = loop.time() - self._last_recv
        task = self._recv_task
        self._recv_task = None
        if task is not None and not task.done():
            task.cancel()
        Clogger.warning("connection to broker %s lost (%s)", self._addr, cause)
        self._teardown(cause, waited=waited, lost=True)
        self.ready = None

    async def _fetch_services(self) -> None:
        ready = self.ready
        try:
            services = await self._request(self._internal_name, "get_services", (), None)
        except BrokerUnavailableError:
            if ready is not None and not ready.done():
                ready.set_result(False)
            raise
        except ReplyTimeout:
            if ready is not None and not ready.done():
                ready.set_result(False)
            raise ReplyTimeout(_TIMEOUT_MESSAGE) from None
        except BaseException:
            # e.g. a RemoteException (refused credentials): waiting calls must
            # not hang on ``ready``; the next call tries again.
            if ready is not None and not ready.done():
                ready.set_result(False)
            raise
        self._remote_services = {s for s in services if isinstance(s, str)} if isinstance(services, list) else set()
        self._is_ready = True
        if ready is None or ready.done():
            loop = self._loop
            assert loop is not None  # bound by connect()
            ready = self.ready = loop.create_future()
        ready.set_result(True)

    async def _ensure_ready(self) -> None:
        self._bind_loop()
        task = self._recv_task
        if task is None or task.done():
            if not self._broker_addr:
                raise RuntimeError("Gate service not yet ready.")
            await self.connect()
            return
        ready = self.ready
        if ready is None:
            raise RuntimeError("Gate service not yet ready.")
        if not ready.done():
            try:
                await asyncio.wait_for(asyncio.shield(ready), self.reply_timeout)
            except asyncio.TimeoutError:
                raise RuntimeError("waiting for Gate service timed out") from None
        if not self._is_ready:
            if self._lsock is None:
                lost = self._lost
                if lost is not None:  # the connect this call waited for failed
                    raise BrokerUnavailableError(lost.address, lost.waited, lost.cause)
                raise RuntimeError("Gate service not yet ready.")
            await self._fetch_services()

    async def disconnect(self) -> None:
        """Close the socket (the maintenance task keeps running)."""
        self._close_sockets()

    def close(self) -> None:
        """Stop the client; it can be connected again later.

        A context the client made itself (no ``context=``) is terminated; a
        context passed in stays open.
        """
        task = self._recv_task
        self._recv_task = None
        if task is not None and not task.done():
            task.cancel()
        self._teardown("the client was closed")
        self.ready = None
        self._is_ready = False
        release_context(self, self.ctx)

    def _close_sockets(self) -> None:
        self._outbox = []  # requests not sent yet: their calls fail with the connection
        mon = self._monitor
        self._monitor = None
        lsock = self._lsock
        self._lsock = None
        self.socket = None
        if mon is not None:
            # Stop the monitor while its reader is still connected, with room in
            # the pipe: libzmq's I/O thread sends each event with a blocking send
            # while holding the monitor's lock, so an event sent after the reader
            # is gone (or into a full pipe) blocks it for good, and with it
            # disable_monitor().
            if lsock is not None and not lsock.closed:
                try:
                    for _ in range(64):  # bounded: events keep coming only while connecting
                        if not mon.io.recv_batch(1024):
                            break
                    lsock.socket.disable_monitor()
                except zmq.ZMQError:
                    pass
            mon.close()
        if lsock is not None:
            lsock.close()

    def _teardown(self, reason: str, waited: Optional[float] = None, lost: bool = False) -> None:
        """Close the connection and fail every pending request.

        ``lost``: the broker is gone (``reason`` is the cause): the requests
        fail with ``BrokerUnavailableError``; otherwise (the client was
        closed) with the original's ``TimeoutError``.
        """
        self._close_sockets()
        self._is_ready = False
        self._remote_services = set()
        pending = list(self.replies)
        if lost:
            addr = self._addr or self._broker_addr or ""
            self._lost = BrokerUnavailableError(addr, waited, reason)
            n = len(pending)
            for rid in pending:
                count_drop("client_broker_lost")
                self._fail(rid, BrokerUnavailableError(addr, waited, reason, n))
        else:
            err = ReplyTimeout(f"{_TIMEOUT_MESSAGE} ({reason})")
            for rid in pending:
                self._fail(rid, err)
        self._table.clear()
        self._deadlines.clear()
        self._last_deadline = 0.0

    def _on_socket_error(self, exc: BaseException) -> None:
        Clogger.error("client socket failed: %s", exc)

    # -- calls ------------------------------------------------------------------

    async def knock(self, service_name: str, func_name: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``service_name.func_name(*args, **kwargs)`` remotely."""
        # The body of ``_call``, repeated so that a call is one coroutine, not two.
        rid = self._send_request(service_name, func_name, args, kwargs, True)
        if rid is None:
            return await self._call_slow(service_name, func_name, args, kwargs)
        t0 = self.last_message_sent_time
        try:
            result = await self.replies[rid]
        except BaseException:
            self._call_failed(rid, service_name, t0)
            raise
        if self._latency is not None:
            self._observe(service_name, t0)
        return result

    async def _call(
        self, service_name: Optional[str], func_name: str, args: Sequence[Any], kwargs: Optional[Mapping[str, Any]]
    ) -> Any:
        rid = self._send_request(service_name, func_name, args, kwargs, True)
        if rid is None:
            return await self._call_slow(service_name, func_name, args, kwargs)
        t0 = self.last_message_sent_time
        try:
            result = await self.replies[rid]
        except BaseException:
            self._call_failed(rid, service_name, t0)
            raise
        if self._latency is not None:
            self._observe(service_name, t0)
        return result

    def _expire(self, now: float) -> None:
        """Fail every call whose deadline passed with ``ReplyTimeout``."""
        expired = self._table.expire(now)
        for request_id, _ in expired:
            self._fail(request_id, ReplyTimeout(_TIMEOUT_MESSAGE))
        dl = self._deadlines
        replies = self.replies
        table = self._table
        while dl and dl[0] <= now:
            dl.popleft()
            rid = dl.popleft()
            # Answered calls are gone from ``replies``; streams and HugeData
            # replies in progress have their own (moving) deadline in ``table``.
            if rid in replies and rid not in table:
                self._fail(rid, ReplyTimeout(_TIMEOUT_MESSAGE))

    async def _call_slow(
        self, service_name: Optional[str], func_name: str, args: Sequence[Any], kwargs: Optional[Mapping[str, Any]]
    ) -> Any:
        """A call that first connects, waits for the broker or looks its service up."""
        if not self._is_ready:
            await self._ensure_ready()
        if not service_name:
            service_name = self.default_service
        if service_name not in self._remote_services:
            await self._get_services()
            if service_name not in self._remote_services:
                raise AttributeError(f'The remote service named "{service_name}" was not found.')
        if len(self.replies) >= Settings.MESSAGE_MAX:
            message = (f"The number({len(self.replies)}) of pending requests has exceeded the cache "
                       f"limit for the requesting task. The limit is {Settings.MESSAGE_MAX} requests.")
            if Settings.SECURE:
                raise RuntimeError(message)
            Clogger.warning(message)
        return await self._request(service_name, func_name, args, kwargs)

    async def _request(
        self, service_name: str, func_name: str, args: Sequence[Any], kwargs: Optional[Mapping[str, Any]]
    ) -> Any:
        """Send one request and wait for its reply (the value, a stream or HugeData)."""
        rid = self._send_request(service_name, func_name, args, kwargs)
        assert rid is not None  # not the fast path: always sent
        t0 = self.last_message_sent_time
        try:
            result = await self.replies[rid]
        except BaseException:
            self._call_failed(rid, service_name, t0)
            raise
        if self._latency is not None:
            self._observe(service_name, t0)
        return result

    async def _majordomo_service(self, func_name: str, *args: Any, **kwargs: Any) -> Any:
        return await self._request(self._internal_name, func_name, args, kwargs)

    async def _get_services(self) -> None:
        if self._lsock is None:
            return
        try:
            services = await self._request(self._internal_name, "get_services", (), None)
        except BrokerUnavailableError:
            raise
        except (ReplyTimeout, RemoteException):
            return
        if isinstance(services, list):
            self._remote_services = {s for s in services if isinstance(s, str)}

    async def _query_service(self, service_name: str) -> Any:
        return await self._request(self._internal_name, "query_service", (service_name,), None)

    async def _send_heartbeat(self) -> None:
        await self._request(self._internal_name, "keepalive", (KEEPALIVE_ARG,), None)

    def _probe(self, now: float) -> None:
        """Send the broker's internal ``keepalive``; any reply proves it alive (no Future kept)."""
        lsock = self._lsock
        self._last_probe = now
        n = self._rid_next
        self._rid_next = n + 1
        rid = _RID.pack(self._rid_prefix, n)
        self._probe_id = rid
        service_b = self._internal_name.encode("utf-8")
        zap = self._zap_frames_bytes
        if zap:
            frames = (b"", self._header, service_b, *zap, rid, _KEEPALIVE_FUNC, _KEEPALIVE_ARGS, _EMPTY_MAP)
        else:
            frames = (b"", self._header, service_b, rid, _KEEPALIVE_FUNC, _KEEPALIVE_ARGS, _EMPTY_MAP)
        if lsock is not None:
            lsock.send(frames)

    # -- maintenance --------------------------------------------------------------

    async def _recv(self) -> None:
        loop = self._loop
        assert loop is not None  # started by connect() on the bound loop
        interval = self.heartbeat / 1000
        liveness_span = interval * self.heartbeat_liveness
        sweep = max(0.01, min(0.1, self.reply_timeout / 20, interval / 4))
        reason = "the client was closed"
        waited: Optional[float] = None
        try:
            while True:
                slept = loop.time()
                await asyncio.sleep(sweep)
                now = loop.time()
                late = now - slept - sweep
                if late > sweep:
                    # our loop stalled: the broker's replies may sit unread, so the
                    # stall does not count as the broker's silence
                    self._last_recv += late
                self._expire(now)
                if self._lsock is None or self._lsock.closed:
                    reason = "the connection was closed"
                    break
                # Liveness keys on what was *received*: a client that keeps
                # sending but hears nothing still probes, and gives up after
                # heartbeat x liveness of silence.
                silence = now - self._last_recv
                if silence >= liveness_span:
                    Clogger.warning("Majordomo offline: no reply from broker %s within %.1f s",
                                    self._addr, silence)
                    reason = "no reply"
                    waited = silence
                    break
                if silence >= interval and now - self._last_probe >= interval:
                    self._probe(now)
        finally:
            # After close() or a lost connection the task is no longer ours to
            # clean: that already happened, and a new connection may be in place.
            if self._recv_task is asyncio.current_task():
                self._teardown(reason, waited=waited, lost=waited is not None)
                self.ready = None

    def _cleanup_process_tasks(self, task: asyncio.Task[Any]) -> None:
        self._process_replies_tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a lost keepalive is not an error

    def _clear_reply(self, request_id: bytes) -> None:
        self._forget(request_id)




class SimpleClient:
    """Blocking client on a REQ socket, for tests and small single-value calls.

    Returns the raw reply envelope ``{"result": ..., "exception": ...}``
    (remote errors are not raised), as the original.
    """

    def __init__(self, broker_addr: str, reply_timeout: Optional[float] = None,
                 zap_mechanism: Union[str, bytes, None] = None,
                 zap_credentials: Optional[Sequence[Union[str, bytes]]] = None) -> None:
        self.socket: Optional[zmq.Socket[bytes]] = None
        self.ctx: Optional[zmq.Context[zmq.Socket[bytes]]] = None
        self._broker_addr = check_socket_addr(broker_addr)
        self.identity = name2uuid(f"sgc-{secrets.token_hex(8)}").bytes
        zap_mechanism, zap_credentials = check_zap_args(zap_mechanism, zap_credentials)
        self.zap_frames, self._zap_frames_bytes = zap_frames_of(zap_mechanism, zap_credentials)
        self.reply_timeout = reply_timeout or Settings.REPLY_TIMEOUT
        self.ctx = zmq.Context()
        self._open()

    def _open(self) -> None:
        ctx = self.ctx
        assert ctx is not None  # set by __init__ before the first _open
        self.socket = sock = ctx.socket(zmq.REQ)
        set_sock(sock, {z_const.IDENTITY: self.identity})
        sock.connect(self._broker_addr)

    def __getattr__(self, name: str) -> _RemoteMethodProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return _RemoteMethodProxy(self, None, name)

    def _invoke_remote(
        self, service: Optional[str], func: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Any:
        service = service or Settings.SERVICE_DEFAULT_NAME
        sock = self.socket
        assert sock is not None  # open from __init__ on
        request_id = uuid.uuid4().bytes
        frames = [Settings.MDP_CLIENT, service.encode("utf-8"), *self._zap_frames_bytes, request_id,
                  msg_pack(func), msg_pack(args), msg_pack(kwargs)]
        sock.send_multipart(frames)
        if not sock.poll(int(self.reply_timeout * 1000)):
            # A REQ socket cannot send again before it receives: start afresh.
            sock.close(linger=0)
            self._open()
            raise ReplyTimeout(_TIMEOUT_MESSAGE)
        reply = sock.recv_multipart()
        if len(reply) < 3 or reply[2] != request_id:
            raise RuntimeError("request_id inconsistent")
        body = reply[3:]
        if not body:
            return None
        if len(body) > 1:
            raise RuntimeError("Does not support streaming data.")
        return msg_unpack(body[0])

    def _close(self) -> None:
        sock = getattr(self, "socket", None)
        if sock is not None and not sock.closed:
            sock.close(linger=0)
        ctx = getattr(self, "ctx", None)
        if ctx is not None and not ctx.closed:
            ctx.term()

    def __del__(self) -> None:
        try:
            self._close()
        except Exception:
            pass
