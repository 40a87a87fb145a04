"""Worker side: ``Worker``, ``Service`` and the broker's ``RemoteWorker`` (API.md §7).

A worker connects a DEALER socket to the broker backend, sends READY and
then serves REQUEST messages.  Messages are read in batches from the
socket's event-loop callback; plain synchronous methods run and reply right
there, coroutine methods run in a task, executor methods in their executor,
generators and HugeData in a transfer task (see :mod:`gaterpc.execute`).

Differences from the original (API.md §13): malformed requests, unknown
methods, ``__`` keyword arguments and unencodable results are answered with
an error reply instead of being dropped (generic text under
``Settings.SECURE``); ``@interface("process")`` runs the method's function in
the process pool with a stand-in ``self`` (``execute.DetachedSelf``) instead
of failing to pickle the worker; on ``stop()`` the worker tells the broker
with a DISCONNECT so that in-flight callers learn at once; ``close()`` shuts
down only executors the worker created itself.  Our broker may send CANCEL
(``06``) for a request whose caller vanished or cannot keep up: the worker
cancels that request's task (coroutine, stream, HugeData transfer) and sends
nothing more for it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque

import zmq
from zmq import constants as z_const

from gaterpc.base import (
    ABCService, ABCWorker, Context, check_zap_args, current_loop, new_socket, own_executors, set_ctx,
    shutdown_own_executors, zap_frames_of,
)
from gaterpc.exceptions import BusyWorkerError, ServiceUnAvailableError
from gaterpc.execute import Runner, collect_interfaces
from gaterpc.global_settings import Settings
from gaterpc.helpers import check_socket_addr, interface, name2uuid, to_bytes
from gaterpc.loopio import LoopSocket
from gaterpc.protocol import CANCEL, DISCONNECT, HEARTBEAT, READY, REPLY, REQUEST
from gaterpc.serialization import msg_unpack

__all__ = ("Worker", "Service", "RemoteWorker")

Wlogger = logging.getLogger("gaterpc.worker")


class _BadRequest(Exception):
    """A request the worker cannot run (reported to the caller)."""


class RemoteWorker(ABCWorker):
    """The broker's record of a connected worker."""

    def __init__(self, identity, heartbeat, max_allowed_request, sock, mdp_version, service):
        self.identity = identity
        self.sock = sock
        self.mdp_version = mdp_version
        self.ready = True
        self.service = service
        self.heartbeat = heartbeat or Settings.MDP_HEARTBEAT_INTERVAL
        self.heartbeat_liveness = Settings.MDP_HEARTBEAT_LIVENESS
        self.last_message_sent_time = 0.0
        self.heartbeat_task = None
        self.destroy_task = None
        self.max_allowed_request = max_allowed_request
        self.expiry = 0.0
        # request id -> requester id, for requests dispatched and not yet answered
        self._inflight = {}
        self._in_ready = False

    def is_alive(self):
        """True while the worker is registered and ready."""
        return self.ready

    def prolong(self, now):
        """Push the expiry to ``now + heartbeat × liveness``."""
        self.expiry = now + self.heartbeat * self.heartbeat_liveness / 1000


