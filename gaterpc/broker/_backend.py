"""The broker's backend: workers, their replies, heartbeats and expiry.

Workers register with READY, get a HEARTBEAT every interval, and are
removed when they say DISCONNECT, go silent for heartbeat x liveness, or
vanish (a send finds their connection gone).  A reply is accepted only
from the worker its request was given to; the capacity unit is released
when the reply completes the request (a single reply, or the end/error of
a stream or HugeData transfer).  Callers of a worker that is removed get
an error at once.  See ``docs/PROTOCOL.md`` ("Worker commands").

Without a ZAP checker and without overridden reply hooks, a whole batch goes
through :func:`gaterpc._speedups.route.route_replies` (compiled when
available): it completes single replies and hands commands, streams,
HugeData and replies to the broker or a peer gate to the methods below.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

from gaterpc.bookkeeping import RemoteWorker
from gaterpc.counters import count_drop
from gaterpc.exceptions import BusyWorkerError, ServiceUnAvailableError
from gaterpc.global_settings import Settings
from gaterpc.loopio import BacklogBudgetError, budget_message
from gaterpc.protocol import DISCONNECT, HEARTBEAT, READY, REPLY, REQUEST
from gaterpc._speedups.frames import is_terminal
from gaterpc._speedups.route import route_replies
from gaterpc.worker import Service

from ._state import BrokerState, Frames

__all__ = ("BrokerBackend",)

Mlogger = logging.getLogger("gaterpc.majordomo")


class BrokerBackend(BrokerState):
    """Worker registration, replies, heartbeats and expiry (the backend ROUTER)."""

    RemoteServiceClass: type[Service] = Service
    RemoteWorkerClass: type[RemoteWorker] = RemoteWorker

    def _send_heartbeats(self) -> None:
        """Heartbeat every worker; a worker whose connection is gone is removed on the spot.

        When a subclass overrides ``send_heartbeat(worker)``, it is called for
        each worker instead (once per heartbeat interval).
        """
        self._told_unknown.clear()
        lback = self._lback
        if lback is None:
            return
        if self._hook_heartbeat:
            for w in list(self.workers.values()):
                self._spawn(self.send_heartbeat(w))
            return
        frames_tail = (b"", self._mdp_worker, HEARTBEAT)
        # a copy: a send to a vanished worker removes it (on_unreachable) while we iterate
        for wid in list(self.workers):
            lback.send((wid,) + frames_tail)

    def _tick(self, now: float) -> None:
        """Expire silent workers and time out requests waiting for capacity."""
        for w in [w for w in self.workers.values() if now >= w.expiry]:
            Mlogger.warning("worker %s expired", w.identity.hex())
            self._remove_worker(w, True)
        for svc in self.services.values():
            waiting = svc._waiting
            while waiting and waiting[0][3] <= now:
                client_id, request_id, body, _ = waiting.popleft()
                self._reply_error(client_id, svc._name_b, request_id, BusyWorkerError())

    def _forgive_stall(self, late: float) -> None:
        """The broker's loop stalled for ``late`` seconds: push every worker's expiry back by it.

        A worker's heartbeats cannot be read while the loop does not run, so
        a stall must not expire it.  A worker that is really gone still
        expires: each tick moves its expiry back only by that tick's delay.
        """
        for w in self.workers.values():
            w.expiry += late

    def register_service(self, name: str, description: str) -> Service:
        """Create the service ``name`` (the first description wins)."""
        svc = self.services.get(name)
        if svc is None:
            svc = self.RemoteServiceClass(name, description)
            svc._name_b = name.encode("utf-8")
            self.services[name] = svc
            self._services_b[svc._name_b] = svc
        return svc

    def _on_ready(self, worker_id: bytes, frames: Frames) -> None:
        if worker_id in self.workers:
            # A second READY from a registered id bans it (as the original).
            self._remove_worker(self.workers[worker_id], True)
            return
        if len(frames) != 1:
            self._refuse_worker(worker_id, f"READY must carry exactly one body frame, not {len(frames)}")
            return
        sep = Settings.MDP_DESCRIPTION_SEP
        parts: list[str]
        try:
            # bytes(): a body of ZERO_COPY_MIN bytes or more arrives as a read-only memoryview
            parts = bytes(frames[0]).decode("utf-8").split(sep)
        except UnicodeDecodeError:
            parts = []
        if len(parts) != 3:
            self._refuse_worker(worker_id, f"malformed READY body (expected name{sep}description{sep}capacity, "
                                           f"with no {sep!r} in the name or description)")
            return
        name, description, capacity_text = parts
        try:
            capacity = int(capacity_text)
        except ValueError:
            capacity = 0
        if not name or capacity < 1:
            self._refuse_worker(worker_id, "malformed READY body (empty service name, or capacity not an "
                                           "integer >= 1)")
            return
        capacity = min(capacity, 1 << 30)
        svc = self.register_service(name, description)
        if self._hook_register:
            # a subclass overrides register_worker: it registers (super() does the work)
            self._spawn(self.register_worker(worker_id, capacity, self.backend, svc))
            return
        self._register_worker_now(worker_id, capacity, svc)

    def _register_worker_now(self, worker_id: bytes, capacity: int, svc: Service) -> None:
        """Record a worker of ``svc`` with ``capacity``, greet it, give it waiting requests."""
        if worker_id in self.workers:
            return
        lback = self._lback
        w = self.RemoteWorkerClass(worker_id, self.heartbeat, capacity, self.backend,
                                   Settings.MDP_WORKER, svc)
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

    def _worker_ready(self, worker: RemoteWorker, service: Service) -> None:
        """Hook: a worker registered (the Gate tells its peers)."""

    # -- declared here, implemented by the API part ---------------------------------

    async def send_heartbeat(self, worker: RemoteWorker) -> None:
        raise NotImplementedError

    async def register_worker(self, worker_id: bytes, max_allowed_request: int, sock: Any,
                              service: Service) -> None:
        raise NotImplementedError

    async def ban_worker(self, worker: RemoteWorker) -> bool:
        raise NotImplementedError

    async def process_messages_from_backend(self, messages: list[bytes]) -> None:
        raise NotImplementedError

    async def process_reply_command_from_backend(self, service_name: str, messages: list[bytes]) -> None:
        raise NotImplementedError

    async def process_ready_command(self, worker_id: bytes, service_info: Any) -> None:
        raise NotImplementedError

    def _refuse_worker(self, worker_id: bytes, reason: str) -> None:
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

    def _unknown_worker(self, worker_id: bytes) -> None:
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

    def _on_worker_unreachable(self, worker_id: bytes) -> None:
        """The backend could not send to ``worker_id``: its connection is gone."""
        w = self.workers.get(worker_id)
        if w is not None:
            Mlogger.warning("worker %s vanished (connection lost)", worker_id.hex())
            self._remove_worker(w, False)

    def _remove_worker(self, w: RemoteWorker, send_disconnect: bool) -> None:
        """Ban a worker: DISCONNECT (if asked), forget it, fail its requests.

        When a subclass overrides ``ban_worker(worker)``, the ban goes
        through it (in a task); ``super().ban_worker(worker)`` comes back here.
        """
        if self.workers.get(w.identity) is not w:
            return
        if self._hook_ban and not w._banning:
            w._banning = True
            if not send_disconnect:
                w.ready = False  # gone or leaving: the ban sends no DISCONNECT
            self._spawn(self.ban_worker(w))
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

    def _service_gone(self, svc: Service) -> None:
        """The last worker of ``svc`` left: fail the requests still waiting."""
        waiting = svc._waiting
        while waiting:
            client_id, request_id, body, _ = waiting.popleft()
            self._service_unavailable(client_id, svc._name_b, request_id, body)

    def _on_backend(self, msgs: list[list[bytes]]) -> None:
        """The backend socket's batch callback."""
        if self._hook_back:
            # a subclass overrides process_messages_from_backend: one call per message
            for msg in msgs:
                self._spawn(self.process_messages_from_backend(msg))
            return
        self._backend_batch(msgs)

    def _backend_batch(self, msgs: list[list[bytes]]) -> None:
        """Handle received backend messages (``[worker, '', MDPW01, command, ...]``)."""
        now = self._loop.time()
        checker = self._zap_checker
        if checker is None and not self._hook_reply:
            route_replies(self, msgs, now)  # the fast path (compiled when available)
            return
        header = self._mdp_worker
        workers = self.workers
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

    def _count_error(self, msg: Optional[list[bytes]] = None, frontend: bool = False) -> None:
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

    def _fail_caller(self, msg: list[bytes], frontend: bool) -> None:
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

    def _backend_checked(self, msg: list[bytes]) -> None:
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

    def _on_reply(self, w: RemoteWorker, msg: list[bytes]) -> None:
        """``msg`` = ``[worker, '', MDPW01, 03, client, '', rid, *body]`` from a registered worker."""
        client_id = msg[4]
        request_id = msg[6]
        inflight = w._inflight
        if inflight.get(request_id) != client_id:
            count_drop("reply_not_dispatched")
            return
        svc = w.service
        if is_terminal(msg[7:]):
            svc.stat_served += 1
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
        if self._hook_reply:
            # a subclass overrides process_reply_command_from_backend or reply_frontend
            if self._hook_reply_command:
                self._spawn(self.process_reply_command_from_backend(svc.name, msg[4:]))
            else:
                self._deliver(client_id, svc._name_b, request_id, msg[7:])
            return
        if client_id in self._special_ids:
            self._deliver_special(client_id, svc._name_b, request_id, msg[7:])
            return
        # -> [client, '', MDPC01, service, rid, *body]
        msg[0:6] = (client_id, b"", self._mdp_client, svc._name_b)
        lfront = self._lfront
        if lfront is not None:
            lfront.send(msg)

    def _backend_command(self, worker_id: bytes, command: bytes, frames: list[bytes], now: float) -> None:
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
            if self._hook_ready and len(frames) == 1 and worker_id not in self.workers:
                self._spawn(self.process_ready_command(worker_id, bytes(frames[0])))
            else:
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

    def _back_over_budget(self, frames: Sequence[bytes]) -> None:
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
