"""Typed views of the collaborators of the gate package.

At run time this module only re-exports the real classes and functions; for
the type checker it gives their signatures, as far as the gate uses them,
for modules that are not annotated (yet).  Once they are, the names can be
imported from their modules directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

__all__ = (
    "ABCService", "BusyGateError", "GateUnAvailableError", "HugeDataReceiver", "LoopSocket",
    "RemoteException", "RemoteWorker", "ServiceUnAvailableError", "StreamReply", "check_zap_args", "error_body", "new_socket",
)

if TYPE_CHECKING:
    import asyncio

    import zmq

    class ServiceUnAvailableError(RuntimeError):
        def __init__(self, name: Any) -> None: ...

    class GateUnAvailableError(ServiceUnAvailableError):
        def __init__(self) -> None: ...

    class RemoteException(Exception):
        def __init__(self, except_info: Any) -> None: ...

    class StreamReply:
        def __init__(self, end_message: bytes, maxsize: int = 0, timeout: float = 0) -> None: ...
        def _put(self, item: Any, size: int = 0) -> None: ...
        def _put_end(self) -> None: ...
        def _put_exception(self, exc: BaseException) -> None: ...

    class BusyGateError(RuntimeError):
        def __init__(self) -> None: ...

    class LoopSocket:
        def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket[Any],
                     handler: Callable[[list[list[bytes]]], None], **kwargs: Any) -> None: ...
        def send(self, frames: Sequence[bytes]) -> Any: ...
        def close(self, linger: int = 0) -> None: ...

    class HugeDataReceiver:
        def __init__(self, *, default_module: str = "gzip",
                     max_decompressed_size: Optional[int] = None) -> None: ...
        def feed(self, chunk: bytes) -> None: ...
        def finish(self) -> bytes: ...
        def close(self) -> None: ...

    class ABCService:
        pass

    class RemoteWorker:
        identity: bytes
        sock: zmq.Socket[Any]
        mdp_version: bytes
        ready: bool
        service: Any
        heartbeat: int
        heartbeat_liveness: int
        last_message_sent_time: float
        heartbeat_task: Any
        destroy_task: Any
        max_allowed_request: int
        expiry: float

        def __init__(self, identity: bytes, heartbeat: int, max_allowed_request: int,
                     sock: zmq.Socket[Any], mdp_version: bytes, service: Any) -> None: ...

    def error_body(pack: Callable[[Any], bytes], exc: BaseException,
                   with_traceback: bool = True) -> bytes: ...

    def new_socket(ctx: Any, socket_type: int, options: Optional[dict[Any, Any]] = None) -> zmq.Socket[Any]: ...

    def check_zap_args(mechanism: Any, credentials: Any) -> tuple[Any, Any]: ...
else:
    from gaterpc.base import ABCService, check_zap_args, new_socket
    from gaterpc.exceptions import (
        BusyGateError, GateUnAvailableError, RemoteException, ServiceUnAvailableError,
    )
    from gaterpc.hugedata import HugeDataReceiver
    from gaterpc.loopio import LoopSocket
    from gaterpc.protocol import error_body
    from gaterpc.streams import StreamReply
    from gaterpc.worker import RemoteWorker
