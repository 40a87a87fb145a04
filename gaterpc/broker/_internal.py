"""The broker's internal service (``Gate``): the broker's own ``@interface`` methods.

Clients call it like any service (``await client.Gate.get_services()``);
its requests are decoded by :func:`gaterpc.wire.decode_request` (the same
checks and messages as a worker's) and run by the broker's
:class:`~gaterpc.execute.Runner` with the extra keyword arguments
``__client_id`` and ``__request_id``.  Subclasses add methods with
``@interface``; see ``docs/PROTOCOL.md`` ("Internal service").
"""

from __future__ import annotations

from typing import Any, Optional

from gaterpc.execute import collect_interfaces
from gaterpc.global_settings import Settings
from gaterpc.helpers import interface
from gaterpc.protocol import KEEPALIVE_ARG, KEEPALIVE_BAD, KEEPALIVE_OK
from gaterpc.wire import decode_request

from ._frontend import BrokerFrontend
from ._state import Frames

__all__ = ("BrokerInternal",)


class BrokerInternal(BrokerFrontend):
    """The internal service and its built-in functions."""

    def register_internal_process(self) -> None:
        """Collect the broker's ``@interface`` methods into ``internal_func``."""
        self.internal_func, self._internal_table = collect_interfaces(self)

    def _internal_request(self, client_id: bytes, request_id: bytes, body: Frames) -> None:
        """Decode and run a request to the internal service (errors go back to the caller).

        When a subclass overrides ``internal_interface``, the decoded call is
        handed to it in an internal task, as the original did.
        """
        runner = self._runner
        try:
            req = decode_request(body)
            func_name = req.func_name
            if self._hook_internal:
                self.create_internal_task(self.internal_interface, name=f"InternalFun({func_name})",
                                          func_args=(client_id, request_id, func_name, req.args,
                                                     req.kwargs))
                return
        except Exception as exc:
            runner.reply_error(client_id, request_id, exc, with_traceback=False)
            return
        self._run_internal(client_id, request_id, func_name, req.args, req.kwargs)

    def _run_internal(self, client_id: bytes, request_id: bytes, func_name: Any, args: Any,
                      kwargs: dict[str, Any]) -> None:
        """Run the internal function ``func_name`` and reply (an unknown name is an error reply)."""
        entry = self._internal_table.get(func_name) if type(func_name) is str else None
        if entry is None:
            exc = AttributeError("Function not found." if Settings.SECURE else f"Function not found: {func_name}")
            self._runner.reply_error(client_id, request_id, exc, with_traceback=False)
            return
        kwargs["__client_id"] = client_id
        kwargs["__request_id"] = request_id
        self._runner.run(client_id, request_id, entry[0], entry[1], args, kwargs)

    # -- declared here, implemented by the API part and the broker ----------------------

    async def internal_interface(self, client_id: bytes, request_id: bytes, func_name: Any, args: Any,
                                 kwargs: dict[str, Any]) -> None:
        raise NotImplementedError

    def create_internal_task(self, coro_func: Any, name: Optional[str] = None, reload: bool = False,
                             func_args: Any = None, func_kwargs: Any = None) -> None:
        raise NotImplementedError

    # -- built-in functions -----------------------------------------------------------

    @interface
    def get_services(self, **kwargs: Any) -> list[str]:
        """Names of the services, then the internal service."""
        return [*self.services, self._internal_name]

    @interface
    def info(self, **kwargs: Any) -> dict[str, Any]:
        """``{"my_id": <broker identity>, "services": [names]}``."""
        return {"my_id": self.identity, "services": list(self.services)}

    @interface
    def stats(self, **kwargs: Any) -> dict[str, Any]:
        """What this broker knows of its services, workers and load (our addition; ``gaterpc info``).

        ``{"role", "id", "services": {name: {"workers", "in_flight", "free_capacity", "waiting",
        "requests", "served", "errors", "description"}}, "workers", "sockets", "errors", ...}``
        """
        from gaterpc.metrics import broker_stats

        return broker_stats(self)

    @interface
    def keepalive(self, heartbeat: Any, **kwargs: Any) -> bytes:
        """Client keepalive: ``b"200"`` for ``b"heartbeat"``, else ``b"400"``."""
        return KEEPALIVE_OK if heartbeat == KEEPALIVE_ARG else KEEPALIVE_BAD

    @interface
    def query_service(self, service_name: Any, **kwargs: Any) -> Optional[str]:
        """The description of a service, or ``None``."""
        svc = self.services.get(service_name) if isinstance(service_name, str) else None
        return svc.description if svc is not None else None
