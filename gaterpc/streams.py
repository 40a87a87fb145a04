"""``StreamReply``: the client-side object of a streamed reply (the streaming reply of a call).

Frames: docs/PROTOCOL.md, "Reply bodies".

A client gets a ``StreamReply`` as soon as the first stream message of a call
arrives, and iterates it with ``async for``.  The client feeds it through the
private, synchronous ``_put*`` methods (no task or await per item); the public
``asend``/``athrow``/``aclose`` keep the original's semantics.

Differences from the original, all on the receiving side:

* ``None`` items fed by the client are delivered (the public ``asend(None)``
  still ignores ``None``, as documented);
* the end of the stream is signalled out of band, so an item equal to
  ``b"GateStreamEnd"`` is delivered as an item;
* ``athrow(ExcClass)`` raises an instance of the class;
* buffering is bounded.  The protocol has no flow control (a broker's ROUTER
  drops what a slow client does not read), so the client reads every item as
  it arrives and the stream holds what the consumer has not taken yet, up to
  ``OVERFLOW_FACTOR × maxsize`` items or ``OVERFLOW_BYTES`` of encoded items.
  Past that the stream ends with a ``BufferError`` after the buffered items
  and the client forgets it, instead of growing without bound.  ``asend``
  (the public feeding API) waits while ``maxsize`` items are queued, as the
  original.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Any, Callable, Optional

__all__ = ("StreamReply",)

_END = object()

#: A stream may hold this many times ``maxsize`` unconsumed items ...
OVERFLOW_FACTOR = 64
#: ... and at most this many bytes of encoded items, before it fails.
OVERFLOW_BYTES = 256 * 1024 * 1024


class StreamReply(AsyncGenerator[Any, Any]):
    """An asynchronous iterator over the items of a streamed reply."""

    def __init__(self, end_message: bytes, maxsize: int = 0, timeout: float = 0) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = asyncio.get_event_loop_policy().get_event_loop()
        self.end_message = end_message
        self.maxsize = maxsize
        self.timeout = timeout
        # The original exposes an asyncio.Queue as ``replies``; items live in
        # ``_items`` and ``replies`` is a small read-only view of them.
        self.replies = _QueueView(self)
        self._items: deque[Any] = deque()
        self._bytes = 0
        self._space_waiters: deque[asyncio.Future[None]] = deque()
        self._waiter: Optional[asyncio.Future[None]] = None
        self._exit = False
        self._pause = False
        self._raise = False
        self._ended = False
        self._on_close: Optional[Callable[[], object]] = None

    # -- feeding (client side, synchronous) ---------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _put(self, item: Any, size: int = 0) -> bool:
        """Queue one item (``size``: its encoded length); False and the stream ends on overflow."""
        if self._ended:
            return False
        items = self._items
        if self.maxsize and (len(items) >= self.maxsize * OVERFLOW_FACTOR
                             or self._bytes + size > OVERFLOW_BYTES):
            items.append(_Raise(BufferError(
                f"stream buffer overflow: {len(items)} items ({self._bytes} bytes) were not consumed "
                f"(the limit is {OVERFLOW_FACTOR} x STREAM_REPLY_MAXSIZE={self.maxsize} items or "
                f"{OVERFLOW_BYTES} bytes)")))
            items.append(_END)
            self._ended = True
            self._wake()
            return False
        items.append(item if size == 0 else _Sized(item, size))
        self._bytes += size
        self._wake()
        return True

    def _put_end(self) -> None:
        if not self._ended:
            self._ended = True
            self._items.append(_END)
            self._wake()

    def _put_exception(self, exc: BaseException) -> None:
        """Deliver ``exc`` to the consumer after the queued items; the stream ends."""
        if not self._ended:
            self._ended = True
            self._items.append(_Raise(exc))
            self._items.append(_END)
            self._wake()

    def _finished(self) -> bool:
        """True when no more items will be fed."""
        return self._ended or self._exit

    # -- consuming ------------------------------------------------------------

    def __aiter__(self) -> StreamReply:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._exit:
                raise StopAsyncIteration
            items = self._items
            if items:
                item = items.popleft()
                if self._space_waiters:
                    self._wake_space()
                if item is _END:
                    self._mark_exit()
                    raise StopAsyncIteration
                t = type(item)
                if t is _Sized:
                    self._bytes -= item.size
                    return item.item
                if t is _Raise:
                    raise item.exc
                if self._raise and isinstance(item, BaseException):
                    self._raise = False
                    raise item
                return item
            waiter = self._loop.create_future()
            self._waiter = waiter
            if self.timeout:
                handle = self._loop.call_later(self.timeout, _timeout_waiter, waiter)
                try:
                    await waiter
                finally:
                    handle.cancel()
                    if self._waiter is waiter:
                        self._waiter = None
            else:
                try:
                    await waiter
                finally:
                    if self._waiter is waiter:
                        self._waiter = None

    def is_exit(self) -> bool:
        """True once the end of the stream was consumed or ``aclose()`` was called."""
        return self._exit

    def _mark_exit(self) -> None:
        if not self._exit:
            self._exit = True
            self._items.clear()
            self._bytes = 0
            self._wake()
            while self._space_waiters:
                self._wake_space()
            cb = self._on_close
            if cb is not None:
                self._on_close = None
                cb()

    def _wake_space(self) -> None:
        waiters = self._space_waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    async def asend(self, value: Any) -> None:
        """Queue ``value``, waiting while ``maxsize`` items are queued (``None`` is ignored)."""
        if value is None:
            return None
        while self.maxsize and len(self._items) >= self.maxsize and not self._finished():
            waiter = self._loop.create_future()
            self._space_waiters.append(waiter)
            await waiter
        if not self._ended:
            self._items.append(value)
            self._wake()
        return None

    async def athrow(self, typ: Any, val: Any = None, tb: Optional[TracebackType] = None) -> None:
        """Queue an exception that the consumer will raise at that position."""
        if tb is not None:
            exc = typ.with_traceback(tb) if isinstance(typ, BaseException) else typ(val).with_traceback(tb)
        elif isinstance(val, BaseException):
            exc = val
        elif val:
            exc = typ(val)
        elif isinstance(typ, type) and issubclass(typ, BaseException):
            exc = typ()
        else:
            exc = typ
        self._items.append(_Raise(exc) if isinstance(exc, BaseException) else exc)
        self._wake()

    async def aclose(self) -> None:
        """Stop the stream: queued and later items are discarded."""
        self._mark_exit()


class _Raise:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Sized:
    __slots__ = ("item", "size")

    def __init__(self, item: Any, size: int) -> None:
        self.item = item
        self.size = size


class _QueueView:
    """Read-only view with the parts of ``asyncio.Queue`` user code may touch."""

    __slots__ = ("_stream",)

    def __init__(self, stream: StreamReply) -> None:
        self._stream = stream

    def qsize(self) -> int:
        return sum(1 for i in self._stream._items if i is not _END and type(i) is not _Raise)

    def empty(self) -> bool:
        return not self.qsize()

    def full(self) -> bool:
        m = self._stream.maxsize
        return bool(m) and self.qsize() >= m

    @property
    def maxsize(self) -> int:
        return self._stream.maxsize


def _timeout_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())
