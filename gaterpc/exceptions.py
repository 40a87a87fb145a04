"""Exception classes of gaterpc (API.md §3).

The hierarchy is part of the public contract: user code catches these
bases.  ``RemoteException`` is what a client raises for every error reported
by the remote end; its message keeps the original's format, and it also
carries the remote class name, repr and traceback text as attributes.
"""

from __future__ import annotations

__all__ = (
    "ServiceUnAvailableError",
    "GateUnAvailableError",
    "BusyWorkerError",
    "BusyGateError",
    "RemoteException",
    "BadGzip",
    "HugeDataException",
    "DictFull",
)


class ServiceUnAvailableError(Exception):
    """No worker (and, for a gate, no peer) serves the requested service."""

    def __init__(self, name):
        super().__init__(f"The {name} Service unavailable.")


class GateUnAvailableError(ServiceUnAvailableError):
    """A gate would forward the request, but no peer gate is connected."""

    def __init__(self):
        Exception.__init__(self, "The Gate Service unavailable.")


class BusyWorkerError(Exception):
    """Every worker of the service stayed at capacity for ``Settings.TIMEOUT``."""

    def __init__(self):
        super().__init__("No idle worker.")


class BusyGateError(Exception):
    """Every peer gate of the service stayed at capacity for ``Settings.TIMEOUT``."""

    def __init__(self):
        super().__init__("No idle gate.")


class RemoteException(Exception):
    """An error reported by the remote end of a call.

    ``except_info`` is either a message ``str`` or the exception triple
    ``(class_name, repr_text, traceback_text)`` sent over the wire.  The
    message format is the original's; ``remote_type``, ``remote_repr`` and
    ``remote_traceback`` hold the parts of a triple (``None`` for a plain
    message).
    """

    remote_type = None
    remote_repr = None
    remote_traceback = None

    def __init__(self, except_info):
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

    def __init__(self, maxsize):
        super().__init__(f"The number of keys in the dict reached the maximum of {maxsize}.")
