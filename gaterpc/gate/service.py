"""The gate's own service: capacity notices, event handlers, calls to peers, ``wait_for_service``.

* When a local worker registers or leaves, the gate tells its ready peers
  the new total capacity of that service (notice ``UpdateActiveService``,
  0 when gone); peers' notices ``UpdateService``/``UpdateActiveService``
  update what this gate may forward to them.
* :meth:`Gate.register_event_handler` / :meth:`Gate.send_notice_command`:
  user notices between gates.
* :meth:`Gate.call_gate` calls a method of a peer's internal ``Gate`` service;
  :meth:`Gate.wait_for_service` waits until a service is reachable.
* The internal service's ``get_services``/``query_service`` also list what
  only peers provide.

See ``docs/GATE.md``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine, Optional
from uuid import uuid4

from gaterpc.counters import count_drop
from gaterpc.global_settings import Settings
from gaterpc.helpers import interface, to_bytes
from gaterpc.protocol import GATE_NOTICE
from gaterpc.serialization import msg_pack

from ._typed import GateUnAvailableError
from ._base import _GateBase
from ._common import Frames, _remote_error_info
from .peers import RemoteGate


class _ServiceMixin(_GateBase):
    """Notices, event handlers, calls to peers and the internal service."""

    def _service_capacity(self, svc: Any) -> int:
        return int(min(sum(w.max_allowed_request + len(w._inflight) for w in svc.workers.values()),
                       Settings.MESSAGE_MAX))

    def _worker_ready(self, worker: Any, service: Any) -> None:
        super()._worker_ready(worker, service)
        self._notify_capacity(service)

    def _remove_worker(self, w: Any, send_disconnect: bool) -> None:
        registered = self.workers.get(w.identity) is w
        super()._remove_worker(w, send_disconnect)
        if registered and not self._closed:
            self._notify_capacity(w.service)

    def _notify_capacity(self, svc: Any) -> None:
        if not self.gate_cluster._ready_workers:
            return
        self._broadcast_notice(uuid4().bytes, b"UpdateActiveService",
                               (msg_pack(svc.name), msg_pack(self._service_capacity(svc))))

    def _broadcast_notice(self, notice_id: bytes, event_b: bytes, body: tuple[bytes, ...]) -> None:
        frames = (*self._head[GATE_NOTICE], notice_id, event_b, *body)
        for gate in list(self.gate_cluster._ready_workers.values()):
            lsock = gate._lsock
            if lsock is not None:
                lsock.send(frames)
                gate._sent = True

    def register_event_handler(self, name: str, coro_func: Callable[..., Coroutine[Any, Any, Any]]) -> None:
        """Register the coroutine function handling notices of event ``name``."""
        self.event_handlers[name] = coro_func

    async def send_notice_command(self, notice_id: bytes | str, event_name: bytes | str, body: Any) -> None:
        """Send a notice to every ready peer (fire and forget)."""
        if isinstance(body, (bytes, str)):
            body = (body,)
        self._broadcast_notice(to_bytes(notice_id), to_bytes(event_name),
                               tuple(to_bytes(b) for b in (body or ())))

    def _on_notice(self, gate: RemoteGate, notice_id: bytes, event_b: bytes, body: Frames) -> None:
        try:
            event = event_b.decode("utf-8")
        except UnicodeDecodeError:
            count_drop("gate_notice_malformed")
            return
        handler = self.event_handlers.get(event)
        if handler is None:
            count_drop("gate_notice_unhandled")
            return
        self._gate_task(handler(gate, *body), name=f"{event}-{notice_id.hex()}")

    async def process_reply_command_from_backend(self, service_name: bytes | str, messages: Frames) -> None:
        """Handle a worker reply (``[client, '', rid, *body]``)."""
        if len(messages) < 4 or messages[1]:
            return
        client_id, _, request_id, *body = messages
        self._deliver(client_id, to_bytes(service_name), request_id, tuple(body))

    async def process_ready_command(self, worker_id: bytes, service_info: bytes | str) -> None:
        """Handle a worker's READY body ``"name:description:capacity"``."""
        self._on_ready(worker_id, [to_bytes(service_info)])

    async def call_gate(self, gate: RemoteGate | bytes, func_name: str, *args: Any,
                        timeout: Optional[float] = None, **kwargs: Any) -> Any:
        """Call ``func_name`` of a peer's internal service (``Gate``) and return its result.

        A stream comes back as a ``StreamReply``; errors raise ``RemoteException``.
        """
        if isinstance(gate, bytes):
            peer = self.gate_cluster.get_workers().get(gate)
            if peer is None:
                raise GateUnAvailableError()
            gate = peer
        rid = uuid4().bytes
        fut = self._loop.create_future()
        self.gate_replies[rid] = fut
        gate._calls.add(rid)
        try:
            await self.send_whisper_command(
                gate, rid, self._internal_name,
                (msg_pack(func_name), msg_pack(tuple(args)), msg_pack(dict(kwargs))))
            reply = await asyncio.wait_for(fut, timeout or Settings.REPLY_TIMEOUT)
        finally:
            self.gate_replies.pop(rid)
            gate._calls.discard(rid)
            partial = self._gate_streams.get(rid)
            if partial is not None and hasattr(partial, "feed"):  # an unfinished HugeData transfer
                del self._gate_streams[rid]
                partial.close()
        if isinstance(reply, dict):
            if reply.get("exception"):
                raise _remote_error_info(reply["exception"])
            return reply.get("result")
        return reply

    def service_reachable(self, service_name: str) -> bool:
        """True when a request for ``service_name`` can be served now (a local worker or a ready peer)."""
        svc = self.services.get(service_name)
        if svc is not None and svc.workers:
            return True
        return service_name in self.gate_cluster.services

    async def wait_for_service(self, service_name: str, timeout: Optional[float] = None) -> None:
        """Return once ``service_name`` is reachable through this gate (locally or on a peer gate).

        Raises ``TimeoutError`` after ``timeout`` seconds (default
        ``Settings.TIMEOUT``).  Typical use: after :meth:`connect_gate`, wait
        until the peer has joined and told its services before clients call them.
        """
        if not isinstance(service_name, str) or not service_name:
            raise TypeError("service_name must be a non-empty str")
        timeout = Settings.TIMEOUT if timeout is None else float(timeout)
        if timeout < 0:
            raise ValueError("timeout must be >= 0")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = max(0.01, min(0.05, self.heartbeat / 4000))
        while not self.service_reachable(service_name):
            left = deadline - loop.time()
            if left <= 0:
                peers = len(self.gate_cluster.get_workers())
                pending = len(self.gate_cluster.unready_gates)
                raise TimeoutError(
                    f"service {service_name!r} is not reachable through gate {self.identity.hex()} "
                    f"after {timeout:g} s (no local worker; {peers} peer gate(s) joined, "
                    f"{pending} pending, none advertising it)")
            await asyncio.sleep(min(interval, left))

    @interface
    def get_services(self, **kwargs: Any) -> list[str]:
        """Local services, ``Gate``, then services only peers provide."""
        local = [*self.services]
        extra = [s for s in self.gate_cluster.services if s not in self.services]
        return [*local, self._internal_name, *extra]

    @interface
    def query_service(self, service_name: Any, **kwargs: Any) -> Optional[str]:
        """A local service's description, ``"GateCluster.<name>"`` for a peer's, else ``None``."""
        if not isinstance(service_name, str):
            return None
        svc = self.services.get(service_name)
        if svc is not None:
            description: Optional[str] = svc.description
            return description
        if service_name in self.gate_cluster.services:
            return f"{self.gate_cluster.name}.{service_name}"
        return None
