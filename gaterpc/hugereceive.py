"""The receiving side of HugeData: :class:`HugeDataReceiver` (client and gate).

Chunks of one compressed stream come in; the receiver detects the format
from the stream's magic bytes, decompresses incrementally with a size
limit, verifies the stream is complete, and gives the payload (or, for a
client, the decoded msgpack result, :mod:`gaterpc.hugedecode`).

The start of a stream is decompressed on the caller's thread, so that a
corrupt or mislabelled stream fails at its first chunk and a small transfer
needs no thread: the first chunk at once, the next small chunks in groups of
``INLINE_GROUP`` bytes (one decompressor call per group, not per chunk).
After ``SEGMENT`` compressed bytes, or ``INLINE_OUTPUT`` bytes of output,
chunks are gathered into segments that a thread decompresses while later
chunks arrive (zlib, bz2, lzma and lz4 release the GIL).  The sending side
is :mod:`gaterpc.hugedata`, which re-exports this class.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Deque, Optional, cast

from gaterpc.exceptions import BadGzip, HugeDataException
from gaterpc.hugecodecs import _MAGIC_LEN, BytesLike, CodecName, Decompressor, _could_be_magic, detect_format, get_codec
from gaterpc.hugedecode import INLINE_OUTPUT, Output, StreamDecoder
from gaterpc.serialization import MsgUnpackError
from gaterpc._speedups.chunks import OutputLimiter

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ("HugeDataReceiver", "INLINE_GROUP", "INLINE_OUTPUT", "DEFAULT_MAX_DECOMPRESSED_SIZE")

#: The decompressed size a transfer may reach unless told otherwise
#: (``HugeData.DEFAULT_MAX_DECOMPRESSED_SIZE``, which may be changed, is used).
DEFAULT_MAX_DECOMPRESSED_SIZE = 256 * 1024 * 1024
#: Pieces under this size are (de)compressed on the caller's thread (``feed_async``
#: here; the sender's parts in :mod:`gaterpc.hugedata`).
OFFLOAD_SIZE = 256 * 1024
#: Output asked of a decompressor per call: bounds the memory one call can
#: allocate (some decompressors allocate ``max_length`` up front).
_STEP = 1024 * 1024
#: While a receiver decompresses on the caller's thread, chunks after the
#: first are gathered into groups of this many compressed bytes.
INLINE_GROUP = 16 * 1024

_executor: Optional[ThreadPoolExecutor] = None
_executor_pid = 0
_executor_lock = threading.Lock()


def _decompress_executor() -> ThreadPoolExecutor:
    """The threads that decompress HugeData segments (shared by every receiver of the process).

    A forked child gets its own: the parent's threads do not exist there.
    """
    global _executor, _executor_pid
    pid = os.getpid()
    if _executor is None or _executor_pid != pid:
        with _executor_lock:
            if _executor is None or _executor_pid != pid:
                _executor = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                               thread_name_prefix="gaterpc-hugedata")
                _executor_pid = pid
    return _executor


class HugeDataReceiver:
    """Reassembles one HugeData reply from its chunks (client side).

    Decompression is pipelined: the first ``SEGMENT`` compressed bytes are
    decompressed in :meth:`feed` as they come (a corrupt or mislabelled stream
    fails at its first chunk; a small transfer needs no thread); after that
    :meth:`feed` gathers chunks into segments of ``SEGMENT`` bytes and hands
    each to a worker thread, which decompresses it while later chunks arrive
    (zlib, bz2, lzma and lz4 release the GIL); :meth:`finish` waits for the
    last segments.  At most ``MAX_QUEUED`` compressed bytes wait for the
    thread: a feed beyond that waits for it, so this queue stays bounded.
    (While it waits, the chunks that keep arriving wait in the client's
    ZeroMQ socket, up to its high-water mark in messages,
    ``Settings.ZMQ_SOCK``: without flow control, a decoder that falls
    behind holds up to the whole compressed transfer there; with it, at
    most ``Settings.HUGE_DATA_WINDOW`` bytes; see ``on_progress`` below.)  An
    error found by the thread (corrupt stream, size limit) is raised by the
    next ``feed`` or by ``finish``.  ``pipelined=False`` decompresses each
    chunk in ``feed``.  At most ``INLINE_OUTPUT`` decompressed bytes are
    made in :meth:`feed` itself: a highly compressible start goes on in the
    thread.

    ``decode=True`` (the client's receivers): the decompressed pieces are
    decoded with msgpack as they come, in the same thread, and
    :meth:`finish_decoded` returns the value (:class:`StreamDecoder`); a
    decode error is raised as early as a decompression error.

    Progress, for flow control: :attr:`processed` counts the compressed
    bytes decompressed so far (in :meth:`feed` or in the thread).  With
    ``on_progress`` set, the receiver calls it, from whichever thread made
    the progress, when :attr:`processed` grew and no earlier call is still
    unanswered; :meth:`take_progress` answers it (and gives the count).  The
    client turns that into CREDIT messages to the worker (docs/PROTOCOL.md,
    "HugeData flow control").
    """

    #: Compressed bytes gathered before a segment goes to the thread.
    SEGMENT = 256 * 1024
    #: Compressed bytes at most waiting for the thread.
    MAX_QUEUED = 2 * 1024 * 1024

    def __init__(self, *, default_module: CodecName = "gzip", max_decompressed_size: Optional[int] = None,
                 pipelined: bool = True, decode: bool = False) -> None:
        self.default_module = default_module
        if max_decompressed_size is None:
            from gaterpc.hugedata import HugeData  # the class default, which a user may change

            max_decompressed_size = HugeData.DEFAULT_MAX_DECOMPRESSED_SIZE
        self.max_decompressed_size = max_decompressed_size
        self._head = b""
        self._decompressor: Optional[Decompressor] = None
        self._decode = decode
        self._out: Output = (StreamDecoder(self.max_decompressed_size) if decode
                              else OutputLimiter(self.max_decompressed_size))
        self._closed = False
        self._step = _STEP
        self._pipelined = pipelined
        #: Compressed bytes still to be decompressed inline before the thread takes over.
        self._inline_left = self.SEGMENT
        # Pipelined mode: compressed input not yet handed over, the segments
        # waiting for the thread (and their size), whether a thread job runs,
        # and the first error it met.
        self._pending = bytearray()
        self._queue: Deque[BytesLike] = deque()
        self._queued = 0
        self._running = False
        self._error: Optional[BaseException] = None
        self._cond: Optional[threading.Condition] = None
        #: Compressed bytes decompressed so far.
        self.processed = 0
        #: Called (from any thread) when ``processed`` grew; see the class docstring.
        self.on_progress: Optional[Callable[[], object]] = None
        #: True from an ``on_progress`` call until :meth:`take_progress` answers it.
        self.progress_due = False

    def _advance(self, n: int) -> None:
        """``n`` more compressed bytes were decompressed: count them, tell ``on_progress`` once."""
        self.processed += n
        cb = self.on_progress
        if cb is not None and not self.progress_due:
            self.progress_due = True
            cb()

    def take_progress(self) -> int:
        """Answer an ``on_progress`` call: the next growth calls it again.  Returns :attr:`processed`."""
        self.progress_due = False
        return self.processed

    def _start(self, head: bytes) -> None:
        name = detect_format(head) or self.default_module
        self._decompressor = get_codec(name).decompressor()

    def feed(self, chunk: Buffer) -> None:
        """Take one chunk (empty chunks are ignored); see the class for when it is decompressed.

        A chunk of ``SEGMENT`` bytes or more is kept as it is until the thread
        has decompressed it: a mutable buffer must not change meanwhile.
        """
        if not chunk:
            return
        if self._closed:
            raise HugeDataException("the HugeData receiver is closed")
        first = False
        if self._decompressor is None:
            head = self._head + bytes(chunk)
            if len(head) < _MAGIC_LEN and _could_be_magic(head):
                self._head = head
                return
            self._head = b""
            self._start(head)
            chunk = head
            first = True
        if not self._pipelined:
            self._decompress(chunk)
            self._advance(len(cast(BytesLike, chunk)))
            return
        if self._inline_left > 0:
            # The first SEGMENT bytes are decompressed here: a corrupt or
            # wrongly labelled stream fails at its first chunk (and a small
            # transfer needs no thread at all), up to INLINE_OUTPUT bytes of
            # output; the thread goes on from there.  After the first chunk,
            # small chunks are gathered into groups of INLINE_GROUP bytes: one
            # decompressor call (and one decode step) per group, not per chunk.
            if self._out.total < INLINE_OUTPUT:
                self._inline_left -= len(cast(BytesLike, chunk))
                if not first:
                    pending = self._pending
                    if pending or len(cast(BytesLike, chunk)) < INLINE_GROUP:
                        pending += chunk
                        if len(pending) < INLINE_GROUP and self._inline_left > 0:
                            return
                        self._pending = bytearray()
                        chunk = pending
                done = self._decompress(chunk, INLINE_OUTPUT)
                self._advance(len(cast(BytesLike, chunk)))
                if done:
                    return
                self._inline_left = 0
                self._submit(b"")  # the decompressor holds more output: the thread takes it out
                return
            self._inline_left = 0
        if self._error is not None:
            self._raise_error()
        pending = self._pending
        if not pending and len(cast(BytesLike, chunk)) >= self.SEGMENT:
            self._submit(cast(BytesLike, chunk))  # large chunks go as they are, without a copy
            return
        pending += chunk
        if len(pending) >= self.SEGMENT:
            self._pending = bytearray()
            self._submit(pending)

    def _submit(self, segment: BytesLike) -> None:
        """Queue a segment for the thread (waiting while too much is queued)."""
        cond = self._cond
        if cond is None:
            cond = self._cond = threading.Condition()
        with cond:
            while self._queued >= self.MAX_QUEUED and self._running and self._error is None:
                cond.wait(1.0)
            if self._error is not None:
                self._raise_error()
            self._queue.append(segment)
            self._queued += len(segment)
            if self._running:
                return
            self._running = True
        try:
            _decompress_executor().submit(self._drain)
        except BaseException:
            with cond:
                self._running = False
            raise

    def _drain(self) -> None:
        """Thread job: decompress the queued segments in order until none is left."""
        cond = self._cond
        assert cond is not None  # made by _submit before the job
        while True:
            with cond:
                if not self._queue or self._closed or self._error is not None:
                    self._running = False
                    self._queue.clear()
                    self._queued = 0
                    cond.notify_all()
                    return
                segment = self._queue.popleft()
                self._queued -= len(segment)
                cond.notify_all()
            try:
                self._decompress(segment)
                if segment:
                    self._advance(len(segment))
            except BaseException as exc:
                with cond:
                    self._error = exc

    def _wait_idle(self) -> None:
        """Wait until the thread has decompressed every queued segment."""
        cond = self._cond
        if cond is None:
            return
        with cond:
            while self._running:
                cond.wait(1.0)

    def _raise_error(self) -> None:
        exc = self._error
        assert exc is not None
        raise exc.with_traceback(None)

    async def feed_async(self, chunk: BytesLike) -> None:
        """As :meth:`feed`, decompressing a large chunk in a thread."""
        if len(chunk) >= OFFLOAD_SIZE:
            await asyncio.to_thread(self.feed, chunk)
        else:
            self.feed(chunk)

    @property
    def eof(self) -> bool:
        """True once the decompressor reported the end of the compressed stream."""
        return bool(getattr(self._decompressor, "eof", False))

    def _decompress(self, data: Buffer, budget: int = 0) -> bool:
        """Decompress ``data`` into the output; True when it is all done.

        With a ``budget`` (> 0), stop once ``budget`` bytes of output were made
        from the total so far and return False if the decompressor may hold
        more for the same input (a later ``_decompress(b"")`` takes it out).
        """
        d = self._decompressor
        if d is None:  # closed meanwhile (a thread job)
            if self._closed:
                return True
            raise AssertionError("the decompressor starts in feed()/_complete() before any data")
        out = self._out
        step = self._step
        try:
            while not getattr(d, "eof", False):
                want = out.room()
                if want > step:
                    want = step
                piece = d.decompress(data, want)
                data = b""
                if not piece:
                    return True
                out.add(piece)
                # Go on while the decompressor may hold more output for the same input.
                if getattr(d, "needs_input", True) and len(piece) < want:
                    return True
                if budget and out.total >= budget:
                    return False
            return True
        except (HugeDataException, BadGzip, MsgUnpackError):
            raise
        except Exception as exc:
            raise HugeDataException(f"corrupt HugeData stream: {type(exc).__name__}: {exc}") from None

    def _complete(self) -> None:
        """Drain the decompressor and check the stream ended (the end tag arrived)."""
        if self._pipelined:
            self._wait_idle()
            if self._error is not None:
                self._raise_error()
            if self._pending:
                pending, self._pending = self._pending, bytearray()
                self._decompress(pending)
        if self._decompressor is None:
            if not self._head:
                raise HugeDataException("empty HugeData stream: no compressed data before the end tag")
            head, self._head = self._head, b""
            self._start(head)
            self._decompress(head)
        d: Any = self._decompressor  # a plug-in's decompressor may lack eof/flush
        if not hasattr(d, "eof"):
            if hasattr(d, "flush"):
                self._out.add(d.flush())
            return
        if not d.eof:
            self._decompress(b"")
        if not d.eof:
            raise HugeDataException("truncated HugeData stream: the compressed data ended early")

    def _take(self) -> bytes:
        """Output gathered since the last call (streaming use)."""
        out: bytes = cast(OutputLimiter, self._out).take()
        return out

    def finish(self) -> bytearray:
        """The decompressed payload, once the end tag arrived.

        Raises ``HugeDataException`` when the stream is empty or truncated.
        The payload is a ``bytearray`` (bytes-like, handed over without a copy).
        """
        if self._closed:
            raise HugeDataException("the HugeData receiver is closed")
        out = self._out
        if isinstance(out, StreamDecoder):
            raise TypeError("a decoding receiver (decode=True) gives its value with finish_decoded()")
        self._complete()
        payload: bytearray = cast(OutputLimiter, out).getvalue()
        self.close()
        return payload

    def finish_decoded(self) -> Any:
        """The decoded value (``decode=True``), once the end tag arrived.

        Raises as :meth:`finish`, and ``MsgUnpackError`` when the payload is
        not exactly one msgpack value.  Waits for the thread: see :attr:`slow_finish`.
        """
        if self._closed:
            raise HugeDataException("the HugeData receiver is closed")
        out = self._out
        if not isinstance(out, StreamDecoder):
            raise TypeError("finish_decoded() needs a decoding receiver (decode=True)")
        try:
            self._complete()
            return out.result()
        finally:
            self.close()

    @property
    def slow_finish(self) -> bool:
        """True when finishing may take a while: the thread has or had work, or compressed input waits."""
        return self._cond is not None or bool(self._pending) or self._out.total > INLINE_OUTPUT

    def prepare_finish(self) -> bool:
        """Once the end tag arrived: decompress here the group of small chunks
        the inline phase gathered (within its output budget, the rest goes to
        the thread), then tell :attr:`slow_finish`.

        Raises as :meth:`feed` for a corrupt stream or a bad payload.
        """
        if self._pipelined and self._inline_left > 0 and self._pending and not self._closed:
            pending, self._pending = self._pending, bytearray()
            if not self._decompress(pending, INLINE_OUTPUT):
                self._inline_left = 0
                self._submit(b"")  # the decompressor holds more output: the thread takes it out
        return self.slow_finish

    def close(self) -> None:
        """Drop the buffers (idempotent); a running thread job stops after its segment."""
        self._closed = True
        self.on_progress = None
        cond = self._cond
        if cond is not None:
            with cond:
                self._queue.clear()
                self._queued = 0
        self._pending = bytearray()
        self._decompressor = None
        self._out = OutputLimiter(0)
