"""Exception classes of gaterpc.

The hierarchy is part of the public contract: user code catches these
bases.  ``RemoteException`` is what a client raises for every error reported
by the remote end; its message keeps the original's format, and it also
carries the remote class name, repr and traceback text as attributes.

``BrokerUnavailableError`` is ours (the original has no such class): a
client raises it when the broker cannot be reached or the connection to it
was lost.  It is a ``TimeoutError`` (what the original raises in that
situation, after its reply timeout), so existing ``except TimeoutError`` /
``except asyncio.TimeoutError`` code keeps working.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Sequence

__all__ = (
    "ServiceUnAvailableError",
    "GateUnAvailableError",
    "BusyWorkerError",
    "BusyGateError",
    "RemoteException",
    "BadGzip",
    "HugeDataException",
    "DictFull",
    "BrokerUnavailableError",
)


class ServiceUnAvailableError(Exception):
    """No worker (and, for a gate, no peer) serves the requested service."""

    def __init__(self, name: str) -> None:
        super().__init__(f"The {name} Service unavailable.")


class GateUnAvailableError(ServiceUnAvailableError):
    """A gate would forward the request, but no peer gate is connected."""

    def __init__(self) -> None:
        Exception.__init__(self, "The Gate Service unavailable.")


class BusyWorkerError(Exception):
    """Every worker of the service stayed at capacity for ``Settings.TIMEOUT``."""

    def __init__(self) -> None:
        super().__init__("No idle worker.")


class BusyGateError(Exception):
    """Every peer gate of the service stayed at capacity for ``Settings.TIMEOUT``."""

    def __init__(self) -> None:
        super().__init__("No idle gate.")


class RemoteException(Exception):
    """An error reported by the remote end of a call.

    ``except_info`` is either a message ``str`` or the exception triple
    ``(class_name, repr_text, traceback_text)`` sent over the wire.  The
    message format is the original's; ``remote_type``, ``remote_repr`` and
    ``remote_traceback`` hold the parts of a triple (``None`` for a plain
    message).
    """

    remote_type: str | None = None
    remote_repr: str | None = None
    remote_traceback: str | None = None

    def __init__(self, except_info: str | Sequence[str]) -> None:
        if isinstance(except_info, str):
            message = except_info
        elif isinstance(except_info, (tuple, list)):
            class_name, repr_text, traceback_text = except_info
            message = f"\n  RemoteTraceback ({class_name}):\n  {repr_text}\n  {traceback_text}"
            self.remote_type = class_name
            self.remote_repr = repr_text
            self.remote_traceback = traceback_text
        else:
            raise TypeError("except_info must be str or tuple.")
        super().__init__(message)


class BadGzip(OSError):
    """A gzip stream is malformed (bad magic, method, CRC or length)."""


class HugeDataException(OSError):
    """HugeData compression or decompression failed, or a size limit was hit."""


class DictFull(Exception):
    """A bounded dict reached its maximum number of keys."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(f"The number of keys in the dict reached the maximum of {maxsize}.")


if sys.version_info >= (3, 11):
    _TIMEOUT_BASES = (TimeoutError, ConnectionError)
else:  # pragma: no cover - 3.10: asyncio.TimeoutError is another class there
    _TIMEOUT_BASES = (TimeoutError, ConnectionError, asyncio.TimeoutError)


# A type checker cannot follow bases unpacked from a tuple; it sees the class
# as a subclass of unknown bases (still a valid exception for it).
class BrokerUnavailableError(*_TIMEOUT_BASES):  # type: ignore[misc]
    """The broker cannot be reached, or the connection to it was lost.

    Raised by a ``Client`` call (and inside an open stream's iteration, and
    by a pending HugeData result) when

    * the connection to the broker dropped (tcp/ipc: the broker process died
      or closed its socket): every call in flight fails at once, with a
      message such as ``"connection to broker tcp://127.0.0.1:5555 lost
      (peer disconnected); 3 calls failed"``;
    * nothing came from the broker for ``heartbeat x liveness`` although the
      client probed it (a hung broker, an inproc broker that stopped
      answering, or no broker on the address at connect time): ``"no reply
      from broker ipc:///x within 1.5 s"``.

    It is a ``TimeoutError`` (and an ``asyncio.TimeoutError``) and a
    ``ConnectionError``: code written for the original, which raised
    ``TimeoutError`` after the full reply timeout, keeps working.  The same
    client connects again on its next call.

    Attributes: ``address`` (the broker address), ``waited`` (seconds without
    any message from the broker when the client gave up), ``cause`` (short
    text: ``"peer disconnected"``, ``"no reply"``) and ``failed`` (how many
    pending requests failed with it; 0 when unknown).
    """

    def __init__(
        self, address: str, waited: float | None = None, cause: str = "no reply", failed: int = 0
    ) -> None:
        self.address = address
        self.waited = waited
        self.cause = cause
        self.failed = failed
        if cause == "no reply" and waited is not None:
            message = f"no reply from broker {address} within {waited:.1f} s"
        else:
            message = f"connection to broker {address} lost ({cause})"
            if failed:
                message += f"; {failed} call{'s' if failed != 1 else ''} failed"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[BrokerUnavailableError], tuple[str, float | None, str, int]]:
        return type(self), (self.address, self.waited, self.cause, self.failed)
