"""Event-loop binding mixin."""

from __future__ import annotations

import asyncio
import threading

__all__ = ("_LoopBoundMixin", "_global_lock")

_global_lock = threading.Lock()


class _LoopBoundMixin:
    """Binds an object to the first event loop that uses it.

    ``_get_loop()`` returns the running loop (or ``asyncio.get_event_loop()``
    outside one); the first call records it in ``self._loop`` and a later
    call from another loop raises ``RuntimeError``.
    """

    _loop = None

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = asyncio.get_event_loop()
        if self._loop is None:
            with _global_lock:
                if self._loop is None:
                    self._loop = loop
        if loop is not self._loop:
            raise RuntimeError(f"{self!r} is bound to a different event loop")
        return loop
