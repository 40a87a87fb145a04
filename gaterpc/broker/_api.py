"""The original's overridable broker API, and how overrides are honoured.

Every method here has the original's name and arguments.  Called directly,
each does what its name says.  When a subclass overrides one of the hooks
below, the broker calls the override at the point of the flow where the
original called it (in a task, as the original awaited it there) and the
override's ``super()`` call does the work; when nothing is overridden, the
broker never looks at them (the per-message path stays the fast one).
Overrides are detected once, at construction (:meth:`BrokerAPI._detect_hooks`).

=====================================  ==========================================================
hook                                   called
=====================================  ==========================================================
``process_messages_from_frontend``     for every message received on the frontend
``process_messages_from_backend``      for every message received on the backend
``process_reply_command_from_backend`` for every reply of a worker (service name, frames after
                                       the command), after its capacity bookkeeping
``reply_frontend``                     for every reply to a client (``service_name`` as str)
``process_ready_command``              for a READY from an unregistered worker (its body frame)
``register_worker``                    when a READY is valid (id, capacity, backend socket,
                                       service)
``ban_worker``                         when a worker is removed (expired, vanished, DISCONNECT,
                                       banned)
``send_heartbeat``                     for each worker, once per heartbeat interval
``internal_interface``                 for each internal-service call, after decoding
``request_zap``                        with ZAP on, for each client request (``channel=b"frontend"``),
                                       worker message (request id ``b"worker_"`` + command,
                                       ``b"backend"``) and gate command (``b"gate_"`` + command,
                                       ``b"gate"``); its verdict decides
``process_replies_from_zap``           for each message read from the ZAP socket
                                       (``['', version, id, code, text, user id, metadata]``)
=====================================  ==========================================================

See README.md ("Other changes") and ``docs/AUTH.md`` (the two ZAP hooks).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional, Sequence, Union

from gaterpc.bookkeeping import RemoteWorker
from gaterpc.exceptions import BusyWorkerError, ServiceUnAvailableError
from gaterpc.helpers import to_bytes
from gaterpc.protocol import HEARTBEAT
from gaterpc.worker import Service

from ._internal import BrokerInternal

__all__ = ("BrokerAPI",)

Mlogger = logging.getLogger("gaterpc.majordomo")


def _frame(value: Any) -> Any:
    """``to_bytes``, except that a ``memoryview`` (a large received frame) is sent as it is."""
    return value if type(value) is memoryview else to_bytes(value)

#: hook name -> the flag the broker checks
_HOOKS = {
    "process_messages_from_frontend": "_hook_front",
    "process_messages_from_backend": "_hook_back",
    "process_reply_command_from_backend": "_hook_reply_command",
    "reply_frontend": "_hook_reply_frontend",
    "process_ready_command": "_hook_ready",
    "register_worker": "_hook_register",
    "ban_worker": "_hook_ban",
    "send_heartbeat": "_hook_heartbeat",
    "internal_interface": "_hook_internal",
    "request_zap": "_hook_zap",
    "process_replies_from_zap": "_hook_zap_replies",
}


def _user_override(cls: type, name: str) -> bool:
    """True when a class of ``cls``'s MRO outside this package defines ``name``.

    Our own subclasses (``Gate``) define some of these names for their own
    use; only a user's definition turns the hook on.
    """
    for klass in cls.__mro__:
        if klass.__module__.startswith("gaterpc."):
            continue
        if name in vars(klass):
            return True
    return False


class BrokerAPI(BrokerInternal):
    """The original's overridable methods (see the module doc for when each is called)."""

    def _detect_hooks(self) -> None:
        """Look once at which hooks the class overrides (sets the ``_hook_*`` flags)."""
        cls = type(self)
        for name, flag in _HOOKS.items():
            setattr(self, flag, _user_override(cls, name))
        self._hook_reply = self._hook_reply_command or self._hook_reply_frontend
        self._hook_tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        """Run an overridden hook in a task of its own (failures are logged)."""
        task = self._loop.create_task(coro)
        self._hook_tasks.add(task)
        task.add_done_callback(self._hook_done)

    def _hook_done(self, task: asyncio.Task[Any]) -> None:
        self._hook_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._errors += 1
            Mlogger.error("overridden hook failed: %r", task.exception())

    async def request_backend(self, service_name: str, client_id: bytes, request_id: bytes, body: Sequence[Any],
                              cache: bool = False) -> None:
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
        self._send_request(w, client_id, request_id, [_frame(f) for f in body])

    async def disconnect_all(self) -> None:
        """Send DISCONNECT to every registered worker and forget them."""
        for w in list(self.workers.values()):
            self._remove_worker(w, True)


    async def register_worker(self, worker_id: bytes, max_allowed_request: int, sock: Any,
                              service: Service) -> None:
        """Register a worker of ``service`` with ``max_allowed_request`` units of capacity."""
        if service.name not in self.services:
            self.services[service.name] = service
            service._name_b = service.name.encode("utf-8")
            self._services_b[service._name_b] = service
        self._register_worker_now(worker_id, max_allowed_request, service)

    async def ban_worker(self, worker: RemoteWorker) -> bool:
        """Ban ``worker``: DISCONNECT if it is still ready, forget it, fail its requests."""
        worker._banning = True
        self._remove_worker(worker, True)
        return True

    async def now_ban(self, worker: RemoteWorker) -> None:
        """Ban ``worker`` now."""
        await self.ban_worker(worker)

    async def send_heartbeat(self, worker: RemoteWorker) -> None:
        """Send one HEARTBEAT to ``worker``."""
        if self._lback is not None:
            self._lback.send((worker.identity, b"", self._mdp_worker, HEARTBEAT))

    async def send_to_backend(self, worker: Union[RemoteWorker, bytes], command: Any,
                              option: Optional[Sequence[Any]] = None, messages: Any = None) -> None:
        """Send ``[worker, '', MDPW01, command, *option, *messages]``."""
        wid = worker.identity if isinstance(worker, RemoteWorker) else worker
        if messages is None:
            messages = ()
        elif isinstance(messages, (bytes, str)):
            messages = (messages,)
        frames = [wid, b"", self._mdp_worker, to_bytes(command)]
        frames.extend(_frame(f) for f in (option or ()))
        frames.extend(_frame(f) for f in messages)
        if self._lback is not None:
            self._lback.send(frames)

    async def reply_frontend(self, client_id: bytes, service_name: Any, request_id: Any, *body: Any) -> None:
        """Send a reply to a client."""
        if client_id in self._special_ids:
            self._deliver_special(client_id, to_bytes(service_name), to_bytes(request_id),
                                  tuple(_frame(b) for b in body))
            return
        lfront = self._lfront
        if lfront is not None:
            lfront.send((client_id, b"", self._mdp_client, to_bytes(service_name), to_bytes(request_id))
                        + tuple(_frame(b) for b in body))

    async def process_messages_from_frontend(self, request: list[bytes]) -> None:
        """Handle one frontend message (as received, with the client envelope)."""
        self._frontend_batch([list(request)])

    async def process_messages_from_backend(self, messages: list[bytes]) -> None:
        """Handle one backend message (as received, with the worker envelope)."""
        self._backend_batch([list(messages)])

    async def process_reply_command_from_backend(self, service_name: str, messages: list[bytes]) -> None:
        """Pass a worker's reply ``[client_id, '', request_id, *body]`` to its caller."""
        if len(messages) < 4 or messages[1]:
            return
        client_id, _, request_id, *body = messages
        self._deliver(client_id, to_bytes(service_name), request_id, tuple(body))

    async def process_ready_command(self, worker_id: bytes, service_info: Any) -> None:
        """Register a worker from its READY body ``"name:description:capacity"``."""
        self._on_ready(worker_id, [to_bytes(service_info)])

    async def internal_interface(self, client_id: bytes, request_id: bytes, func_name: Any, args: Any,
                                 kwargs: dict[str, Any]) -> None:
        """Run the internal function ``func_name`` for ``client_id`` and reply."""
        self._run_internal(client_id, request_id, func_name, tuple(args), dict(kwargs))

    async def request_zap(self, identity: bytes, address: bytes, request_id: bytes, mechanism: bytes,
                          credentials: tuple[bytes, ...], channel: bytes = b"frontend") -> bool:
        """Ask the ZAP service about ``identity``'s credentials; True when accepted.

        ``channel`` is ``b"frontend"``, ``b"backend"`` or ``b"gate"``.
        Verdicts are cached like the broker's own checks; False when ZAP is
        off, when the service refuses, or when it does not answer within
        ``Settings.ZAP_REPLY_TIMEOUT``.
        """
        checker = self._zap_checker
        if checker is None:
            return False
        return await checker.ask(identity, address, request_id, mechanism, credentials, channel)

    async def process_replies_from_zap(self, replies: list[bytes]) -> None:
        """Handle one reply of the ZAP service (``['', version, id, code, text, user, metadata]``).

        Replies with another frame count or an unknown id are ignored.
        """
        checker = self._zap_checker
        if checker is not None:
            checker._on_replies([[to_bytes(f) for f in replies]])
