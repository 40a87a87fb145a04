"""The collaborators of the gate package, in one place.

Most names are re-exported from their (annotated) modules.  Two get a typed
view of their own, for the type checker only (at run time they are the real
classes):

* :class:`HugeDataReceiver`, the signature the gate uses, as its module is
  not annotated yet; once it is, import it from :mod:`gaterpc.hugedata`.
* :class:`RemoteWorker`: the gate's ``RemoteGate`` subclasses the broker's
  record of a worker, but its ``service`` is the cluster registry (not a
  :class:`gaterpc.worker.Service`) and its ``_inflight`` maps request ids to
  forwards (not to client ids), which the broker's precise type rejects.

:class:`LoopSocket` is the real class (the broker the gate extends holds its
sockets under that type).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from gaterpc.base import ABCService, check_zap_args, new_socket
from gaterpc.exceptions import (
    BusyGateError, GateUnAvailableError, RemoteException, ServiceUnAvailableError,
)
from gaterpc.loopio import LoopSocket
from gaterpc.protocol import error_body
from gaterpc.streams import StreamReply

__all__ = (
    "ABCService", "BusyGateError", "GateUnAvailableError", "HugeDataReceiver", "LoopSocket",
    "RemoteException", "RemoteWorker", "ServiceUnAvailableError", "StreamReply", "check_zap_args", "error_body", "new_socket",
)

if TYPE_CHECKING:
    class HugeDataReceiver:
        def __init__(self, *, default_module: str = "gzip",
                     max_decompressed_size: Optional[int] = None) -> None: ...
        def feed(self, chunk: bytes) -> None: ...
        def finish(self) -> bytes: ...
        def close(self) -> None: ...

    class RemoteWorker:
        identity: bytes
        sock: Any
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
                     sock: Any, mdp_version: bytes, service: Any) -> None: ...
else:
    from gaterpc.bookkeeping import RemoteWorker
    from gaterpc.hugedata import HugeDataReceiver
