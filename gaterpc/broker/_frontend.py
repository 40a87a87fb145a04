"""The broker's frontend: routing client requests, vanished clients, the backlog budget.

A request is forwarded to a worker with spare capacity (round robin, O(1))
by rewriting the received frame list in place; requests that find no
capacity wait in the service's FIFO.  A client found gone when the broker
sends to it is forgotten with everything it had pending, and clients with
calls pending are probed once per heartbeat.  See ``docs/PROTOCOL.md``
("Client requests").

Without a ZAP checker (and without an overridden
``process_messages_from_frontend``) a whole batch goes through
:func:`gaterpc._speedups.route.route_requests` (compiled when available):
it routes the requests that find a worker with spare capacity and hands
every other message to :meth:`BrokerFrontend._route_request`.
"""

from __future__ import annotations

from typing import Any, Sequence

from gaterpc.counters import count_drop, count_event
from gaterpc.exceptions import BusyWorkerError
from gaterpc.global_settings import Settings
from gaterpc.loopio import BacklogBudgetError, budget_message
from gaterpc.protocol import (
    CREDIT, CREDIT_HEADER, HUGE_TAG, REQUEST, STREAM_EXC, STREAM_TAG, error_body, exception_triple,
)
from gaterpc.serialization import msg_pack
from gaterpc.wire import BadRequest
from gaterpc._speedups.route import route_requests

from ._backend import BrokerBackend
from ._state import Frames

__all__ = ("BrokerFrontend",)


