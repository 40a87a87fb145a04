"""State shared by the broker's parts, and the primitives that deliver replies.

:class:`BrokerState` declares what every part of
:class:`~gaterpc.broker.AMajordomo` reads (the sockets, the services, the
workers) and holds the few operations all of them use: send a request to a
worker, send a reply body to whoever asked (a client, the broker itself or a
peer gate), fail a request.  See ``docs/ARCHITECTURE.md`` for the map of the
broker package.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional, Sequence

from gaterpc.exceptions import ServiceUnAvailableError
from gaterpc.protocol import CANCEL, REQUEST, STREAM_EXC, error_body, exception_triple
from gaterpc.serialization import msg_pack

if TYPE_CHECKING:
    from gaterpc.bookkeeping import RemoteWorker
    from gaterpc.cache import KVLRUCache
    from gaterpc.execute import Runner
    from gaterpc.loopio import LoopSocket
    from gaterpc.worker import Service
    from gaterpc.zap import ZapChecker

__all__ = ("BrokerState", "InternalRequests")

Frames = Sequence[bytes]


class InternalRequests(dict[bytes, "asyncio.Future[Any]"]):
    """``request id -> Future`` of requests the broker sent itself.

    Entries are removed when they resolve; ``pop`` of a missing id returns
    ``None`` instead of raising, so code written for the original (which
    pops after awaiting) keeps working.
    """

    def pop(self, key: Any, *default: Any) -> Any:
        return super().pop(key, default[0] if default else None)


class BrokerState:
    """Attributes of the broker and the reply/request primitives its parts share."""

    identity: bytes
    ctx: Any
    frontend: Any
    backend: Any
    zap: Any
    clients: set[bytes]
    services: dict[str, Service]
    workers: dict[bytes, RemoteWorker]
    frontend_tasks: set[asyncio.Task[Any]]
    backend_tasks: set[asyncio.Task[Any]]
    zap_tasks: set[asyncio.Task[Any]]
    zap_addr: str
    zap_domain: bytes
    zap_replies: dict[bytes, asyncio.Future[Any]]
    zap_cache: KVLRUCache
    heartbeat: int
    internal_func: dict[str, Any]
    internal_tasks: dict[asyncio.Task[Any], Any]
    internal_requests: InternalRequests
    cache_request: dict[Any, Any]
    running: bool
    thread_executor: Any
    process_executor: Any
    _loop: asyncio.AbstractEventLoop
    _lfront: Optional[LoopSocket]
    _lback: Optional[LoopSocket]
    _services_b: dict[bytes, Service]
    _special_ids: set[bytes]
    _zap_checker: Optional[ZapChecker]
    _closed: bool
    _errors: int
    _told_unknown: set[bytes]
    _internal_table: dict[str, Any]
    _runner: Runner
    _mdp_client: bytes
    _mdp_worker: bytes
    _internal_name: str
    _internal_b: bytes
    _probe_body: bytes
    # which of the original's hooks a subclass overrides (see gaterpc.broker._api)
    _hook_front: bool
    _hook_back: bool
    _hook_reply: bool
    _hook_reply_frontend: bool
    _hook_ban: bool
    _hook_heartbeat: bool
    _hook_register: bool
    _hook_internal: bool
    _hook_zap: bool
    _hook_zap_replies: bool
    _hook_reply_command: bool
    _hook_ready: bool

    # -- implemented by the later parts (declared for the earlier ones) --------

    def _remove_worker(self, w: RemoteWorker, send_disconnect: bool) -> None:
        raise NotImplementedError

    def _spawn(self, coro: Any) -> None:
        raise NotImplementedError

    async def reply_frontend(self, client_id: bytes, service_name: Any, request_id: Any, *body: Any) -> None:
        raise NotImplementedError

    # -- primitives -------------------------------------------------------------

    def _reply_error(self, client_id: bytes, service_b: bytes, request_id: bytes, exc: BaseException) -> None:
        """Send the error reply for ``exc`` to whoever asked."""
        svc = self._services_b.get(service_b)
        if svc is not None:
            svc.stat_errors += 1
        self._deliver(client_id, service_b, request_id, (error_body(msg_pack, exc, False),))

    def _deliver(self, client_id: bytes, service_b: bytes, request_id: bytes, body: Frames) -> None:
        """Send a reply body to whoever asked: a client, the broker itself (or a peer gate)."""
        if client_id in self._special_ids:
            self._deliver_special(client_id, service_b, request_id, body)
            return
        if self._hook_reply_frontend:
            # a subclass overrides reply_frontend: every reply to a client goes through it
            self._spawn(self.reply_frontend(client_id, bytes(service_b).decode("utf-8", "replace"), request_id,
                                            *body))
            return
        lfront = self._lfront
        if lfront is not None:
            lfront.send((client_id, b"", self._mdp_client, service_b, request_id) + tuple(body))

    def _deliver_special(self, client_id: bytes, service_b: bytes, request_id: bytes, body: Frames) -> None:
        """A reply to the broker itself (a peer gate's in ``Gate``)."""
        if client_id == self.identity:
            fut = self.internal_requests.get(request_id)
            if fut is not None:
                dict.pop(self.internal_requests, request_id, None)
                if not fut.done():
                    fut.set_result(list(body))

    def _send_internal_reply(self, client_id: bytes, request_id: bytes, body: Frames) -> None:
        self._deliver(client_id, self._internal_b, request_id, body)

    def _send_request(self, w: RemoteWorker, client_id: bytes, request_id: bytes, body: Frames) -> None:
        w._inflight[request_id] = client_id
        frames: list[bytes] = [w.identity, b"", self._mdp_worker, REQUEST, client_id, b"", request_id]
        frames.extend(body)
        lback = self._lback
        if lback is not None:
            lback.send(frames)

    def _dispatch_waiting(self, svc: Service) -> None:
        waiting = svc._waiting
        while waiting:
            w = svc._take()
            if w is None:
                return
            client_id, request_id, body, _ = waiting.popleft()
            self._send_request(w, client_id, request_id, body)

    def _service_unavailable(self, client_id: bytes, service_b: bytes, request_id: bytes, body: Frames) -> None:
        """Hook: no local worker for the service (the Gate forwards instead)."""
        self._reply_error(client_id, service_b, request_id,
                          ServiceUnAvailableError(bytes(service_b).decode("utf-8", "replace")))

    def _fail_inflight(self, client_id: bytes, svc: Service, request_id: bytes, tag: Optional[bytes],
                       exc: BaseException) -> None:
        """Fail one dispatched request; ``tag`` is the stream/HugeData tag if replies had begun."""
        if tag is None:
            self._reply_error(client_id, svc._name_b, request_id, exc)
        else:
            # the caller already iterates a stream or assembles a HugeData: end it with an error
            self._deliver(client_id, svc._name_b, request_id,
                          (tag, STREAM_EXC, msg_pack(exception_triple(exc, False))))

    def _cancel_inflight(self, w: RemoteWorker, request_id: bytes, client_id: bytes) -> None:
        """Forget ``request_id`` at ``w``: release its capacity, tell the worker to stop it."""
        del w._inflight[request_id]
        w.service._give_back(w)
        lback = self._lback
        if lback is not None and w.ready:
            lback.send_forced((w.identity, b"", self._mdp_worker, CANCEL, client_id, b"", request_id))
