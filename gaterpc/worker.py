"""Worker side: ``Worker`` and ``Service`` (``RemoteWorker`` is re-exported from :mod:`gaterpc.bookkeeping`).

A worker connects a DEALER socket to the broker backend, sends READY and
then serves REQUEST messages.  Messages are read in batches from the
socket's event-loop callback; plain synchronous methods run and reply right
there, coroutine methods too up to their first suspension (a task continues
those that suspend; see :mod:`gaterpc.execute`), executor methods in their executor,
generators and HugeData in a transfer task (see :mod:`gaterpc.execute`).

Differences from the original: malformed requests, unknown
methods, ``__`` keyword arguments and unencodable results are answered with
an error reply instead of being dropped (generic text under
``Settings.SECURE``); ``@interface("process")`` runs the method's function in
the process pool with a stand-in ``self`` (``execute.DetachedSelf``) instead
of failing to pickle the worker; on ``stop()`` the worker tells the broker
with a DISCONNECT so that in-flight callers learn at once; ``close()`` shuts
down only executors the worker created itself.  Our broker may send CANCEL
(``06``) for a request whose caller vanished or cannot keep up: the worker
cancels that request's task (coroutine, stream, HugeData transfer) and sends
nothing more for it.  It may send CREDIT (``07``) for a HugeData transfer to
a client of ours: the transfer then keeps at most
``Settings.HUGE_DATA_WINDOW`` bytes beyond the client's progress on their
way (:meth:`gaterpc.execute.Runner.credit`).

Reconnection (also a difference): a worker whose broker goes silent for
heartbeat x liveness, or that gets a plain DISCONNECT from the broker (broker
shutdown, or "I do not know you" after a broker restart), closes its socket
and registers again on a new one, with capped exponential backoff and
jitter.  ``worker._reconnect = False`` restores the original's behaviour
(the worker stops).  See :class:`Worker`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, AsyncIterator, Coroutine, Optional, Sequence, TypeVar, Union, overload

import zmq
from zmq import constants as z_const

from gaterpc.base import (
    ABCService, ABCWorker, Context, check_zap_args, current_loop, new_socket, own_executors, set_ctx,
    shutdown_own_executors, zap_frames_of,
)
from gaterpc.base import hold_loop, live_context, own_context, release_context, release_loop
from gaterpc.bookkeeping import RemoteWorker, ServiceCapacity
from gaterpc.exceptions import ServiceUnAvailableError
from gaterpc.execute import Runner, collect_interfaces
from gaterpc.global_settings import Settings
from gaterpc.helpers import check_socket_addr, interface, name2uuid, to_bytes
from gaterpc.loopio import LoopSocket
from gaterpc.protocol import CANCEL, CREDIT, DISCONNECT, HEARTBEAT, READY, REPLY, REQUEST, ZERO_COPY_MIN
from gaterpc.wire import decode_request

if TYPE_CHECKING:
    from gaterpc.hugedata import HugeData

__all__ = ("Worker", "Service", "RemoteWorker")

Wlogger = logging.getLogger("gaterpc.worker")

_W = TypeVar("_W", bound="Worker")
#: ZAP arguments as the roles accept them (see :func:`gaterpc.base.check_zap_args`)
_Mechanism = Union[str, bytes, None]
_Credentials = Optional[Sequence[Union[str, bytes]]]


class Service(ServiceCapacity, ABCService):
    """A named service: describes workers on the worker side, balances them in the broker.

    One class for both sides, as in the original: ``Service(name=...)
    .create_worker(...)`` builds workers, and the broker keeps one per
    service name (``AMajordomo.RemoteServiceClass``) with the capacity
    bookkeeping of :class:`gaterpc.bookkeeping.ServiceCapacity`.
    """

    def __init__(self, name: Optional[str] = None, description: str = "gate-rpc service") -> None:
        self.name = name or Settings.SERVICE_DEFAULT_NAME
        self.description = description
        self.workers: dict[bytes, Any] = {}
        # Kept for code written for the original; nothing reads or fills it any more
        # (the broker balances with ``_ready``).
        self.idle_workers: asyncio.Queue[bytes] = asyncio.Queue()
        self.running = False
        self._init_capacity()

    @overload
    def create_worker(self, worker_class: None = None, workers_addr: Optional[str] = None,
                      workers_heartbeat: Optional[int] = None, context: Optional[zmq.Context[Any]] = None,
                      zap_mechanism: _Mechanism = None, zap_credentials: _Credentials = None,
                      max_allowed_request: Optional[int] = None,
                      thread_executor: Optional[ThreadPoolExecutor] = None,
                      process_executor: Optional[ProcessPoolExecutor] = None) -> Worker: ...

    @overload
    def create_worker(self, worker_class: type[_W], workers_addr: Optional[str] = None,
                      workers_heartbeat: Optional[int] = None, context: Optional[zmq.Context[Any]] = None,
                      zap_mechanism: _Mechanism = None, zap_credentials: _Credentials = None,
                      max_allowed_request: Optional[int] = None,
                      thread_executor: Optional[ThreadPoolExecutor] = None,
                      process_executor: Optional[ProcessPoolExecutor] = None) -> _W: ...

    def create_worker(self, worker_class: Optional[type[Worker]] = None, workers_addr: Optional[str] = None,
                      workers_heartbeat: Optional[int] = None, context: Optional[zmq.Context[Any]] = None,
                      zap_mechanism: _Mechanism = None, zap_credentials: _Credentials = None,
                      max_allowed_request: Optional[int] = None,
                      thread_executor: Optional[ThreadPoolExecutor] = None,
                      process_executor: Optional[ProcessPoolExecutor] = None) -> Worker:
        """Create a worker of this service (not started: call ``worker.run()``)."""
        worker_class = worker_class or Worker
        worker = worker_class(
            workers_addr or Settings.WORKER_ADDR,
            self,
            identity=f"{self.name}Worker-{secrets.token_hex(8)}",
            heartbeat=workers_heartbeat or Settings.MDP_HEARTBEAT_INTERVAL,
            context=context,
            zap_mechanism=zap_mechanism,
            zap_credentials=zap_credentials,
            max_allowed_request=max_allowed_request,
            thread_executor=thread_executor,
            process_executor=process_executor,
        )
        self.add_worker(worker)
        return worker

    def add_worker(self, worker: Optional[ABCWorker]) -> None:
        """Add a worker (ignored if its identity is known)."""
        if worker is None or worker.identity in self.workers:
            return
        worker.service = self
        self.workers[worker.identity] = worker
        self.running = True
        self._capacity_added(worker)

    def remove_worker(self, worker: Optional[ABCWorker]) -> None:
        """Forget a worker (stopping it if it can be stopped)."""
        if worker is None:
            return
        if self.workers.pop(worker.identity, None) is not None:
            stop = getattr(worker, "stop", None)
            if callable(stop):
                stop()
        if not self.workers:
            self.running = False
        self._capacity_removed(worker)

    def get_workers(self) -> dict[bytes, Any]:
        """The workers of the service (identity → worker)."""
        return self.workers


class Worker(ABCWorker):
    """Base class of RPC servers: subclass it and mark methods with ``@interface``.

    **Reconnection.**  Unlike the original, a worker heals by itself when it
    loses its broker.  It registers again (new DEALER socket, new READY, same
    identity) when

    * the broker has been silent for heartbeat x liveness (the broker died or
      the network broke), or
    * the broker sends a plain DISCONNECT (it shuts down, or it answers a
      worker it does not know, e.g. after a restart).

    A worker that hears nothing for one heartbeat sends a HEARTBEAT of its own,
    so a restarted broker answers it with DISCONNECT and the worker is back
    within about one heartbeat.  Retries wait with capped exponential backoff
    and jitter: the first after about ``min(heartbeat, 1 s)`` (times a random
    factor between 0.5 and 1), doubling up to heartbeat x liveness; the delay
    starts again from the bottom once the broker has accepted the worker.
    Requests running when the connection is lost are cancelled (their replies
    could not reach the new connection).

    It does not reconnect when ``stop()`` is called, nor when the DISCONNECT
    carries a reason frame (our broker refusing the credentials or the READY;
    the reason is logged).  Set ``worker._reconnect = False`` before
    ``run()`` for the original's behaviour: the worker stops for good.
    """

    service: Service
    #: name -> description of the ``@interface`` methods (what ``get_interfaces`` replies)
    interfaces: dict[str, Any]
    thread_executor: ThreadPoolExecutor
    process_executor: ProcessPoolExecutor

    def __init__(self, broker_addr: str, service: Service, identity: Optional[str] = None,
                 heartbeat: Optional[int] = None, context: Optional[zmq.Context[Any]] = None,
                 zap_mechanism: _Mechanism = None, zap_credentials: _Credentials = None,
                 max_allowed_request: Optional[int] = None,
                 thread_executor: Optional[ThreadPoolExecutor] = None,
                 process_executor: Optional[ProcessPoolExecutor] = None) -> None:
        self._broker_addr = check_socket_addr(broker_addr)
        self.service = service
        identity = identity or f"gw{secrets.token_hex(8)}"
        self.identity = name2uuid(identity).bytes
        self.ready = False
        zap_mechanism, zap_credentials = check_zap_args(zap_mechanism, zap_credentials)
        self.zap_frames, self._zap_frames_bytes = zap_frames_of(zap_mechanism, zap_credentials)
        self.heartbeat = heartbeat or Settings.MDP_HEARTBEAT_INTERVAL
        self.heartbeat_liveness = Settings.MDP_HEARTBEAT_LIVENESS
        self.max_allowed_request = max_allowed_request or Settings.MESSAGE_MAX
        self.expiry = 0.0
        # a context (or loop) made here is the worker's own: stop() closes it
        self._ctx: zmq.Context[Any] = own_context(self, context)
        set_ctx(self._ctx)
        self._loop = current_loop(self)
        own_executors(self, thread_executor, process_executor)
        self.requests: set[asyncio.Task[Any]] = set()
        self.sent_tasks: set[asyncio.Task[Any]] = set()
        self._recv_task: Optional[asyncio.Task[None]] = None
        self._reconnect = True
        self._retries = 0  # failed (re)connection rounds since the last accepted registration
        self._socket: Optional[zmq.Socket[bytes]] = None
        self._poller: Any = None
        self._lsock: Optional[LoopSocket] = None
        self._last_recv = 0.0
        # resolved by the receive callback: True = stop for good, False = reconnect
        self._stop_signal: Optional[asyncio.Future[bool]] = None
        self._header: bytes = Settings.MDP_WORKER
        self._reply_prefix: tuple[bytes, ...] = ()
        self._hb_frames: tuple[bytes, ...] = ()
        # replies held back while a received batch is handled (see _on_messages)
        self._out: Optional[list[tuple[bytes, ...]]] = None
        cls = type(self)
        self._dynamic_zap = cls.build_zap_frames is not Worker.build_zap_frames
        # Hooks of the original a subclass overrides are called where the original
        # called them; when none is overridden the receive path never looks at them.
        self._hook_request = cls.process_request is not Worker.process_request
        self._hook_send = cls.send_to_majordomo is not Worker.send_to_majordomo
        self._hook_tasks: set[asyncio.Task[Any]] = set()
        self._runner = Runner(self, self._loop, self._send_reply_body, self._get_lsock, self.requests,
                              self._send_tagged)
        self.interfaces, self._table = collect_interfaces(self)

    # -- public API -----------------------------------------------------------

    def is_alive(self) -> bool:
        """True while connected to the broker."""
        return self.ready

    @interface
    def get_interfaces(self):  # type: ignore[no-untyped-def]  # reply carries the signature text "()"
        # No docstring and no annotation on purpose: the original reports
        # {"doc": None, "signature": "()"} for it, and get_interfaces() replies
        # must be byte-identical (see docs/PROTOCOL.md).
        return self.interfaces

    def _get_interfaces(self) -> dict[str, Any]:
        interfaces: dict[str, Any] = collect_interfaces(self)[0]
        return interfaces

    def build_zap_frames(self) -> Sequence[bytes]:
        """The ZAP frames put in every message to the broker (override for dynamic credentials)."""
        return self._zap_frames_bytes

    def run(self) -> None:
        """Start the receive task (connects, then serves)."""
        if self._recv_task is None:
            self._ctx = live_context(self, self._ctx)
            hold_loop(self, self._loop)
            self._recv_task = self._loop.create_task(self.recv())

    def stop(self) -> None:
        """Cancel the receive task; clean-up happens when the task processes it.

        Then a context the worker made itself (no ``context=``) is
        terminated, and a loop the library made for it is closed when no
        other role uses it and it is not running.
        """
        task = self._recv_task
        self._recv_task = None
        if task is not None and not task.done():
            task.cancel()
            task.add_done_callback(self._release_own)
        else:
            self._release_own()

    def _release_own(self, _task: object = None) -> None:
        task = self._recv_task
        if task is not None and not task.done():
            return  # run() again meanwhile: the worker uses them again
        release_context(self, self._ctx)
        release_loop(self)

    def close(self) -> None:
        """Shut down the executors this worker created (and its own context once stopped)."""
        shutdown_own_executors(self)
        if self._recv_task is None:
            self._release_own()

    async def connect(self) -> None:
        """Connect to the broker and send READY."""
        if self.ready:
            return
        sock = new_socket(self._ctx, zmq.DEALER, {z_const.IDENTITY: self.identity})
        sock.connect(self._broker_addr)
        self._socket = sock
        self._header = Settings.MDP_WORKER
        zap = tuple(self.build_zap_frames() or ())
        self._reply_prefix = (b"", self._header, REPLY) + zap
        self._hb_frames = (b"", self._header, HEARTBEAT) + zap
        self._last_recv = self._loop.time()
        # Large request frames arrive as views of libzmq's buffers (decoded by msgpack
        # without a copy); an overridden process_request gets bytes, as it always did.
        self._lsock = LoopSocket(self._loop, sock, self._on_messages, on_error=self._on_socket_error,
                                 on_over_budget=self._over_budget,
                                 recv_nocopy_min=0 if self._hook_request else ZERO_COPY_MIN)
        sep = Settings.MDP_DESCRIPTION_SEP
        body = f"{self.service.name}{sep}{self.service.description}{sep}{self.max_allowed_request}"
        if self._hook_send:
            await self.send_to_majordomo(READY, messages=body.encode("utf-8"))
        else:
            self._lsock.send((b"", self._header, READY) + zap + (body.encode("utf-8"),))
        self.ready = True

    async def disconnect(self, notify: bool = False) -> None:
        """Close the connection (with ``notify``, tell the broker first)."""
        if not self.ready:
            return
        self.ready = False
        lsock = self._lsock
        self._lsock = None
        self._socket = None
        if lsock is not None:
            if notify and not lsock.closed:
                zap = tuple(self.build_zap_frames() or ())
                lsock.send((b"", self._header, DISCONNECT) + zap + (b"",))
                lsock.close(linger=200)
            else:
                lsock.close()

    async def send_to_majordomo(self, command: Union[bytes, str], option: Optional[Sequence[Any]] = None,
                                messages: Union[bytes, str, Sequence[Any], None] = None) -> None:
        """Send ``['', MDPW01, command, *zap, *option, *messages]`` to the broker.

        Overridable as in the original: when a subclass overrides it, READY,
        the worker's HEARTBEATs and every REPLY (``option`` = ``(client_id,
        b"", request_id)``, ``messages`` = the reply body) go through it, in
        order; ``super().send_to_majordomo(...)`` sends.
        """
        lsock = self._lsock
        if lsock is None:
            return
        if messages is None:
            messages = ()
        elif isinstance(messages, (bytes, str)):
            messages = (messages,)
        frames = [b"", self._header, to_bytes(command), *self.build_zap_frames()]
        frames.extend(to_bytes(f) for f in (option or ()))
        frames.extend(to_bytes(f) for f in messages)
        lsock.send(frames)

    async def send_hugedata(self, option: Sequence[bytes], hugedata: HugeData) -> None:
        """Send a HugeData reply; ``option`` is ``(client_id, b"", request_id)``."""
        await self._runner._send_hugedata(option[0], option[-1], hugedata)

    async def send_agenerator(self, option: Sequence[bytes], agenerator: AsyncIterator[Any]) -> None:
        """Send a stream reply; ``option`` is ``(client_id, b"", request_id)``."""
        await self._runner._send_stream(option[0], option[-1], agenerator)

    async def process_request(self, messages: Sequence[bytes]) -> None:
        """Handle one REQUEST given as ``[client_id, b"", request_id, func, args, kwargs]``.

        Overridable as in the original: when a subclass overrides it, every
        REQUEST from the broker is handed to it in a task of its own (the
        frames after the command); calling ``super().process_request(messages)``
        runs the request.  Without an override, requests are handled inline.
        """
        self._handle_request(list(messages), 0)

    def _spawn_hook(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._hook_tasks.add(task)
        task.add_done_callback(self._hook_done)

    def _hook_done(self, task: asyncio.Task[Any]) -> None:
        self._hook_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            Wlogger.error("overridden hook failed: %r", task.exception())

    def cleanup_sent(self, task: asyncio.Task[Any]) -> None:
        """Done-callback of heartbeat-send tasks."""
        self.sent_tasks.discard(task)

    def cleanup_request(self, task: asyncio.Task[Any]) -> None:
        """Done-callback of request tasks."""
        self.requests.discard(task)
        if not task.cancelled() and task.exception() is not None:
            Wlogger.error("request task failed: %r", task.exception())

    # -- receive loop ---------------------------------------------------------

    async def recv(self) -> None:
        """Connect and serve until stopped; reconnect after a lost broker (see the class doc)."""
        cancelled = False
        try:
            while True:
                final = await self._session()
                await self.disconnect()
                self._cancel_requests()
                if final or not self._reconnect:
                    break
                delay = self._backoff()
                Wlogger.warning("reconnecting to the broker in %.2f s", delay)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self._stop_signal = None
            await self.disconnect(notify=cancelled)
            self._cancel_requests()
            self.close()

    async def _session(self) -> bool:
        """One connection: True if the worker must stop, False if the connection was lost."""
        loop = self._loop
        await self.connect()
        interval = self.heartbeat / 1000
        liveness = self.heartbeat_liveness
        try:
            while True:
                stop: asyncio.Future[bool] = loop.create_future()
                self._stop_signal = stop
                slept = loop.time()
                await asyncio.wait((stop,), timeout=interval)
                if stop.done():
                    return stop.result()
                late = loop.time() - slept - interval
                if late > interval / 4:
                    # our loop stalled: the broker's messages may sit unread, so the
                    # stall does not count as the broker's silence
                    self._last_recv += late
                lsock = self._lsock
                if lsock is None or lsock.closed:
                    return False
                silent = loop.time() - self._last_recv
                if silent >= interval * liveness:
                    Wlogger.warning("Majordomo offline")
                    return False
                if silent >= interval * 0.9:
                    # The broker is late: say we are here.  A broker that does not
                    # know us (it restarted) answers DISCONNECT, and we register again.
                    self._send_heartbeat(lsock)
        finally:
            self._stop_signal = None

    def _backoff(self) -> float:
        """Seconds to wait before the next connection attempt."""
        base = min(self.heartbeat / 1000, 1.0)
        cap = max(base, self.heartbeat * self.heartbeat_liveness / 1000)
        delay = min(cap, base * (2.0 ** min(self._retries, 30)))
        self._retries += 1
        return delay * random.uniform(0.5, 1.0)

    def _cancel_requests(self) -> None:
        self._runner.cancel_all()  # as for CANCEL: no replies (the broker tells the callers)
        for task in list(self._hook_tasks):
            task.cancel()
        self._runner.close()  # its idle standby task (see gaterpc.execute)

    def _send_heartbeat(self, lsock: LoopSocket) -> None:
        if self._hook_send:
            self._spawn_hook(self.send_to_majordomo(HEARTBEAT))
        elif self._dynamic_zap:
            lsock.send((b"", self._header, HEARTBEAT) + tuple(self.build_zap_frames() or ()))
        else:
            lsock.send(self._hb_frames)

    def _on_socket_error(self, exc: BaseException) -> None:
        Wlogger.error("worker socket failed: %s", exc)
        if self._stop_signal is not None and not self._stop_signal.done():
            self._stop_signal.set_result(False)

    def _get_lsock(self) -> Optional[LoopSocket]:
        return self._lsock

    def _over_budget(self, frames: Sequence[bytes]) -> None:
        """A message refused by the process-wide backlog budget: its caller is told.

        A refused reply is replaced by an error reply naming the budget (a
        stream or HugeData transfer ends with it and stops), sent past the
        budget as it is small; READY, HEARTBEAT and DISCONNECT go through.
        """
        lsock = self._lsock
        if lsock is None:
            return
        if len(frames) > 2 and frames[2] == REPLY:
            n = len(self._reply_prefix)  # b"", header, REPLY and the ZAP frames
            if len(frames) > n + 3:
                body = self._runner.refused_reply(frames[n], frames[n + 2], frames[n + 3:])
                if body is not None:
                    lsock.send_forced(tuple(frames[:n + 3]) + body)
            return
        lsock.send_forced(frames)

    def _send_reply_body(self, client_id: bytes, request_id: bytes, body: tuple[bytes, ...]) -> None:
        lsock = self._lsock
        if lsock is not None:
            if self._hook_send:
                self._spawn_hook(self.send_to_majordomo(REPLY, (client_id, b"", request_id), body))
                return
            if self._dynamic_zap:
                prefix = (b"", self._header, REPLY) + tuple(self.build_zap_frames() or ())
            else:
                prefix = self._reply_prefix
            frames = prefix + (client_id, b"", request_id) + body
            out = self._out
            if out is not None:
                out.append(frames)
            else:
                lsock.send(frames)

    def _send_tagged(self, client_id: bytes, request_id: bytes, tag: bytes, frames: Sequence[bytes]) -> None:
        """The reply messages ``(tag, frame)`` of one request, one per frame, in one burst."""
        lsock = self._lsock
        if lsock is None:
            return
        if self._hook_send or self._dynamic_zap or self._out is not None:
            for frame in frames:
                self._send_reply_body(client_id, request_id, (tag, frame))
            return
        head = self._reply_prefix + (client_id, b"", request_id, tag)
        lsock.send_all([head + (frame,) for frame in frames])

    def _on_messages(self, msgs: list[list[bytes]]) -> None:
        self._last_recv = self._loop.time()
        # Replies made while the batch is handled are sent together at its end: one
        # burst wakes ZeroMQ's I/O thread once instead of once per reply.
        out: list[tuple[bytes, ...]] = []
        self._out = out
        try:
            self._handle_batch(msgs)
        finally:
            self._out = None
            lsock = self._lsock
            if out and lsock is not None:
                lsock.send_all(out)  # one call for the burst; the rest is queued in order

    def _handle_batch(self, msgs: list[list[bytes]]) -> None:
        header = self._header
        for msg in msgs:
            if len(msg) < 3 or msg[0] or msg[1] != header:
                continue
            command = msg[2]
            if command == REQUEST:
                if self._hook_request:
                    self._spawn_hook(self.process_request(msg[3:]))
                else:
                    self._handle_request(msg, 3)
            elif command == HEARTBEAT:
                self._retries = 0  # the broker knows us: the next reconnection starts quickly
                lsock = self._lsock
                if lsock is not None:
                    self._send_heartbeat(lsock)
            elif command == CANCEL:
                # [CANCEL, client_id, '', request_id]: our broker says the caller is gone
                if len(msg) == 6 and not msg[4]:
                    self._runner.cancel(msg[3], msg[5])
            elif command == CREDIT:
                # [CREDIT, client_id, '', request_id, credit]: HugeData flow control
                if len(msg) == 7 and not msg[4]:
                    self._runner.credit(msg[3], msg[5], msg[6])
            elif command == DISCONNECT:
                final = len(msg) > 3
                if final:
                    # Our broker refuses us and says why (e.g. failed authentication): stop.
                    Wlogger.warning("broker sent DISCONNECT: %s", bytes(msg[3][:800]).decode("utf-8", "replace")[:200])
                else:
                    Wlogger.info("broker sent DISCONNECT")
                stop = self._stop_signal
                if stop is not None and not stop.done():
                    stop.set_result(final)

    def _handle_request(self, msg: Sequence[bytes], i: int) -> None:
        # msg[i:] = client_id, '', request_id, func[, args[, kwargs]]
        n = len(msg) - i
        if n < 3 or msg[i + 1]:
            return
        client_id = msg[i]
        request_id = msg[i + 2]
        runner = self._runner
        try:
            req = decode_request(msg, i + 3)
            func_name = req.func_name
            entry = self._table.get(func_name) if type(func_name) is str else None
            if entry is None:
                if Settings.SECURE:
                    raise AttributeError("Function not found.")
                raise AttributeError(f"Function not found: {func_name}")
            if len(self.requests) >= self.max_allowed_request:
                raise RuntimeError(f"Request count exceeds the maximum value({self.max_allowed_request})")
        except Exception as exc:
            runner.reply_error(client_id, request_id, exc, with_traceback=False)
            return
        runner.run(client_id, request_id, entry[0], entry[1], req.args, req.kwargs)

    # -- graceful stop ----------------------------------------------------------

    async def shutdown(self, grace: Optional[float] = 10.0) -> int:
        """Stop gracefully: take no new request, finish those in flight, then leave.

        From the call on, requests that still arrive are answered at once
        with ``ServiceUnAvailableError`` ("... is shutting down") instead of
        being run.  Requests in flight (coroutines, executor calls, streams,
        HugeData transfers) get up to ``grace`` seconds to finish; their
        replies are flushed to the broker.  Then the worker says DISCONNECT
        and closes its socket, so the broker forgets it at once; callers of
        requests that were still running after ``grace`` (cancelled here)
        get ``ServiceUnAvailableError`` from the broker.  Returns the number
        of requests that had to be cancelled (0 when every one finished).
        """
        loop = self._loop
        # An instance attribute shadows the method for the receive callback (removed
        # again below); same signature, so the callback needs no extra test per message.
        self._handle_request = self._refuse_request  # type: ignore[method-assign]
        try:
            deadline = loop.time() + max(0.0, float(grace or 0.0))
            while self.requests:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.wait(list(self.requests), timeout=remaining)
                await asyncio.sleep(0)  # let done-callbacks send replies / start streams
            left = len(self.requests)
            if left:
                Wlogger.warning("%d request(s) still running after %.1f s: cancelled", left, grace)
                self._runner.cancel_all()  # no replies: the broker tells the callers
            lsock = self._lsock
            if lsock is not None and not lsock.closed and lsock.backlog_size():
                try:
                    await asyncio.wait_for(lsock.drain(), max(1.0, deadline - loop.time()))
                except (asyncio.TimeoutError, ConnectionError):
                    pass
            recv_task = self._recv_task
            self.stop()
            if recv_task is not None and not recv_task.done():
                await asyncio.wait((recv_task,), timeout=2.0)
            if self.ready:
                await self.disconnect(notify=True)
            return left
        finally:
            self.__dict__.pop("_handle_request", None)

    def _refuse_request(self, msg: Sequence[bytes], i: int) -> None:
        """Answer a request that arrives while :meth:`shutdown` runs."""
        if len(msg) - i < 3 or msg[i + 1]:
            return
        exc = ServiceUnAvailableError(self.service.name)
        exc.args = (f"The worker serving the {self.service.name} Service is shutting down.",)
        self._runner.reply_error(msg[i], msg[i + 2], exc, with_traceback=False)