class BrokerFrontend(BrokerBackend):
    """Client requests in, replies out (the frontend ROUTER)."""

    def _on_frontend(self, msgs: list[list[bytes]]) -> None:
        """The frontend socket's batch callback."""
        if self._hook_front:
            # a subclass overrides process_messages_from_frontend: one call per message
            for msg in msgs:
                self._spawn(self.process_messages_from_frontend(msg))
            return
        self._frontend_batch(msgs)

    def _frontend_batch(self, msgs: list[list[bytes]]) -> None:
        """Handle received frontend messages (``[client, '', MDPC01, service, ...]``)."""
        checker = self._zap_checker
        if checker is None:
            route_requests(self, msgs)  # the fast path (compiled when available)
            return
        header = self._mdp_client
        for msg in msgs:
            if len(msg) < 5 or msg[1] or msg[2] != header:
                if len(msg) == 6 and not msg[1] and msg[2] == CREDIT_HEADER:
                    try:
                        self._client_credit(msg)  # no ZAP frames: it only reaches the client's own requests
                    except Exception:
                        self._count_error(msg, True)
                else:
                    count_drop("frontend_malformed")  # names no request: nobody to answer
                continue
            try:
                if self._hook_zap:
                    self._spawn(self._authenticate_with_hook(msg))
                else:
                    checker.frontend(msg)
            except Exception:
                self._count_error(msg, True)

    def _client_credit(self, msg: list[bytes]) -> None:
        """``[client, '', CREDIT_HEADER, service, request_id, credit]``: pass it to the worker.

        HugeData flow control (docs/PROTOCOL.md, "HugeData flow control"): the
        worker that has ``request_id`` of this very client in flight gets
        ``[worker, '', MDPW01, CREDIT, client, '', request_id, credit]``; a
        gate passes the credit of a request it forwarded on to that peer
        (:meth:`_credit_onward`).  A credit that is not 8 bytes is malformed
        (a drop, counted).  A credit for a request that is not in flight here
        is normal -- the last ones of a transfer arrive after its end -- and
        only counted, as the event ``hugedata_credit_unmatched``.  Cost: one
        look at each worker of the service, a few dozen times per transfer.
        """
        client_id, service_b, request_id, credit = msg[0], bytes(msg[3]), bytes(msg[4]), bytes(msg[5])
        if len(credit) != 8:
            count_drop("frontend_malformed")
            return
        if not self._credit_worker(client_id, service_b, request_id, credit) \
                and not self._credit_onward(client_id, service_b, request_id, credit):
            count_event("hugedata_credit_unmatched")

    def _credit_worker(self, client_id: bytes, service_b: bytes, request_id: bytes, credit: bytes) -> bool:
        """Send CREDIT to the local worker that has ``request_id`` of ``client_id`` in flight.

        False when no worker of the service has it.
        """
        svc = self._services_b.get(service_b)
        lback = self._lback
        if svc is not None and lback is not None:
            for w in svc.workers.values():
                if w._inflight.get(request_id) == client_id:
                    if w.ready:
                        lback.send((w.identity, b"", self._mdp_worker, CREDIT, client_id, b"", request_id,
                                    credit))
                    return True
        return False

    def _credit_onward(self, client_id: bytes, service_b: bytes, request_id: bytes, credit: bytes) -> bool:
        """A credit for a request no local worker has: a broker has nowhere else to look.

        :class:`gaterpc.gate.Gate` overrides this to pass the credit to the
        peer gate it forwarded the request to.
        """
        return False

    def _route_request(self, msg: list[bytes], service_b: bytes) -> None:
        """Route ``msg`` = ``[client, '', header, service, request_id, *body]``.

        Body frames of ``ZERO_COPY_MIN`` bytes or more are read-only memoryviews
        (forwarded without a copy); an oversized service name or request id is
        made ``bytes`` here, off the fast path, so everything that keeps it as a
        key or decodes it gets ``bytes``.
        """
        if type(service_b) is not bytes:
            service_b = msg[3] = bytes(service_b)
        if type(msg[4]) is not bytes:
            msg[4] = bytes(msg[4])
        if service_b == self._internal_b:
            self._internal_request(msg[0], msg[4], msg[5:])
            return
        svc = self._services_b.get(service_b)
        if svc is None or not svc.workers:
            self._service_unavailable(msg[0], service_b, msg[4], msg[5:])
            return
        svc.stat_requests += 1
        if len(msg) < 6:
            self._reply_error(msg[0], service_b, msg[4], BadRequest("malformed request: no function frame"))
            return
        w = svc._take()
        if w is None:
            if len(svc._waiting) >= Settings.MESSAGE_MAX:
                self._reply_error(msg[0], service_b, msg[4], BusyWorkerError())
            else:
                svc._waiting.append((msg[0], msg[4], msg[5:], self._loop.time() + Settings.TIMEOUT))
                self._request_waiting(svc)
            return
        client_id = msg[0]
        w._inflight[msg[4]] = client_id
        # [client, '', MDPC01, service, rid, *body] -> [worker, '', MDPW01, 02, client, '', rid, *body]
        msg[0:4] = (w.identity, b"", self._mdp_worker, REQUEST, client_id, b"")
        lback = self._lback
        if lback is not None:
            lback.send(msg)

    def _client_gone(self, client_id: bytes) -> None:
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
        touched: Any = None
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

    def _probe_clients(self) -> None:
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
        ids: set[bytes] = set()
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

    def _front_over_budget(self, frames: Sequence[bytes]) -> None:
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

    async def _authenticate_with_hook(self, msg: list[bytes]) -> None:
        """A subclass overrides ``request_zap``: ask it, then route or refuse ``msg``."""
        from gaterpc.zap import _split

        parsed = _split(msg, 4)
        if parsed is None or len(msg) <= parsed[2]:
            checker = self._zap_checker
            if checker is not None:
                checker.frontend(msg)  # refused (or dropped) exactly as without the hook
            return
        mechanism, credentials, end = parsed
        ok = await self.request_zap(msg[0], msg[0], msg[end], mechanism, tuple(credentials),
                                    channel=b"frontend")
        if ok:
            del msg[4:end]
            self._route_request(msg, msg[3])
        else:
            exc = PermissionError("authentication failed")
            self._reply_error(msg[0], msg[3], msg[end], exc)

    def _request_waiting(self, svc: Any) -> None:
        """Hook: a request found no spare capacity and was queued in ``svc._waiting``.

        Called only on that path (never for a request given to a worker at
        once); the Gate uses it to spill requests over to peer gates.
        """

    # -- declared here, implemented by the API part ---------------------------------

    async def process_messages_from_frontend(self, request: list[bytes]) -> None:
        raise NotImplementedError

    async def request_zap(self, identity: bytes, address: bytes, request_id: bytes, mechanism: bytes,
                          credentials: tuple[bytes, ...], channel: bytes = b"frontend") -> bool:
        raise NotImplementedError

    def _internal_request(self, client_id: bytes, request_id: bytes, body: Frames) -> None:
        raise NotImplementedError
