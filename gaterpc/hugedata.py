"""HugeData: large replies compressed and sent in chunks.

Frames: docs/PROTOCOL.md, "HugeData".

A worker returns ``HugeData(end_tag, except_tag, data=...)``; the reply is
one compressed stream cut into ``blksize``-byte chunks.  The client feeds the
chunks to a :class:`HugeDataReceiver` (:mod:`gaterpc.hugereceive`, re-exported
here), which detects the format from the stream's magic bytes, decompresses
incrementally with a size limit, verifies the stream is complete, and
returns the payload.

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
  sequential); with chunks of at most 64 KiB a piece is compressed in parts
  of 256 KiB, the transfer's first part of 64 KiB and on the event loop, so
  that the first chunks leave at once;
* receiver (:class:`HugeDataReceiver`): the first chunk is decompressed at
  once and the next small ones in 16 KiB groups, then compressed chunks are
  gathered into 256 KiB segments, decompressed in a thread while later
  chunks arrive; at most 2 MiB of compressed input waits for the thread (later chunks
  wait in the client's socket meanwhile; between our roles the worker sends at most
  ``Settings.HUGE_DATA_WINDOW`` beyond what the receiver has processed: flow control,
  docs/PROTOCOL.md).  A client's receiver
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
whose per-message cost then dominates; a ``blksize`` of 64 KiB to 1 MiB is
the fast setting (the receiver, ours or the original's, accepts any).  A
``blksize`` left at its default goes to a client of ours in chunks of
``Settings.HUGE_DATA_NATIVE_SIZEOF`` (64 KiB): the worker tells such a client
by its request ids (:func:`gaterpc.protocol.own_request_id`) and passes the
size to :func:`iter_hugedata_batches`.

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
    TYPE_CHECKING, Any, AsyncIterator, ClassVar, Deque, Iterable, Iterator, List, Optional, Tuple, Union, cast,
)

from gaterpc.exceptions import BadGzip, HugeDataException, RemoteException
from gaterpc.hugedecode import INLINE_OUTPUT, StreamDecoder
from gaterpc.hugereceive import (  # noqa: F401 (HugeDataReceiver and INLINE_GROUP re-exported)
    DEFAULT_MAX_DECOMPRESSED_SIZE, INLINE_GROUP, OFFLOAD_SIZE, HugeDataReceiver,
)
from gaterpc.serialization import msg_unpack
from gaterpc._speedups.chunks import ChunkCutter

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from typing_extensions import Buffer

__all__ = (
    "HugeData", "HugeDataReceiver", "GzipCompressor", "GzipDecompressor", "iter_hugedata_chunks",
    "iter_hugedata_batches", "_incremental_compress", "_incremental_decompress", "ensure_shm_unlink",
    "detect_format", "INLINE_OUTPUT", "StreamDecoder",
)

_SLICE = 1024 * 1024
#: With small chunks, pieces of input are compressed (other than gzip) in
#: parts of this size, the transfer's first part of ``_FIRST_PART`` bytes.
_PART = OFFLOAD_SIZE
_FIRST_PART = 64 * 1024
#: The first wire chunk holds at least this much (the whole gzip header).
_HEADER_LEN = 10


class _DefaultSize(int):
    """The default ``blksize`` (1000, the original's): an ``int`` that tells "left at
    the default" from an explicit 1000 by identity (``HugeData.blksize_chosen``)."""

    __slots__ = ()


_DEFAULT_BLKSIZE = _DefaultSize(1000)

from gaterpc.hugecodecs import (  # noqa: F401 (re-exported: the original's names live here)
    _DEFLATE_WINDOW, _GZIP_JOBS, _MAGIC_LEN, BytesLike, CodecName, Compressor, Decompressor, GzipCompressor,
    GzipDecompressor, _could_be_magic, _deflate_block, crc32_combine, detect_format, get_codec,
)

class HugeData:
    """A large payload, compressed and sent in chunks (the original's API)."""

    DEFAULT_MAX_DECOMPRESSED_SIZE = DEFAULT_MAX_DECOMPRESSED_SIZE
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
        blksize: int = _DEFAULT_BLKSIZE,
        timeout: Optional[float] = 1,
        max_decompressed_size: Optional[int] = None,
    ) -> None:
        self.end_tag = end_tag
        self.except_tag = except_tag
        self.compress_module = compress_module
        self.compress_level = compress_level
        self.blksize = int(blksize) if blksize and blksize > 0 else 1000
        self._blksize_passed = blksize is not _DEFAULT_BLKSIZE
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

    @property
    def blksize_chosen(self) -> bool:
        """False while ``blksize`` is the default one (not passed, not set since): a
        worker may then send larger chunks to a client of this implementation
        (``Settings.HUGE_DATA_NATIVE_SIZEOF``); a chosen size is always kept."""
        return self._blksize_passed or self.blksize != _DEFAULT_BLKSIZE

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

    async def _compress_batches(self, blksize: int = 0) -> AsyncIterator[List[bytes]]:
        """The chunks of :meth:`compress`, in lists: those cut from one piece of output at a time (maybe none).

        ``blksize``: the chunk size, when not ``self.blksize`` (0).
        """
        blksize = blksize or self.blksize
        if self.compress_module == "gzip":
            async for batch in self._compress_gzip(blksize):
                yield batch
            return
        try:
            compressor = get_codec(self.compress_module).compressor(self.compress_level)
        except Exception as exc:
            raise HugeDataException(exc) from exc
        cutter = ChunkCutter(blksize)
        running = asyncio.get_running_loop()
        # Pipelined: while the chunks of one piece's output are yielded (and
        # sent), the next piece is compressed in a thread.  One piece is
        # compressed at a time (the compressor is sequential) and one output
        # waits to be cut, so at most two pieces are in flight.
        ready: Optional[bytes] = None
        # With chunks much smaller than a piece, a piece is compressed in
        # parts, the very first one small and inline: the first chunks leave
        # at once instead of after a whole piece's compression, and each
        # later part is compressed while the chunks before it are sent.
        sliced = blksize * 4 <= _PART
        first = _FIRST_PART if sliced else 0
        try:
            async for piece in self._input():
                parts: Iterable[BytesLike] = (piece,)
                if sliced and len(piece) > _PART:
                    parts = _parts(piece, first)
                    first = 0
                for part in parts:
                    job: Optional[asyncio.Future[bytes]] = None
                    out: Optional[bytes] = None
                    if len(part) >= OFFLOAD_SIZE:
                        job = running.run_in_executor(None, compressor.compress, part)
                    else:
                        out = compressor.compress(part)
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

    async def _compress_gzip(self, blksize: int) -> AsyncIterator[List[bytes]]:
        """gzip in blocks compressed in parallel threads; the chunks as :meth:`_compress_batches` yields them."""
        level = self.compress_level
        running = asyncio.get_running_loop()
        cutter = ChunkCutter(blksize)
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
    hd: HugeData, loop: Optional[asyncio.AbstractEventLoop] = None, blksize: int = 0,
) -> AsyncIterator[List[bytes]]:
    """The chunks of :func:`iter_hugedata_chunks`, the same ones in the same
    order, in non-empty lists (all that one piece of compressed output made;
    the last list is ``[b""]``): a sender can send a list in one burst, with
    one suspension per list instead of one per chunk.

    ``blksize``: cut chunks of this size instead of ``hd.blksize`` (0: that);
    a subclass with its own ``compress()`` keeps its chunks.
    """
    head: Optional[bytes] = b""
    if type(hd).compress is HugeData.compress:
        batches = hd._compress_batches(blksize)
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


def _parts(piece: BytesLike, first: int) -> Iterator[memoryview]:
    """``piece`` as views of ``_PART`` bytes, the first of ``first`` bytes if that is not 0."""
    view = memoryview(piece)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    start = 0
    if first:
        yield view[:first]
        start = first
    for i in range(start, len(view), _PART):
        yield view[i:i + _PART]


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