class Service(ABCService):
    """A named service: describes workers on the worker side, balances them in the broker."""

    def __init__(self, name=None, description="gate-rpc service"):
        self.name = name or Settings.SERVICE_DEFAULT_NAME
        self.description = description
        self.workers = {}
        self.idle_workers = asyncio.Queue()
        self.running = False
        # Broker side: workers with spare capacity, round robin (each at most once).
        self._ready = deque()
        # Broker side: requests waiting for capacity, oldest first.
        self._waiting = deque()
        self._capacity_waiters = deque()

    def create_worker(self, worker_class=None, workers_addr=None, workers_heartbeat=None, context=None,
                      zap_mechanism=None, zap_credentials=None, max_allowed_request=None,
                      thread_executor=None, process_executor=None):
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

    def add_worker(self, worker):
        """Add a worker (ignored if its identity is known)."""
        if worker is None or worker.identity in self.workers:
            return
        worker.service = self
        self.workers[worker.identity] = worker
        self.idle_workers.put_nowait(worker.identity)
        self.running = True
        if isinstance(worker, RemoteWorker) and worker.max_allowed_request > 0 and not worker._in_ready:
            worker._in_ready = True
            self._ready.append(worker)
            self._wake_capacity_waiter()

    def remove_worker(self, worker):
        """Forget a worker (stopping it if it can be stopped)."""
        if worker is None:
            return
        if self.workers.pop(worker.identity, None) is not None:
            stop = getattr(worker, "stop", None)
            if callable(stop):
                stop()
        if getattr(worker, "_in_ready", False):
            worker._in_ready = False
            try:
                self._ready.remove(worker)
            except ValueError:
                pass
        if not self.workers:
            self.running = False

    def get_workers(self):
        """The workers of the service (identity → worker)."""
        return self.workers

    # -- broker-side capacity (O(1) on the hot path) ----------------------------

    def _take(self):
        """A worker with spare capacity (one unit taken), or ``None``."""
        ready = self._ready
        workers = self.workers
        while ready:
            w = ready[0]
            if not w.ready or w.max_allowed_request <= 0 or w.identity not in workers:
                ready.popleft()
                w._in_ready = False
                continue
            w.max_allowed_request -= 1
            if w.max_allowed_request > 0:
                ready.rotate(-1)
            else:
                ready.popleft()
                w._in_ready = False
            return w
        return None

    def _give_back(self, worker):
        """Return one unit of capacity of ``worker``."""
        worker.max_allowed_request += 1
        if not worker._in_ready and worker.ready and worker.max_allowed_request > 0 \
                and worker.identity in self.workers:
            worker._in_ready = True
            self._ready.append(worker)
        if self._capacity_waiters:
            self._wake_capacity_waiter()

    def _wake_capacity_waiter(self):
        waiters = self._capacity_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def acquire_idle_worker(self):
        """Take a unit of capacity of some worker, waiting up to ``Settings.TIMEOUT``."""
        if not self.running:
            raise ServiceUnAvailableError(self.name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + Settings.TIMEOUT
        while True:
            w = self._take()
            if w is not None:
                return w
            if not self.running:
                raise ServiceUnAvailableError(self.name)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BusyWorkerError()
            fut = loop.create_future()
            self._capacity_waiters.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                raise BusyWorkerError() from None

    async def release_worker(self, worker):
        """Give back one unit of capacity of ``worker``."""
        if worker is not None and worker.identity in self.workers and worker.is_alive():
            self._give_back(worker)


class Worker(ABCWorker):
    """Base class of RPC servers: subclass it and mark methods with ``@interface``."""

    def __init__(self, broker_addr, service, identity=None, heartbeat=None, context=None,
                 zap_mechanism=None, zap_credentials=None, max_allowed_request=None,
                 thread_executor=None, process_executor=None):
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
        self._ctx = context if context is not None else Context()
        set_ctx(self._ctx)
        self._loop = current_loop()
        own_executors(self, thread_executor, process_executor)
        self.requests = set()
        self.sent_tasks = set()
        self._recv_task = None
        self._reconnect = False
        self._socket = None
        self._poller = None
        self._lsock = None
        self._last_recv = 0.0
        self._stop_signal = None
        self._header = Settings.MDP_WORKER
        self._reply_prefix = ()
        self._dynamic_zap = type(self).build_zap_frames is not Worker.build_zap_frames
        self._runner = Runner(self, self._loop, self._send_reply_body, self._get_lsock, self.requests)
        self.interfaces, self._table = collect_interfaces(self)

    # -- public API -----------------------------------------------------------

    def is_alive(self):
        """True while connected to the broker."""
        return self.ready

    @interface
    def get_interfaces(self):
        # No docstring on purpose: the original reports {"doc": None} for it,
        # and get_interfaces() replies must be byte-identical (WIRE.md §5.10).
        return self.interfaces

    def _get_interfaces(self):
        return collect_interfaces(self)[0]

    def build_zap_frames(self):
        """The ZAP frames put in every message to the broker (override for dynamic credentials)."""
        return self._zap_frames_bytes

    def run(self):
        """Start the receive task (connects, then serves)."""
        if self._recv_task is None:
            self._recv_task = self._loop.create_task(self.recv())

    def stop(self):
        """Cancel the receive task; clean-up happens when the task processes it."""
        task = self._recv_task
        self._recv_task = None
        if task is not None and not task.done():
            task.cancel()

    def close(self):
        """Shut down the executors this worker created."""
        shutdown_own_executors(self)

    async def connect(self):
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
        self._lsock = LoopSocket(self._loop, sock, self._on_messages, on_error=self._on_socket_error)
        sep = Settings.MDP_DESCRIPTION_SEP
        body = f"{self.service.name}{sep}{self.service.description}{sep}{self.max_allowed_request}"
        self._lsock.send((b"", self._header, READY) + zap + (body.encode("utf-8"),))
        self.ready = True

    async def disconnect(self, notify=False):
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

    async def send_to_majordomo(self, command, option=None, messages=None):
        """Send ``['', MDPW01, command, *zap, *option, *messages]`` to the broker."""
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

    async def send_hugedata(self, option, hugedata):
        """Send a HugeData reply; ``option`` is ``(client_id, b"", request_id)``."""
        await self._runner._send_hugedata(option[0], option[-1], hugedata)

    async def send_agenerator(self, option, agenerator):
        """Send a stream reply; ``option`` is ``(client_id, b"", request_id)``."""
        await self._runner._send_stream(option[0], option[-1], agenerator)

    async def process_request(self, messages):
        """Handle one REQUEST given as ``[client_id, b"", request_id, func, args, kwargs]``."""
        self._handle_request(list(messages), 0)

    def cleanup_sent(self, task):
        """Done-callback of heartbeat-send tasks."""
        self.sent_tasks.discard(task)

    def cleanup_request(self, task):
        """Done-callback of request tasks."""
        self.requests.discard(task)
        if not task.cancelled() and task.exception() is not None:
            Wlogger.error("request task failed: %r", task.exception())

    # -- receive loop ---------------------------------------------------------

    async def recv(self):
        """Connect, serve until stopped, the broker is offline or says DISCONNECT."""
        loop = self._loop
        cancelled = False
        try:
            await self.connect()
            interval = self.heartbeat / 1000
            liveness = self.heartbeat_liveness
            while True:
                stop = self._stop_signal = loop.create_future()
                await asyncio.wait((stop,), timeout=interval)
                if stop.done():
                    Wlogger.info("broker sent DISCONNECT")
                    break
                if self._lsock is None or self._lsock.closed:
                    break
                if loop.time() - self._last_recv >= interval * liveness:
                    Wlogger.warning("Majordomo offline")
                    break
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self._stop_signal = None
            await self.disconnect(notify=cancelled)
            for task in list(self.requests):
                task.cancel()
            if not cancelled and self._reconnect:
                self._recv_task = loop.create_task(self.recv())
            else:
                self.close()

    def _on_socket_error(self, exc):
        Wlogger.error("worker socket failed: %s", exc)
        if self._stop_signal is not None and not self._stop_signal.done():
            self._stop_signal.set_result(None)

    def _get_lsock(self):
        return self._lsock

    def _send_reply_body(self, client_id, request_id, body):
        lsock = self._lsock
        if lsock is not None:
            if self._dynamic_zap:
                prefix = (b"", self._header, REPLY) + tuple(self.build_zap_frames() or ())
            else:
                prefix = self._reply_prefix
            lsock.send(prefix + (client_id, b"", request_id) + tuple(body))

    def _on_messages(self, msgs):
        self._last_recv = self._loop.time()
        header = self._header
        for msg in msgs:
            if len(msg) < 3 or msg[0] or msg[1] != header:
                continue
            command = msg[2]
            if command == REQUEST:
                self._handle_request(msg, 3)
            elif command == HEARTBEAT:
                lsock = self._lsock
                if lsock is not None:
                    if self._dynamic_zap:
                        lsock.send((b"", header, HEARTBEAT) + tuple(self.build_zap_frames() or ()))
                    else:
                        lsock.send(self._hb_frames)
            elif command == CANCEL:
                # [CANCEL, client_id, '', request_id]: our broker says the caller is gone
                if len(msg) == 6 and not msg[4]:
                    self._runner.cancel(msg[3], msg[5])
            elif command == DISCONNECT:
                if len(msg) > 3:
                    # Our broker says why (e.g. failed authentication).
                    Wlogger.warning("broker sent DISCONNECT: %s", msg[3].decode("utf-8", "replace")[:200])
                stop = self._stop_signal
                if stop is not None and not stop.done():
                    stop.set_result(None)

    def _handle_request(self, msg, i):
        # msg[i:] = client_id, '', request_id, func[, args[, kwargs]]
        n = len(msg) - i
        if n < 3 or msg[i + 1]:
            return
        client_id = msg[i]
        request_id = msg[i + 2]
        runner = self._runner
        try:
            if n < 4 or n > 6:
                raise _BadRequest(f"malformed request: {n - 3} body frames (1 to 3 expected)")
            func_name = msg_unpack(msg[i + 3])
            args = msg_unpack(msg[i + 4]) if n > 4 else []
            kwargs = msg_unpack(msg[i + 5]) if n > 5 else {}
            if not isinstance(args, (list, tuple)):
                raise _BadRequest("malformed request: the arguments frame is not an array")
            if type(kwargs) is not dict:
                raise _BadRequest("malformed request: the keyword arguments frame is not a map")
            if kwargs:
                for key in kwargs:
                    if type(key) is not str or key.startswith("__"):
                        raise _BadRequest("keyword argument names must be str and must not start with '__'")
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
        runner.run(client_id, request_id, entry[0], entry[1], args, kwargs)
