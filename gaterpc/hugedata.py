"""HugeData: large replies compressed and sent in chunks.

Frames: docs/PROTOCOL.md, "HugeData".

A worker returns ``HugeData(end_tag, except_tag, data=...)``; the reply is
one compressed stream cut into ``blksize``-byte chunks.  The client feeds the
chunks to a :class:`HugeDataReceiver`, which detects the format from the
stream's magic bytes, decompresses incrementally with a size limit, verifies
the stream is complete, and returns the payload.

Everything runs in-process and incrementally: no process pool, no pipes,
no shared memory (the original's process pool made the second transfer in a
process hang).  The work is pipelined across threads (zlib, bz2, lzma and
lz4 release the GIL), so that compressing, sending, receiving and
decompressing overlap:

* sender, gzip: the input is compressed in blocks of about 1 MiB, up to
  ``_GZIP_JOBS`` at once in threads; each block is primed with the 32 KiB
  of input before it (so the ratio is that of one stream) and ends with a
  sync flush, the CRC-32s are combined: the output is one ordinary gzip
  member with the original's header;
* sender, other formats: the next 1 MiB piece is compressed in a thread
  while the chunks of the previous one are sent (one codec stream is
  sequential);
* receiver (:class:`HugeDataReceiver`): compressed chunks are gathered into
  256 KiB segments, decompressed in a thread while later chunks arrive; at
  most 2 MiB of compressed input waits for the thread.  A client's receiver
  (``decode=True``) also decodes the msgpack result there, as the
  decompressed pieces come (streaming decode): the decompressed payload
  never exists whole next to the decoded result (:mod:`gaterpc.hugedecode`).

Pieces under ``OFFLOAD_SIZE`` bytes are (de)compressed inline.  Buffers are
bounded: at most two input blocks per thread and their output are in flight
on the sender, compressed output is cut as it is made, decompressed output
is produced with ``max_length`` so a decompression bomb never allocates much
beyond the limit, and the payload is gathered in one buffer handed over
without a copy.  Chunks of ``blksize`` bytes each travel as one message: the
original's default of 1000 makes a 16 MiB transfer some 8,000 messages,
whose per-message cost then dominates; a ``blksize`` of 256 KiB to 1 MiB is
the fast setting (the receiver, ours or the original's, accepts any).

Formats: ``gzip`` (the default and the only one the original reads; the
header is the original's: FLG 0, MTIME, XFL, OS 255), ``bz2``, ``lzma`` (xz),
``lz4`` (``lz4.frame``) and any module given by dotted path that offers
``compressor(level)`` and ``decompressor()`` (the original's plug-in contract; ``tests/plugins/xorzlib.py`` is
an example).  The formats live in :mod:`gaterpc.hugecodecs`; the public names
(``GzipCompressor``, ``GzipDecompressor``, ``detect_format``) are re-exported here.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import (
    TYPE_CHECKING, Any, AsyncIterator, ClassVar, Deque, List, Optional, Tuple, Union, cast,
)

from gaterpc.exceptions import BadGzip, HugeDataException, RemoteException
from gaterpc.hugedecode import INLINE_OUTPUT, Output, StreamDecoder
from gaterpc.serialization import MsgUnpackError, msg_unpack
from gaterpc._speedups.chunks import ChunkCutter, OutputLimiter

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from typing_extensions import Buffer

__all__ = (
    "HugeData", "HugeDataReceiver", "GzipCompressor", "GzipDecompressor", "iter_hugedata_chunks",
    "iter_hugedata_batches", "_incremental_compress", "_incremental_decompress", "ensure_shm_unlink",
    "detect_format", "INLINE_OUTPUT", "StreamDecoder",
)

OFFLOAD_SIZE = 256 * 1024
_SLICE = 1024 * 1024
#: Output asked of a decompressor per call: bounds the memory one call can
#: allocate (some decompressors allocate ``max_length`` up front).
_STEP = 1024 * 1024
#: The first wire chunk holds at least this much (the whole gzip header).
_HEADER_LEN = 10

from gaterpc.hugecodecs import (  # noqa: F401 (re-exported: the original's names live here)
    _DEFLATE_WINDOW, _GZIP_JOBS, _MAGIC_LEN, BytesLike, CodecName, Compressor, Decompressor, GzipCompressor,
    GzipDecompressor, _could_be_magic, _deflate_block, crc32_combine, detect_format, get_codec,
)

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
    thread: a feed beyond that waits for it, so memory stays bounded.  An
    error found by the thread (corrupt stream, size limit) is raised by the
    next ``feed`` or by ``finish``.  ``pipelined=False`` decompresses each
    chunk in ``feed``.  At most ``INLINE_OUTPUT`` decompressed bytes are
    made in :meth:`feed` itself: a highly compressible start goes on in the
    thread.

    ``decode=True`` (the client's receivers): the decompressed pieces are
    decoded with msgpack as they come, in the same thread, and
    :meth:`finish_decoded` returns the value (:class:`StreamDecoder`); a
    decode error is raised as early as a decompression error.
    """

    #: Compressed bytes gathered before a segment goes to the thread.
    SEGMENT = 256 * 1024
    #: Compressed bytes at most waiting for the thread.
    MAX_QUEUED = 2 * 1024 * 1024

    def __init__(self, *, default_module: CodecName = "gzip", max_decompressed_size: Optional[int] = None,
                 pipelined: bool = True, decode: bool = False) -> None:
        self.default_module = default_module
        self.max_decompressed_size = (HugeData.DEFAULT_MAX_DECOMPRESSED_SIZE
                                      if max_decompressed_size is None else max_decompressed_size)
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
        if self._decompressor is None:
            head = self._head + bytes(chunk)
            if len(head) < _MAGIC_LEN and _could_be_magic(head):
                self._head = head
                return
            self._head = b""
            self._start(head)
            chunk = head
        if not self._pipelined:
            self._decompress(chunk)
            return
        if self._inline_left > 0:
            # The first SEGMENT bytes are decompressed here, chunk by chunk: a
            # corrupt or wrongly labelled stream fails at its first chunk (and
            # a small transfer needs no thread at all), up to INLINE_OUTPUT
            # bytes of output; the thread goes on from there.
            if self._out.total < INLINE_OUTPUT:
                self._inline_left -= len(cast(BytesLike, chunk))
                if self._decompress(chunk, INLINE_OUTPUT):
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

    def close(self) -> None:
        """Drop the buffers (idempotent); a running thread job stops after its segment."""
        self._closed = True
        cond = self._cond
        if cond is not None:
            with cond:
                self._queue.clear()
                self._queued = 0
        self._pending = bytearray()
        self._decompressor = None
        self._out = OutputLimiter(0)


