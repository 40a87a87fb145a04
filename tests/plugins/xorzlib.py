"""A HugeData plug-in compression module (``compressor(level)``/``decompressor()``), for tests.

zlib with no header (raw deflate), so it has no magic bytes: the receiver
must fall back to ``Settings.HUGE_DATA_COMPRESS_MODULE``.
"""

import zlib


class _Compressor:
    def __init__(self, level):
        self._c = zlib.compressobj(level, zlib.DEFLATED, -15)

    def compress(self, data):
        return self._c.compress(data)

    def flush(self):
        return self._c.flush()


class _Decompressor:
    def __init__(self):
        self._d = zlib.decompressobj(-15)
        self._tail = b""

    def decompress(self, data, max_length):
        out = self._d.decompress(self._tail + data, max(max_length, 0))
        self._tail = self._d.unconsumed_tail
        return out

    @property
    def eof(self):
        return self._d.eof

    @property
    def needs_input(self):
        return not self._tail


def compressor(level=1):
    return _Compressor(level)


def decompressor():
    return _Decompressor()
