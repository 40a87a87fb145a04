"""The broker: ``AMajordomo`` (API.md §8.1, WIRE.md §4–§5).

A ROUTER frontend for clients and a ROUTER backend for workers, both read
in batches from event-loop callbacks.  A request is forwarded to a worker
with spare capacity (round robin, O(1)) by rewriting the received frame
list in place; a reply goes back to its client the same way.  No task, await,
log call or string formatting happens per message on that path.  Requests
that find no capacity wait in a per-service FIFO until a unit is released or
``Settings.TIMEOUT`` passes (then ``BusyWorkerError``).  A periodic tick sends
heartbeats, expires silent workers and times out waiting requests.

Differences from the original (API.md §13, WIRE.md §11): capacity is
released once per completed request, not per reply message (B1); a reply is
accepted only from the worker the request was given to (B3); callers of a
worker that disappears get an error reply at once (B2/B9); unknown internal
functions and malformed requests are answered with an error; internal
stream and HugeData errors use the right tags (B2/B3 of §13); ``stop()``
works before ``run()`` (B10).

Worker liveness and recovery: every worker gets a HEARTBEAT every interval;
a send that finds a worker's connection gone (EHOSTUNREACH) removes it at
once, so a killed worker is noticed within one heartbeat (expiry after
heartbeat x liveness stays as the fallback for a hung worker).  Its callers
get ``ServiceUnAvailableError``; a caller whose stream or HugeData had begun
gets it as a stream/HugeData error, so the iteration raises.  A HEARTBEAT or
REPLY from a worker id the broker does not know (e.g. after a restart) is
answered with DISCONNECT, at most once per id per heartbeat interval, so the
worker registers again.  A malformed READY is refused with a DISCONNECT that
carries the reason (the original ignored it silently; its worker ignores the
extra frame).  A message that makes the broker fail is counted
(``broker_error``) and, when it names a waiting caller, answered with an
error reply.

Additions: a client found gone when the broker sends to it (EHOSTUNREACH)
is forgotten -- its backlog and waiting requests are dropped, its in-flight
requests released and cancelled at their workers with CANCEL (``06``, which
the original worker ignores); a reply that would exceed the process-wide
backlog budget ends its request with an error naming the budget (see
:mod:`gaterpc.loopio`).  Every drop is counted (:mod:`gaterpc.counters`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets

import zmq
from zmq import constants as z_const

from gaterpc.base import Context, current_loop, new_socket, own_executors, set_ctx, shutdown_own_executors
from gaterpc.cache import KVLRUCache
from gaterpc.counters import count_drop
from gaterpc.exceptions import BusyWorkerError, ServiceUnAvailableError
from gaterpc.execute import Runner, collect_interfaces
from gaterpc.global_settings import Settings
from gaterpc.helpers import check_socket_addr, interface, name2uuid, to_bytes
from gaterpc.counters import count_drop
from gaterpc.loopio import BacklogBudgetError, LoopSocket, budget_message
from gaterpc.protocol import (
    CANCEL, DISCONNECT, HEARTBEAT, HUGE_TAG, KEEPALIVE_ARG, KEEPALIVE_BAD, KEEPALIVE_OK, READY, REPLY,
    REQUEST, STREAM_EXC, STREAM_TAG, error_body, exception_triple,
)
from gaterpc._speedups.frames import is_terminal
from gaterpc.serialization import msg_pack, msg_unpack
from gaterpc.worker import RemoteWorker, Service

__all__ = ("AMajordomo",)

Mlogger = logging.getLogger("gaterpc.majordomo")


class _BadRequest(Exception):
    """A malformed request (reported to the caller)."""


class _InternalRequests(dict):
    """``request id -> Future`` of requests the broker sent itself.

    Entries are removed when they resolve; ``pop`` of a missing id returns
    ``None`` instead of raising, so code written for the original (which
    pops after awaiting) keeps working.
    """

    def pop(self, key, *default):
        return super().pop(key, default[0] if default else None)


class AMajordomo:
    """Asynchronous Majordomo broker with the built-in ``Gate`` service."""

    RemoteServiceClass = Service
    RemoteWorkerClass = RemoteWorker

    def __init__(self, *, identity=None, context=None, heartbeat=None,
                 thread_executor=None, process_executor=None):
        identity = identity or f"gm-{secrets.token_hex(8)}"
        self.identity = name2uuid(identity).bytes
        self.ctx = context if context is not None else Context()
        set_ctx(self.ctx)
        self.frontend = None
        self.backend = None
        self.zap = None
        self.clients = set()
        self.services = {}
        self.workers = {}
        self.frontend_tasks = set()
        self.backend_tasks = set()
        self.zap_tasks = set()
        self.zap_addr = ""
        self.zap_domain = b""
        self.zap_replies = {}
        # verdicts expire (ZapChecker keeps 30 s for successes, 5 s for failures)
        self.zap_cache = KVLRUCache(128, 256, debug=bool(Settings.DEBUG), ttl=30.0)
        self.heartbeat = heartbeat or Settings.MDP_HEARTBEAT_INTERVAL
        self._loop = current_loop()
        own_executors(self, thread_executor, process_executor)
        self.internal_tasks = {}
        self.internal_requests = _InternalRequests()
        self.cache_request = {}
        self.running = False
        self._poller = None
        self._broker_task = None
        self._lfront = None
        self._lback = None
        self._services_b = {}
        # requester ids whose replies do not go to the frontend (broker, peer gates)
        self._special_ids = {self.identity}
        self._zap_checker = None
        self._closed = False
        self._errors = 0
        # ids of unknown workers answered with DISCONNECT since the last heartbeat round
        self._told_unknown = set()
        self._read_protocol_settings()
        self._probe_body = msg_pack(KEEPALIVE_OK)
        self._runner = Runner(self, self._loop, self._send_internal_reply, self._get_lfront,
                              self.frontend_tasks)
        self.register_internal_process()

    def _read_protocol_settings(self):
        self._mdp_client = Settings.MDP_CLIENT
        self._mdp_worker = Settings.MDP_WORKER
        self._internal_name = Settings.MDP_INTERNAL_SERVICE
        self._internal_b = self._internal_name.encode("utf-8")

    def register_internal_process(self):
        """Collect the broker's ``@interface`` methods into ``internal_func``."""
        self.internal_func, self._internal_table = collect_interfaces(self)

    # -- sockets --------------------------------------------------------------

    def bind_frontend(self, addr, sock_opt=None):
        """Bind the client-facing ROUTER socket to ``addr``."""
        addr = check_socket_addr(addr)
        if sock_opt is None:
            sock_opt = {}
        sock_opt[z_const.IDENTITY] = self.identity
        if self.frontend is None:
            self.frontend = new_socket(self.ctx, zmq.ROUTER, sock_opt)
            # A client that reconnects with the same identity takes its route over.
            self.frontend.setsockopt(zmq.ROUTER_HANDOVER, 1)
            if self.running:
                self._lfront = self._front_socket()
        self.frontend.bind(addr)

    def unbind_frontend(self, addr):
        """Unbind the frontend from ``addr``."""
        if self.frontend is not None:
            self.frontend.unbind(addr)

    def bind_backend(self, addr=None, sock_opt=None):
        """Bind the worker-facing ROUTER socket (default ``Settings.WORKER_ADDR``)."""
        addr = check_socket_addr(addr or Settings.WORKER_ADDR)
        if sock_opt is None:
            sock_opt = {}
        sock_opt[z_const.IDENTITY] = self.identity
        if self.backend is None:
            self.backend = new_socket(self.ctx, zmq.ROUTER, sock_opt)
            self.backend.setsockopt(zmq.ROUTER_HANDOVER, 1)
            if self.running:
                self._lback = LoopSocket(self._loop, self.backend, self._on_backend, per_peer=True,
                                         on_unreachable=self._on_worker_unreachable,
                                         on_over_budget=self._back_over_budget)
        self.backend.bind(addr)

    def unbind_backend(self, addr):
        """Unbind the backend from ``addr``."""
        if self.backend is not None:
            self.backend.unbind(addr)

    def connect_zap(self, zap_addr=None, zap_domain=None):
        """Authenticate every client, worker (and gate) message with a ZAP service."""
        from gaterpc.zap import ZapChecker, zap_link_socket

        self.zap_domain = (zap_domain or Settings.ZAP_DEFAULT_DOMAIN)
        if isinstance(self.zap_domain, str):
            self.zap_domain = self.zap_domain.encode("utf-8")
        self.zap_addr = check_socket_addr(zap_addr or Settings.ZAP_ADDR)
        self.zap = zap_link_socket(self.ctx, zmq.DEALER)  # never CURVE, even with ZMQ_SOCK keys
        self.zap.connect(self.zap_addr)
        self._zap_checker = ZapChecker(self)
        if self.running:
            self._zap_checker.attach()

    def disconnect_zap(self):
        """Stop authenticating."""
        self.zap_domain = b""
        checker = self._zap_checker
        self._zap_checker = None
        if checker is not None:
            checker.close()
        elif self.zap is not None:
            self.zap.close(linger=0)
        self.zap = None

    def _get_lfront(self):
        return self._lfront

    def _front_socket(self):
        return LoopSocket(self._loop, self.frontend, self._on_frontend, per_peer=True,
                          on_unreachable=self._client_gone, on_over_budget=self._front_over_budget)

    # -- lifecycle ------------------------------------------------------------

    def run(self):
        """Start the broker loop."""
        if self._broker_task is None:
            self._broker_task = self._loop.create_task(self._broker_loop())

    def _attach(self):
        self._read_protocol_settings()
        if self.frontend is not None and self._lfront is None:
            self._lfront = self._front_socket()
        if self.backend is not None and self._lback is None:
            self._lback = LoopSocket(self._loop, self.backend, self._on_backend, per_peer=True,
                                     on_unreachable=self._on_worker_unreachable,
                                     on_over_budget=self._back_over_budget)
        if self._zap_checker is not None:
            self._zap_checker.attach()

    async def _broker_loop(self):
        self.running = True
        self._attach()
        tick = max(0.01, min(self.heartbeat / 4000, 0.25))
        interval = self.heartbeat / 1000
        loop = self._loop
        next_heartbeat = loop.time() + interval
        try:
            while True:
                await asyncio.sleep(tick)
                now = loop.time()
                if now >= next_heartbeat:
                    next_heartbeat = now + interval
                    self._send_heartbeats()
                    self._probe_clients()
                self._tick(now)
        finally:
            self._shutdown()

    def _tick(self, now):
        """Expire silent workers and time out requests waiting for capacity."""
        for w in [w for w in self.workers.values() if now >= w.expiry]:
            Mlogger.warning("worker %s expired", w.identity.hex())
            self._remove_worker(w, True)
        for svc in self.services.values():
            waiting = svc._waiting
            while waiting and waiting[0][3] <= now:
                client_id, request_id, body, _ = waiting.popleft()
                self._reply_error(client_id, svc._name_b, request_id, BusyWorkerError())

    def _send_heartbeats(self):
        """Heartbeat every worker; a worker whose connection is gone is removed on the spot."""
        self._told_unknown.clear()
        lback = self._lback
        if lback is None:
            return
        frames_tail = (b"", self._mdp_worker, HEARTBEAT)
        # a copy: a send to a vanished worker removes it (on_unreachable) while we iterate
        for wid in list(self.workers):
            lback.send((wid,) + frames_tail)

    def stop(self):
        """Stop the broker: cancel its tasks, say DISCONNECT to workers, close the sockets."""
        for task in list(self.internal_tasks):
            task.cancel()
        task = self._broker_task
        self._broker_task = None
        if task is not None and not task.done():
            task.cancel()
        self._shutdown()

    def _shutdown(self):
        if self._closed:
            return
        self._closed = True
        lback = self._lback
        if lback is not None and not lback.closed:
            for wid in list(self.workers):
                lback.send((wid, b"", self._mdp_worker, DISCONNECT))
        for w in list(self.workers.values()):
            w.ready = False
        self.workers.clear()
        for tasks in (self.frontend_tasks, self.backend_tasks):
            for t in list(tasks):
                t.cancel()
        for fut in list(self.internal_requests.values()):
            if not fut.done():
                fut.cancel()
        if self._zap_checker is not None:
            self._zap_checker.close()
            self._zap_checker = None
        elif self.zap is not None:
            self.zap.close(linger=0)
        self.zap = None
        for lsock, sock, linger in ((self._lfront, self.frontend, 0), (self._lback, self.backend, 100)):
            if lsock is not None:
                lsock.close(linger)
            elif sock is not None:
                sock.close(linger=0)
        self._lfront = self._lback = None
        self.frontend = self.backend = None
        self.close()

    def close(self):
        """Shut down the executors this broker created."""
        shutdown_own_executors(self)

    def create_internal_task(self, coro_func, name=None, reload=False, func_args=None, func_kwargs=None):
        """Run ``coro_func(*func_args, **func_kwargs)`` as a task owned by the broker."""
        args = tuple(func_args or ())
        kwargs = dict(func_kwargs or {})
        task = self._loop.create_task(coro_func(*args, **kwargs), name=name)
        self.internal_tasks[task] = (coro_func, name, reload, args, kwargs)
        task.add_done_callback(self.cleanup_internal_task)

    def cleanup_internal_task(self, task):
        """Done-callback of internal tasks: log failures, restart ``reload`` tasks."""
        info = self.internal_tasks.pop(task, None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            Mlogger.error("internal task %s failed: %r", task.get_name(), exc)
        if info is not None and info[2] and not self._closed:
            self.create_internal_task(info[0], name=info[1], reload=True, func_args=info[3],
                                      func_kwargs=info[4])

    def cleanup_frontend_task(self, task):
        """Done-callback of frontend tasks."""
        self.frontend_tasks.discard(task)

    def cleanup_backend_task(self, task):
        """Done-callback of backend tasks."""
        self.backend_tasks.discard(task)

    # -- services and workers -------------------------------------------------

    def register_service(self, name, description):
        """Create the service ``name`` (the first description wins)."""
        svc = self.services.get(name)
        if svc is None:
            svc = self.RemoteServiceClass(name, description)
            svc._name_b = name.encode("utf-8")
            self.services[name] = svc
            self._services_b[svc._name_b] = svc
        return svc

    def _on_ready(self, worker_id, frames):
        if worker_id in self.workers:
            # A second READY from a registered id bans it (as the original).
            self._remove_worker(self.workers[worker_id], True)
            return
        if len(frames) != 1:
            self._refuse_worker(worker_id, f"READY must carry exactly one body frame, not {len(frames)}")
            return
        sep = Settings.MDP_DESCRIPTION_SEP
        try:
            parts = frames[0].decode("utf-8").split(sep)
        except UnicodeDecodeError:
            parts = ()
        if len(parts) != 3:
            self._refuse_worker(worker_id, f"malformed READY body (expected name{sep}description{sep}capacity, "
                                           f"with no {sep!r} in the name or description)")
            return
        name, description, capacity = parts
        try:
            capacity = int(capacity)
        except ValueError:
            capacity = 0
        if not name or capacity < 1:
            self._refuse_worker(worker_id, "malformed READY body (empty service name, or capacity not an "
                                           "integer >= 1)")
            return
        lback = self._lback
        capacity = min(capacity, 1 << 30)
        svc = self.register_service(name, description)
        w = self.RemoteWorkerClass(worker_id, self.heartbeat, capacity, self.backend,
                                   Settings.MDP_VERSION, svc)
        self.workers[worker_id] = w
        svc.add_worker(w)
        w.prolong(self._loop.time())
        if lback is not None:
            lback.send((worker_id, b"", self._mdp_worker, HEARTBEAT))
            if self.workers.get(worker_id) is not w:
                return  # it vanished at once (its connection is gone)
        if svc._waiting:
            self._dispatch_waiting(svc)
        self._worker_ready(w, svc)

    def _worker_ready(self, worker, service):
        """Hook: a worker registered (the Gate tells its peers)."""

    def _refuse_worker(self, worker_id, reason):
        """DISCONNECT with a reason frame: our worker stops (no reconnect) and logs it.

        The original worker ignores frames after the command and just stops.
        Logged and answered at most once per id per heartbeat interval.
        """
        count_drop("worker_refused")
        told = self._told_unknown
        if worker_id in told or len(told) >= 65536:
            return
        told.add(worker_id)
        Mlogger.warning("worker %s refused: %s", worker_id.hex(), reason)
        lback = self._lback
        if lback is not None:
            lback.send((worker_id, b"", self._mdp_worker, DISCONNECT, reason.encode("utf-8")))

    def _unknown_worker(self, worker_id):
        """A HEARTBEAT or REPLY from a worker id we do not know (e.g. we restarted).

        Answered with DISCONNECT (standard Majordomo) so that the worker
        registers again; at most once per id per heartbeat interval, so a flood
        costs a set lookup per message.
        """
        count_drop("unknown_worker")
        told = self._told_unknown
        if worker_id in told or len(told) >= 65536:
            return
        told.add(worker_id)
        lback = self._lback
        if lback is not None:
            lback.send((worker_id, b"", self._mdp_worker, DISCONNECT))

    def _on_worker_unreachable(self, worker_id):
        """The backend could not send to ``worker_id``: its connection is gone."""
        w = self.workers.get(worker_id)
        if w is not None:
            Mlogger.warning("worker %s vanished (connection lost)", worker_id.hex())
            self._remove_worker(w, False)

    def _fail_inflight(self, client_id, svc, request_id, tag, exc):
        """Fail one dispatched request; ``tag`` is the stream/HugeData tag if replies had begun."""
        if tag is None:
            self._reply_error(client_id, svc._name_b, request_id, exc)
        else:
            # the caller already iterates a stream or assembles a HugeData: end it with an error
            self._deliver(client_id, svc._name_b, request_id,
                          (tag, STREAM_EXC, msg_pack(exception_triple(exc, False))))

    def _remove_worker(self, w, send_disconnect):
        """Ban a worker: DISCONNECT (if asked), forget it, fail its requests."""
        if self.workers.get(w.identity) is not w:
            return
        del self.workers[w.identity]
        was_ready = w.ready
        w.ready = False
        lback = self._lback
        if send_disconnect and was_ready and lback is not None:
            lback.send((w.identity, b"", self._mdp_worker, DISCONNECT))
        svc = w.service
        svc.remove_worker(w)
        inflight = w._inflight
        partial = w._partial
        w._inflight = {}
        w._partial = {}
        if inflight:
            count_drop("worker_lost_request", len(inflight))
            exc = ServiceUnAvailableError(svc.name)
            exc.args = (f"The worker serving the {svc.name} Service was lost before replying.",)
            for request_id, client_id in inflight.items():
                self._fail_inflight(client_id, svc, request_id, partial.get(request_id), exc)
        if not svc.workers:
            self._service_gone(svc)

    def _service_gone(self, svc):
        """The last worker of ``svc`` left: fail the requests still waiting."""
        waiting = svc._waiting
        while waiting:
            client_id, request_id, body, _ = waiting.popleft()
            self._service_unavailable(client_id, svc._name_b, request_id, body)

    # -- frontend ---------------------------------------------------------------

    def _on_frontend(self, msgs):
        header = self._mdp_client
        checker = self._zap_checker
        for msg in msgs:
            if len(msg) < 5 or msg[1] or msg[2] != header:
                count_drop("frontend_malformed")  # names no request: nobody to answer
                continue
            try:
                if checker is not None:
                    checker.frontend(msg)
                else:
                    self._route_request(msg, msg[3])
            except Exception:
                self._count_error(msg, True)

    def _route_request(self, msg, service_b):
        """Route ``msg`` = ``[client, '', header, service, request_id, *body]``."""
        if service_b == self._internal_b:
            self._internal_request(msg[0], msg[4], msg[5:])
            return
        svc = self._services_b.get(service_b)
        if svc is None or not svc.workers:
            self._service_unavailable(msg[0], service_b, msg[4], msg[5:])
            return
        if len(msg) < 6:
            self._reply_error(msg[0], service_b, msg[4], _BadRequest("malformed request: no function frame"))
            return
        w = svc._take()
        if w is None:
            if len(svc._waiting) >= Settings.MESSAGE_MAX:
                self._reply_error(msg[0], service_b, msg[4], BusyWorkerError())
            else:
                svc._waiting.append((msg[0], msg[4], msg[5:], self._loop.time() + Settings.TIMEOUT))
            return
        client_id = msg[0]
        w._inflight[msg[4]] = client_id
        # [client, '', MDPC01, service, rid, *body] -> [worker, '', MDPW01, 02, client, '', rid, *body]
        msg[0:4] = (w.identity, b"", self._mdp_worker, REQUEST, client_id, b"")
        lback = self._lback
        if lback is not None:
            lback.send(msg)

    # -- vanished clients and the backlog budget ---------------------------------

    def _client_gone(self, client_id):
        """A send to ``client_id`` found it gone (EHOSTUNREACH): forget it.

        Its backlog is dropped, its requests waiting for capacity are
        dropped, and each of its requests in flight is cancelled at the
        worker (CANCEL), its capacity released; late replies are ignored.
        Every drop is counted.  Cost: one pass over the waiting queues and
        the in-flight maps, once per vanished client (not per message).
        """
        if client_id in self._special_ids:
            return
        lfront = self._lfront
        if lfront is not None:
            lfront.drop_peer(client_id)
        for svc in self.services.values():
            waiting = svc._waiting
            if waiting:
                kept = [e for e in waiting if e[0] != client_id]
                n = len(waiting) - len(kept)
                if n:
                    waiting.clear()
                    waiting.extend(kept)
                    count_drop("client_gone_waiting", n)
        touched = None
        for w in list(self.workers.values()):
            inflight = w._inflight
            if not inflight:
                continue
            rids = [rid for rid, cid in inflight.items() if cid == client_id]
            for rid in rids:
                self._cancel_inflight(w, rid, client_id)
            if rids:
                count_drop("client_gone_inflight", len(rids))
                touched = touched or set()
                touched.add(w.service)
        for t in list(self._runner.active):
            if t[0] == client_id:
                self._runner.cancel(client_id, t[1])
                count_drop("client_gone_internal")
        if touched:
            for svc in touched:
                if svc._waiting:
                    self._dispatch_waiting(svc)

    def _probe_clients(self):
        """Once per heartbeat: find out whether clients with calls pending are still there.

        A client whose calls all wait (for capacity, or on a slow worker)
        receives nothing, so a vanished one would go unnoticed until a
        reply.  Each such client gets a reply with an empty request id (no
        request has it: our client and the original ignore it); a send that
        finds the client gone triggers :meth:`_client_gone`.  Clients with
        messages already waiting in their backlog are skipped (flushing
        those finds out).  Cost: one pass over the waiting queues and the
        in-flight maps per heartbeat.
        """
        lfront = self._lfront
        if lfront is None:
            return
        ids = set()
        for svc in self.services.values():
            for entry in svc._waiting:
                ids.add(entry[0])
        for w in self.workers.values():
            if w._inflight:
                ids.update(w._inflight.values())
        if not ids:
            return
        ids.difference_update(self._special_ids)
        tail = (b"", self._mdp_client, self._internal_b, b"", self._probe_body)
        for client_id in ids:
            if not lfront.peer_backlog(client_id)[0]:
                lfront.send((client_id,) + tail)

    def _cancel_inflight(self, w, request_id, client_id):
        """Forget ``request_id`` at ``w``: release its capacity, tell the worker to stop it."""
        del w._inflight[request_id]
        w.service._give_back(w)
        lback = self._lback
        if lback is not None and w.ready:
            lback.send_forced((w.identity, b"", self._mdp_worker, CANCEL, client_id, b"", request_id))

    def _front_over_budget(self, frames):
        """A reply to a client would exceed the process-wide backlog budget.

        That client's request ends with an error naming the budget (in the
        stream when it is a stream, so a stream never ends with a silent
        gap), and it is cancelled at the worker.
        """
        if len(frames) < 6:
            return
        client_id = frames[0]
        service_b = frames[3]
        request_id = frames[4]
        svc = self._services_b.get(service_b)
        if svc is not None:
            for w in list(svc.workers.values()):
                inflight = getattr(w, "_inflight", None)
                if inflight is not None and inflight.get(request_id) == client_id:
                    self._cancel_inflight(w, request_id, client_id)
                    if svc._waiting:
                        self._dispatch_waiting(svc)
                    break
        if service_b == self._internal_b:
            self._runner.cancel(client_id, request_id)
        exc = BacklogBudgetError(budget_message())
        tag = frames[5]
        if tag == STREAM_TAG or tag == HUGE_TAG:
            if len(frames) == 8 and frames[6] == STREAM_EXC:
                body = tuple(frames[5:])  # already an error: let it through
            else:
                body = (tag, STREAM_EXC, msg_pack(exception_triple(exc, False)))
        else:
            body = (error_body(msg_pack, exc, False),)
        lfront = self._lfront
        if lfront is not None:
            lfront.send_forced((client_id, b"", self._mdp_client, service_b, request_id) + body)

    def _back_over_budget(self, frames):
        """A request to a worker would exceed the budget: the caller gets an error."""
        if len(frames) < 7 or frames[3] != REQUEST:
            return
        w = self.workers.get(frames[0])
        client_id = frames[4]
        request_id = frames[6]
        service_b = self._internal_b
        if w is not None:
            service_b = w.service._name_b
            if w._inflight.get(request_id) == client_id:
                del w._inflight[request_id]
                w.service._give_back(w)
        self._reply_error(client_id, service_b, request_id, BacklogBudgetError(budget_message()))

    def _send_request(self, w, client_id, request_id, body):
        w._inflight[request_id] = client_id
        frames = [w.identity, b"", self._mdp_worker, REQUEST, client_id, b"", request_id]
        frames.extend(body)
        lback = self._lback
        if lback is not None:
            lback.send(frames)

    def _dispatch_waiting(self, svc):
        waiting = svc._waiting
        while waiting:
            w = svc._take()
            if w is None:
                return
            client_id, request_id, body, _ = waiting.popleft()
            self._send_request(w, client_id, request_id, body)

    def _service_unavailable(self, client_id, service_b, request_id, body):
        """Hook: no local worker for the service (the Gate forwards instead)."""
        self._reply_error(client_id, service_b, request_id,
                          ServiceUnAvailableError(service_b.decode("utf-8", "replace")))

    def _reply_error(self, client_id, service_b, request_id, exc):
        self._deliver(client_id, service_b, request_id, (error_body(msg_pack, exc, False),))

    def _deliver(self, client_id, service_b, request_id, body):
        """Send a reply body to whoever asked: a client, the broker itself (or a peer gate)."""
        if client_id in self._special_ids:
            self._deliver_special(client_id, service_b, request_id, body)
            return
        lfront = self._lfront
        if lfront is not None:
            lfront.send((client_id, b"", self._mdp_client, service_b, request_id) + tuple(body))

    def _deliver_special(self, client_id, service_b, request_id, body):
        if client_id == self.identity:
            fut = self.internal_requests.get(request_id)
            if fut is not None:
                dict.pop(self.internal_requests, request_id, None)
                if not fut.done():
                    fut.set_result(list(body))

    def _send_internal_reply(self, client_id, request_id, body):
        self._deliver(client_id, self._internal_b, request_id, body)

    def _internal_request(self, client_id, request_id, body):
        runner = self._runner
        try:
            n = len(body)
            if n < 1 or n > 3:
                raise _BadRequest(f"malformed request: {n} body frames (1 to 3 expected)")
            func_name = msg_unpack(body[0])
            args = msg_unpack(body[1]) if n > 1 else []
            kwargs = msg_unpack(body[2]) if n > 2 else {}
            if not isinstance(args, (list, tuple)) or type(kwargs) is not dict:
                raise _BadRequest("malformed request: bad arguments frames")
            for key in kwargs:
                if type(key) is not str or key.startswith("__"):
                    raise _BadRequest("keyword argument names must be str and must not start with '__'")
            entry = self._internal_table.get(func_name) if type(func_name) is str else None
            if entry is None:
                if Settings.SECURE:
                    raise AttributeError("Function not found.")
                raise AttributeError(f"Function not found: {func_name}")
        except Exception as exc:
            runner.reply_error(client_id, request_id, exc, with_traceback=False)
            return
        kwargs["__client_id"] = client_id
        kwargs["__request_id"] = request_id
        runner.run(client_id, request_id, entry[0], entry[1], args, kwargs)

    # -- backend ----------------------------------------------------------------

    def _on_backend(self, msgs):
        now = self._loop.time()
        header = self._mdp_worker
        workers = self.workers
        checker = self._zap_checker
        for msg in msgs:
            if len(msg) < 4 or msg[1] or msg[2] != header:
                continue
            try:
                if checker is not None:
                    checker.backend(msg)
                elif msg[3] == REPLY:
                    w = workers.get(msg[0])
                    if w is None:
                        self._unknown_worker(msg[0])
                        continue
                    if len(msg) < 8 or msg[5]:
                        count_drop("malformed_reply")
                        continue
                    w.expiry = now + w.heartbeat * w.heartbeat_liveness / 1000
                    self._on_reply(w, msg)
                else:
                    self._backend_command(msg[0], msg[3], msg[4:], now)
            except Exception:
                self._count_error(msg)

    def _count_error(self, msg=None, frontend=False):
        """A message made the broker fail: count it, log the first ones only.

        When ``msg`` names a caller that is waiting (a client request, or a
        worker's reply to a request it was given), the caller gets an error
        reply at once instead of waiting for its timeout.
        """
        self._errors += 1
        count_drop("broker_error")
        if self._errors <= 10 or not self._errors % 10000:
            Mlogger.exception("error #%d while handling a message (dropped)", self._errors)
        if msg is not None:
            try:
                self._fail_caller(msg, frontend)
            except Exception:  # the error reply itself failed: nothing more to do
                Mlogger.debug("could not tell the caller of a failed message", exc_info=True)

    def _fail_caller(self, msg, frontend):
        from gaterpc.zap import _split

        exc = RuntimeError("the broker failed while handling this request")
        zap = self._zap_checker is not None
        if frontend:
            # [client, '', MDPC01, service, (zap...), request_id, *body]
            if len(msg) < 5 or msg[1] or msg[2] != self._mdp_client:
                return
            i = 4
            if zap:
                parsed = _split(msg, 4)
                if parsed is not None:
                    i = parsed[2]
                    if len(msg) <= i:
                        return
            self._reply_error(msg[0], msg[3], msg[i], exc)
            return
        # [worker, '', MDPW01, 03, (zap...), client, '', request_id, *body]: only the
        # worker a request was given to names its caller
        if len(msg) < 4 or msg[3] != REPLY:
            return
        w = self.workers.get(msg[0])
        if w is None:
            return
        i = 4
        if zap:
            parsed = _split(msg, 4)
            if parsed is not None:
                i = parsed[2]
        if len(msg) < i + 3 or msg[i + 1]:
            return
        client_id = msg[i]
        request_id = msg[i + 2]
        if w._inflight.get(request_id) != client_id:
            return
        del w._inflight[request_id]
        tag = w._partial.pop(request_id, None)
        svc = w.service
        svc._give_back(w)
        self._fail_inflight(client_id, svc, request_id, tag, exc)

    def _backend_checked(self, msg):
        """Handle one backend message whose ZAP frames were verified and removed.

        ``msg`` = ``[worker, '', MDPW01, command, ...]``; used by the ZAP checker.
        """
        now = self._loop.time()
        if msg[3] == REPLY:
            w = self.workers.get(msg[0])
            if w is None:
                self._unknown_worker(msg[0])
                return
            if len(msg) < 8 or msg[5]:
                count_drop("malformed_reply")
                return
            w.prolong(now)
            self._on_reply(w, msg)
        else:
            self._backend_command(msg[0], msg[3], msg[4:], now)

    def _on_reply(self, w, msg):
        """``msg`` = ``[worker, '', MDPW01, 03, client, '', rid, *body]`` from a registered worker."""
        client_id = msg[4]
        request_id = msg[6]
        inflight = w._inflight
        if inflight.get(request_id) != client_id:
            count_drop("reply_not_dispatched")
            return
        svc = w.service
        if is_terminal(msg[7:]):
            del inflight[request_id]
            if w._partial:
                w._partial.pop(request_id, None)
            svc._give_back(w)
            if svc._waiting:
                self._dispatch_waiting(svc)
        else:
            # a stream item or HugeData chunk: if the worker dies now, the caller gets
            # a stream-shaped error (a plain error reply would not end its iteration)
            w._partial[request_id] = msg[7]
        if client_id in self._special_ids:
            self._deliver_special(client_id, svc._name_b, request_id, msg[7:])
            return
        # -> [client, '', MDPC01, service, rid, *body]
        msg[0:6] = (client_id, b"", self._mdp_client, svc._name_b)
        lfront = self._lfront
        if lfront is not None:
            lfront.send(msg)

    def _backend_command(self, worker_id, command, frames, now):
        """Non-REPLY backend commands (``frames``: after the command and ZAP frames)."""
        if command == HEARTBEAT:
            w = self.workers.get(worker_id)
            if w is None:
                self._unknown_worker(worker_id)
            elif not frames:
                w.prolong(now)
            else:
                count_drop("malformed_heartbeat")
        elif command == READY:
            self._on_ready(worker_id, frames)
        elif command == DISCONNECT:
            w = self.workers.get(worker_id)
            if w is not None and len(frames) == 1:
                w.ready = False
                self._remove_worker(w, False)
            elif w is not None:
                count_drop("malformed_disconnect")
        elif command == REPLY:
            w = self.workers.get(worker_id)
            if w is None:
                self._unknown_worker(worker_id)
            elif len(frames) >= 4 and not frames[1]:
                w.prolong(now)
                self._on_reply(w, [worker_id, b"", self._mdp_worker, REPLY, *frames])
            else:
                count_drop("malformed_reply")
        else:
            count_drop("unknown_worker_command")

    # -- API of the original (overridable hooks, not on the hot path) -----------

    async def request_backend(self, service_name, client_id, request_id, body, cache=False):
        """Send a request to a worker of ``service_name`` on behalf of ``client_id``.

        With ``client_id == self.identity`` a Future in
        ``internal_requests[request_id]`` resolves to the body frames of the
        first reply message.
        """
        svc = self.services.get(service_name)
        service_b = service_name.encode("utf-8")
        if svc is None or not svc.workers:
            exc = ServiceUnAvailableError(service_name)
            if client_id != self.identity:
                self._reply_error(client_id, service_b, request_id, exc)
            raise exc
        try:
            w = await svc.acquire_idle_worker()
        except (BusyWorkerError, ServiceUnAvailableError) as exc:
            if client_id != self.identity:
                self._reply_error(client_id, service_b, request_id, exc)
            raise
        if client_id == self.identity:
            self.internal_requests[request_id] = self._loop.create_future()
        self._send_request(w, client_id, request_id, [to_bytes(f) for f in body])

    async def disconnect_all(self):
        """Send DISCONNECT to every registered worker and forget them."""
        for w in list(self.workers.values()):
            self._remove_worker(w, True)

    async def register_worker(self, worker_id, max_allowed_request, sock, service):
        """Register a worker of ``service`` (normally done by READY)."""
        self._on_ready(worker_id, [f"{service.name}:{service.description}:{max_allowed_request}".encode()])

    async def ban_worker(self, worker):
        """Ban ``worker`` now (DISCONNECT if it is still ready)."""
        self._remove_worker(worker, True)

    async def now_ban(self, worker):
        """Ban ``worker`` now."""
        self._remove_worker(worker, True)

    async def send_heartbeat(self, worker):
        """Send one HEARTBEAT to ``worker``."""
        if self._lback is not None:
            self._lback.send((worker.identity, b"", self._mdp_worker, HEARTBEAT))

    async def send_to_backend(self, worker, command, option=None, messages=None):
        """Send ``[worker, '', MDPW01, command, *option, *messages]``."""
        wid = worker.identity if hasattr(worker, "identity") else worker
        if messages is None:
            messages = ()
        elif isinstance(messages, (bytes, str)):
            messages = (messages,)
        frames = [wid, b"", self._mdp_worker, to_bytes(command)]
        frames.extend(to_bytes(f) for f in (option or ()))
        frames.extend(to_bytes(f) for f in messages)
        if self._lback is not None:
            self._lback.send(frames)

    async def reply_frontend(self, client_id, service_name, request_id, *body):
        """Send a reply to a client."""
        self._deliver(client_id, to_bytes(service_name), request_id, tuple(to_bytes(b) for b in body))

    async def process_messages_from_frontend(self, request):
        """Handle one frontend message (as received, with the client envelope)."""
        self._on_frontend([list(request)])

    async def process_messages_from_backend(self, messages):
        """Handle one backend message (as received, with the worker envelope)."""
        self._on_backend([list(messages)])

    async def internal_interface(self, client_id, request_id, func_name, args, kwargs):
        """Run the internal function ``func_name`` for ``client_id``."""
        self._internal_request(client_id, request_id,
                               [msg_pack(func_name), msg_pack(tuple(args)), msg_pack(dict(kwargs))])

    # -- the internal service ----------------------------------------------------

    @interface
    def get_services(self, **kwargs):
        """Names of the services, then the internal service."""
        return [*self.services, self._internal_name]

    @interface
    def info(self, **kwargs):
        """``{"my_id": <broker identity>, "services": [names]}``."""
        return {"my_id": self.identity, "services": list(self.services)}

    @interface
    def keepalive(self, heartbeat, **kwargs):
        """Client keepalive: ``b"200"`` for ``b"heartbeat"``, else ``b"400"``."""
        return KEEPALIVE_OK if heartbeat == KEEPALIVE_ARG else KEEPALIVE_BAD

    @interface
    def query_service(self, service_name, **kwargs):
        """The description of a service, or ``None``."""
        svc = self.services.get(service_name) if isinstance(service_name, str) else None
        return svc.description if svc is not None else None