class HugeData:
    """A large payload, compressed and sent in chunks (the original's API)."""

    DEFAULT_MAX_DECOMPRESSED_SIZE = 256 * 1024 * 1024
    _WRITE_BUFFER_COMPACT_THRESHOLD = 1024 * 1024
    _shared_process_executor: ClassVar[Optional[ProcessPoolExecutor]] = None

    def __init__(
        self,
        end_tag: bytes,
        except_tag: bytes,
        *,
        data: Optional[Buffer] = None,
        compress_module: CodecName = "gzip",
        compress_level: int = 1,
        blksize: int = 1000,
        timeout: Optional[float] = 1,
        max_decompressed_size: Optional[int] = None,
    ) -> None:
        self.end_tag = end_tag
        self.except_tag = except_tag
        self.compress_module = compress_module
        self.compress_level = compress_level
        self.blksize = int(blksize) if blksize and blksize > 0 else 1000
        self.timeout = timeout
        self.max_decompressed_size = (self.DEFAULT_MAX_DECOMPRESSED_SIZE
                                      if max_decompressed_size is None else max_decompressed_size)
        self._remote_exception: Optional[bytes] = None
        self._p: Any = None
        self.sel: Any = None
        self._write_buffer: Optional[bytearray] = None
        self._write_offset = 0
        self._write_end = False
        self._finalizer: Any = None
        self._destroyed = False
        if data is not None and not isinstance(data, bytes):
            data = memoryview(data).cast("B")  # any buffer (bytearray, memoryview, array, ...)
        self._pipe: Optional[Deque[bytes]]
        self.data: Optional[Union[bytes, memoryview]]
        if data is not None and len(data):
            self.data = data
            self._pipe = None
        else:
            # "Pipe mode": the payload is handed over with add_data() and flush().
            self.data = None
            self._pipe = deque()
            self._pipe_closed = False
            self._pipe_event: Optional[asyncio.Event] = None
            self._pipe_loop: Optional[asyncio.AbstractEventLoop] = None
            self._pipe_thread: Optional[int] = None

    @classmethod
    def get_process_executor(cls) -> ProcessPoolExecutor:
        """Kept for compatibility; HugeData no longer uses a process pool."""
        from concurrent.futures import ProcessPoolExecutor

        if cls._shared_process_executor is None:
            cls._shared_process_executor = ProcessPoolExecutor(max_workers=min(4, (os.cpu_count() or 1) + 1))
        return cls._shared_process_executor

    def add_data(self, data: Buffer) -> None:
        """Append input (pipe mode only)."""
        if self._pipe is None:
            raise TypeError("data")
        if self._pipe_closed:
            raise RuntimeError("pipe close")
        if data:
            self._pipe.append(bytes(data))
            self._wake()

    def flush(self) -> None:
        """Declare the end of the input (pipe mode)."""
        if self._pipe is not None:
            self._pipe_closed = True
            self._wake()

    def _wake(self) -> None:
        # The consumer (_input) publishes its loop and thread before it first
        # looks at the pipe, so a producer that finds no event yet needs no wake-up.
        ev = self._pipe_event
        loop = self._pipe_loop
        if ev is None or loop is None:
            return
        try:
            if threading.get_ident() == self._pipe_thread:
                ev.set()
            else:
                loop.call_soon_threadsafe(ev.set)  # asyncio.Event is not thread-safe
        except RuntimeError:  # the consumer's loop is closed
            pass

    async def _input(self) -> AsyncIterator[Union[bytes, memoryview]]:
        """The input pieces: slices of ``data`` or what ``add_data`` delivered."""
        if self._pipe is None:
            data = self.data
            assert data is not None  # not in pipe mode: the payload was given
            view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
            for i in range(0, len(view), _SLICE):
                yield view[i:i + _SLICE]
            return
        ev = asyncio.Event()
        self._pipe_loop = asyncio.get_running_loop()
        self._pipe_thread = threading.get_ident()
        self._pipe_event = ev
        pipe = self._pipe
        while True:
            # Clear first, then read "closed", then drain: a piece added (and a
            # wake-up sent) after the clear is seen by the wait below, and every
            # piece added before flush() is already in the pipe when "closed"
            # reads true (a producer appends before it closes).
            ev.clear()
            closed = self._pipe_closed
            while pipe:
                piece = pipe.popleft()
                if piece.endswith(self.end_tag) and len(piece) >= len(self.end_tag):
                    # The original's pipe protocol: the end tag closes the input.
                    piece = piece[:-len(self.end_tag)]
                    self._pipe_closed = True
                    if piece:
                        yield piece
                    return
                yield piece
            if closed:
                return
            try:
                await asyncio.wait_for(ev.wait(), self.timeout or None)
            except asyncio.TimeoutError:
                pass

    async def compress(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> AsyncIterator[bytes]:
        """Yield compressed chunks of at most ``blksize`` bytes (the last may be empty).

        gzip (the built-in) is compressed in blocks of about 1 MiB, several at
        once in threads (one gzip member, as the original's); other formats
        compress the next 1 MiB piece in a thread while the chunks of the
        previous one are yielded.
        """
        async for batch in self._compress_batches():
            for chunk in batch:
                yield chunk

    async def _compress_batches(self) -> AsyncIterator[List[bytes]]:
        """The chunks of :meth:`compress`, in lists: those cut from one piece of output at a time (maybe none)."""
        if self.compress_module == "gzip":
            async for batch in self._compress_gzip():
                yield batch
            return
        try:
            compressor = get_codec(self.compress_module).compressor(self.compress_level)
        except Exception as exc:
            raise HugeDataException(exc) from exc
        cutter = ChunkCutter(self.blksize)
        running = asyncio.get_running_loop()
        # Pipelined: while the chunks of one piece's output are yielded (and
        # sent), the next piece is compressed in a thread.  One piece is
        # compressed at a time (the compressor is sequential) and one output
        # waits to be cut, so at most two pieces are in flight.
        ready: Optional[bytes] = None
        try:
            async for piece in self._input():
                job: Optional[asyncio.Future[bytes]] = None
                out: Optional[bytes] = None
                if len(piece) >= OFFLOAD_SIZE:
                    job = running.run_in_executor(None, compressor.compress, piece)
                else:
                    out = compressor.compress(piece)
                if ready:
                    yield cutter.feed(ready)
                ready = await job if job is not None else out
            if ready:
                yield cutter.feed(ready)
            ready = None
            yield cutter.feed(compressor.flush())
        except HugeDataException:
            raise
        except Exception as exc:
            raise HugeDataException(exc) from exc
        yield [cutter.rest()]

    async def _compress_gzip(self) -> AsyncIterator[List[bytes]]:
        """gzip in blocks compressed in parallel threads; the chunks as :meth:`_compress_batches` yields them."""
        level = self.compress_level
        running = asyncio.get_running_loop()
        cutter = ChunkCutter(self.blksize)
        jobs: Deque[asyncio.Future[Tuple[bytes, int, int]]] = deque()
        crc = 0
        size = 0
        window = b""
        block = bytearray()

        def submit(data: BytesLike, final: bool) -> None:
            nonlocal window
            if len(data) >= OFFLOAD_SIZE:
                jobs.append(running.run_in_executor(None, _deflate_block, level, data, window, final))
            else:
                done: asyncio.Future[Tuple[bytes, int, int]] = running.create_future()
                done.set_result(_deflate_block(level, data, window, final))
                jobs.append(done)
            if len(data) >= _DEFLATE_WINDOW:
                window = bytes(data[-_DEFLATE_WINDOW:])
            else:
                window = (window + bytes(data))[-_DEFLATE_WINDOW:]

        try:
            # Also checks the level, as the sequential compressor does.
            yield cutter.feed(GzipCompressor(level)._header())
            async for piece in self._input():
                if not block and len(piece) >= _SLICE // 2:
                    submit(piece, False)  # a large piece goes as it is, without a copy
                else:
                    block += piece
                    if len(block) < _SLICE:
                        continue
                    submit(block, False)
                    block = bytearray()
                while len(jobs) >= _GZIP_JOBS:
                    out, part_crc, part_len = await jobs.popleft()
                    crc = crc32_combine(crc, part_crc, part_len)
                    size += part_len
                    yield cutter.feed(out)
            submit(block, True)
            block = bytearray()
            while jobs:
                out, part_crc, part_len = await jobs.popleft()
                crc = crc32_combine(crc, part_crc, part_len)
                size += part_len
                yield cutter.feed(out)
            yield cutter.feed(struct.pack("<II", crc, size & 0xFFFFFFFF))
        except HugeDataException:
            raise
        except Exception as exc:
            raise HugeDataException(exc) from exc
        finally:
            for job in jobs:
                job.cancel()  # those not started yet; a running one ends unheeded
        yield [cutter.rest()]

    async def decompress(
        self, loop: Optional[asyncio.AbstractEventLoop] = None, max_length: Optional[int] = -1
    ) -> AsyncIterator[bytes]:
        """Yield decompressed pieces of at most ``blksize`` bytes (the last may be empty).

        The format is detected from the stream's magic bytes (``compress_module``
        for formats without any).  Input ends at the end tag / ``flush()`` or when
        the decompressor reports the end of the stream.  ``max_length`` (> 0)
        bounds the output asked of the decompressor per call.
        """
        if self._remote_exception is not None:
            raise RemoteException(msg_unpack(self._remote_exception))
        receiver = HugeDataReceiver(default_module=self.compress_module,
                                    max_decompressed_size=self.max_decompressed_size, pipelined=False)
        if max_length and max_length > 0:
            receiver._step = int(max_length)
        cutter = ChunkCutter(self.blksize)
        try:
            async for piece in self._input():
                await receiver.feed_async(piece)
                out = receiver._take()
                if out:
                    for chunk in cutter.feed(out):
                        yield chunk
                if self._remote_exception is not None or receiver.eof:
                    break
            if self._remote_exception is None:
                receiver._complete()
                out = receiver._take()
                if out:
                    for chunk in cutter.feed(out):
                        yield chunk
        except (HugeDataException, BadGzip):
            raise
        except Exception as exc:
            raise HugeDataException(exc) from exc
        finally:
            receiver.close()
        if self._remote_exception is not None:
            raise RemoteException(msg_unpack(self._remote_exception))
        yield cutter.rest()

    def destroy(self) -> None:
        """Release the payload and buffers (idempotent)."""
        if self._destroyed:
            return
        self._destroyed = True
        self.data = None
        if self._pipe is not None:
            self._pipe.clear()
            self._pipe_closed = True

    def __del__(self) -> None:
        try:
            self.destroy()
        except Exception:
            pass


async def iter_hugedata_chunks(
    hd: HugeData, loop: Optional[asyncio.AbstractEventLoop] = None
) -> AsyncIterator[bytes]:
    """Yield the wire chunks of ``hd``: compressed pieces of at most ``hd.blksize``
    bytes (the first one holding the whole format header), then one empty
    chunk ``b""`` (the original always sends one; docs/PROTOCOL.md, "HugeData").  Errors raise
    ``HugeDataException`` (the caller turns them into the error frame).

    With a ``blksize`` below the gzip header length the first chunk is made
    longer than ``blksize`` so that it still holds the whole header.
    """
    async for batch in iter_hugedata_batches(hd, loop):
        for chunk in batch:
            yield chunk


async def iter_hugedata_batches(
    hd: HugeData, loop: Optional[asyncio.AbstractEventLoop] = None
) -> AsyncIterator[List[bytes]]:
    """The chunks of :func:`iter_hugedata_chunks`, the same ones in the same
    order, in non-empty lists (all that one piece of compressed output made;
    the last list is ``[b""]``): a sender can send a list in one burst, with
    one suspension per list instead of one per chunk.
    """
    head: Optional[bytes] = b""
    if type(hd).compress is HugeData.compress:
        batches = hd._compress_batches()
    else:  # a subclass's own compress(): its chunks one by one
        batches = _one_by_one(hd.compress(loop))
    async for batch in batches:
        if head is not None:
            # The first chunk holds the whole header (a blksize below it makes it longer).
            out: List[bytes] = []
            for chunk in batch:
                if not chunk:
                    continue
                if head is not None:
                    head += chunk
                    if len(head) < _HEADER_LEN:
                        continue
                    chunk, head = head, None
                out.append(chunk)
            batch = out
        elif not all(batch):
            batch = [chunk for chunk in batch if chunk]
        if batch:
            yield batch
    if head:
        yield [head]
    yield [b""]


async def _one_by_one(chunks: AsyncIterator[bytes]) -> AsyncIterator[List[bytes]]:
    async for chunk in chunks:
        yield [chunk]


def _incremental_compress(
    compress_module: CodecName,
    compress_level: int,
    in_data: Buffer,
    out_data: object,
    end_tag: bytes,
    blksize: int = 1000,
) -> List[bytes]:
    """Compress ``in_data`` (bytes) into a list of ``blksize`` chunks (kept for compatibility)."""
    compressor = get_codec(compress_module).compressor(compress_level)
    cutter = ChunkCutter(blksize)
    chunks: List[bytes] = list(cutter.feed(compressor.compress(bytes(in_data))))
    chunks.extend(cutter.feed(compressor.flush()))
    rest = cutter.rest()
    if rest:
        chunks.append(rest)
    if isinstance(out_data, list):
        out_data.extend(chunks)
        out_data.append(end_tag)
    return chunks


def _incremental_decompress(
    compress_module: CodecName,
    in_data: Buffer,
    out_data: object,
    end_tag: bytes,
    max_length: int = -1,
    blksize: int = 1000,
) -> List[bytearray]:
    """Decompress ``in_data`` (bytes) into a list of ``blksize`` pieces (kept for compatibility)."""
    receiver = HugeDataReceiver(default_module=compress_module)
    receiver.feed(bytes(in_data))
    payload = receiver.finish()
    pieces = [payload[i:i + blksize] for i in range(0, len(payload), blksize)]
    if isinstance(out_data, list):
        out_data.extend(pieces)
        out_data.append(end_tag)
    return pieces


def ensure_shm_unlink(shm: object) -> None:
    """Close and unlink a SharedMemory block, ignoring 'already gone'."""
    for step in ("close", "unlink"):
        try:
            getattr(shm, step)()
        except (FileNotFoundError, AttributeError, BufferError, OSError):
            pass
