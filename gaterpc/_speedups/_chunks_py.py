"""HugeData chunk assembly (pure-Python twin of ``_chunks_c``).

``ChunkCutter`` cuts a stream of compressed output into fixed-size chunks;
``OutputLimiter`` gathers decompressed output under a size limit (the
decompression-bomb guard).  Both twins have the same classes, results and
exceptions.
"""

from __future__ import annotations

from typing import List, Union

from gaterpc.exceptions import HugeDataException
from gaterpc.protocol import HUGE_UNLIMITED_STEP

__all__ = ("ChunkCutter", "OutputLimiter", "UNLIMITED_STEP")

#: Output asked of a decompressor per call when there is no limit.
UNLIMITED_STEP: int = HUGE_UNLIMITED_STEP

#: What ``feed``/``add`` accept: any contiguous bytes-like object.
Buffer = Union[bytes, bytearray, memoryview]


class ChunkCutter:
    """Cut a byte stream into chunks of exactly ``blksize`` bytes (the last may be shorter)."""

    __slots__ = ("blksize", "_buf")

    blksize: int
    _buf: bytearray

    def __init__(self, blksize: int) -> None:
        blksize = int(blksize)
        if blksize <= 0:
            raise ValueError("blksize must be a positive integer")
        self.blksize = blksize
        self._buf = bytearray()

    def feed(self, data: Buffer) -> List[bytes]:
        """Add ``data``; return the list of complete chunks now available."""
        buf = self._buf
        try:
            buf += data
        except TypeError:
            # The compiled twin's message (bytearray's names the operation).
            raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'") from None
        bs = self.blksize
        n = len(buf) // bs
        if not n:
            return []
        chunks = [bytes(buf[i:i + bs]) for i in range(0, n * bs, bs)]
        del buf[:n * bs]
        return chunks

    def pending(self) -> int:
        """Bytes held back, waiting to complete a chunk."""
        return len(self._buf)

    def rest(self) -> bytes:
        """The held-back bytes (possibly empty); the cutter is then empty."""
        out = bytes(self._buf)
        self._buf.clear()
        return out


class OutputLimiter:
    """Collect output in one growing buffer; ``limit`` bytes at most (0: no limit)."""

    __slots__ = ("limit", "total", "_buf")

    limit: int
    total: int
    _buf: bytearray

    def __init__(self, limit: int) -> None:
        limit = int(limit)
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def room(self) -> int:
        """How much output to ask for next: one byte past the limit, to detect it."""
        if not self.limit:
            return UNLIMITED_STEP
        left = self.limit - self.total + 1
        return left if left > 0 else 1

    def add(self, piece: Buffer) -> None:
        """Add a piece; ``HugeDataException`` once the total exceeds the limit."""
        n = len(piece)
        if not n:
            return
        self.total += n
        if self.limit and self.total > self.limit:
            self._buf = bytearray()
            raise HugeDataException(
                f"decompressed payload exceeds limit ({self.limit} bytes); "
                "aborting to prevent decompression bomb")
        self._buf += piece

    def take(self) -> bytes:
        """The output gathered since the last ``take``, as bytes (the total keeps counting)."""
        if not self._buf:
            return b""
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def getvalue(self) -> bytearray:
        """All output gathered (and not taken), without a copy: the buffer itself."""
        out = self._buf
        self._buf = bytearray()
        return out
