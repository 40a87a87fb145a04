# cython: language_level=3, boundscheck=False, wraparound=False
"""HugeData chunk assembly (compiled twin of ``_chunks_py``)."""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memcpy, memmove
from libc.stdlib cimport malloc, realloc, free

from gaterpc._speedups._wire cimport HUGE_UNLIMITED_STEP

from gaterpc.exceptions import HugeDataException

__all__ = ("ChunkCutter", "OutputLimiter", "UNLIMITED_STEP")

UNLIMITED_STEP = HUGE_UNLIMITED_STEP


@cython.final
cdef class ChunkCutter:
    """Cut a byte stream into chunks of exactly ``blksize`` bytes (the last may be shorter)."""

    cdef readonly Py_ssize_t blksize
    cdef char* _buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap

    def __cinit__(self, blksize):
        self._buf = NULL
        self._len = 0
        self._cap = 0

    def __init__(self, blksize):
        blksize = int(blksize)
        if blksize <= 0:
            raise ValueError("blksize must be a positive integer")
        self.blksize = blksize

    def __dealloc__(self):
        if self._buf != NULL:
            free(self._buf)

    cdef int _reserve(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap
        cdef char* nb
        if need <= self._cap:
            return 0
        cap = self._cap * 2 if self._cap else 4096
        while cap < need:
            cap *= 2
        nb = <char*>realloc(self._buf, cap)
        if nb == NULL:
            raise MemoryError()
        self._buf = nb
        self._cap = cap
        return 0

    def feed(self, data):
        """Add ``data``; return the list of complete chunks now available."""
        if data is None:  # a typed memoryview would take None as empty
            raise TypeError("a bytes-like object is required, not 'NoneType'")
        cdef const unsigned char[::1] view = data
        cdef Py_ssize_t n = view.shape[0]
        cdef Py_ssize_t bs = self.blksize
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take
        cdef list out = []
        cdef const char* src
        if n == 0:
            return out
        src = <const char*>&view[0]
        if self._len:
            take = bs - self._len
            if take > n:
                take = n
            self._reserve(self._len + take)
            memcpy(self._buf + self._len, src, take)
            self._len += take
            pos = take
            if self._len < bs:
                return out
            out.append(PyBytes_FromStringAndSize(self._buf, bs))
            self._len = 0
        while n - pos >= bs:
            out.append(PyBytes_FromStringAndSize(src + pos, bs))
            pos += bs
        if pos < n:
            self._reserve(n - pos)
            memcpy(self._buf, src + pos, n - pos)
            self._len = n - pos
        return out

    def pending(self):
        """Bytes held back, waiting to complete a chunk."""
        return self._len

    def rest(self):
        """The held-back bytes (possibly empty); the cutter is then empty."""
        out = PyBytes_FromStringAndSize(self._buf, self._len) if self._len else b""
        self._len = 0
        return out


@cython.final
cdef class OutputLimiter:
    """Collect output in one growing buffer; ``limit`` bytes at most (0: no limit)."""

    cdef readonly Py_ssize_t limit
    cdef readonly Py_ssize_t total
    cdef bytearray _buf

    def __init__(self, limit):
        limit = int(limit)
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def room(self):
        """How much output to ask for next: one byte past the limit, to detect it."""
        cdef Py_ssize_t left
        if not self.limit:
            return HUGE_UNLIMITED_STEP
        left = self.limit - self.total + 1
        return left if left > 0 else 1

    def add(self, piece):
        """Add a piece; ``HugeDataException`` once the total exceeds the limit."""
        cdef Py_ssize_t n = len(piece)
        if not n:
            return
        self.total += n
        if self.limit and self.total > self.limit:
            self._buf = bytearray()
            raise HugeDataException(
                f"decompressed payload exceeds limit ({self.limit} bytes); "
                "aborting to prevent decompression bomb")
        self._buf += piece

    def take(self):
        """The output gathered since the last ``take``, as bytes (the total keeps counting)."""
        if not self._buf:
            return b""
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def getvalue(self):
        """All output gathered (and not taken), without a copy: the buffer itself."""
        out = self._buf
        self._buf = bytearray()
        return out
