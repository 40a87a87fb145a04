"""HugeData compression formats: gzip framing, the codec registry, format detection.

``GzipCompressor``/``GzipDecompressor`` write and read the original's gzip
framing; :func:`get_codec` gives a format's incremental compressor and
decompressor (built-in ``gzip``, ``bz2``, ``lzma``, ``lz4`` or a plug-in
module); :func:`detect_format` names a stream's format from its magic bytes.

Parallel gzip: :func:`_deflate_block` compresses one block of a gzip
member's deflate stream, primed with the 32 KiB of input before it and
ending with a sync flush, so blocks compressed in any threads concatenate
into one valid stream; :func:`crc32_combine` joins the blocks' CRC-32s.
``gaterpc.hugedata`` uses them and re-exports the public names.
"""

from __future__ import annotations

import bz2
import lzma
import os
import struct
import time
import zlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple, Union

from gaterpc.exceptions import BadGzip
from gaterpc.helpers import resolve_module_attr

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = (
    "BytesLike", "CodecName", "Compressor", "Decompressor", "GzipCompressor", "GzipDecompressor",
    "crc32_combine", "detect_format", "get_codec",
)

_GZIP_MAGIC = b"\x1f\x8b"
_BZ2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_LZ4_MAGIC = b"\x04\x22\x4d\x18"
_MAGIC_LEN = 6

#: A compression module: a built-in name ("gzip", "bz2", "lzma", "lz4"), a
#: dotted path to a plug-in, or the plug-in module itself.
CodecName = Union[str, ModuleType]
#: The byte buffers HugeData compresses and decompresses.
BytesLike = Union[bytes, bytearray, memoryview]

#: gzip is compressed in blocks of about 1 MiB, this many at once
#: in threads (each block primed with the 32 KiB of input before it).
_GZIP_JOBS = max(2, min(4, os.cpu_count() or 1))
_DEFLATE_WINDOW = 32 * 1024
_CRC_POLY = 0xEDB88320  # CRC-32 (gzip), bit-reflected


def _crc_mulmod(a: int, b: int) -> int:
    """``a * b`` modulo the CRC-32 polynomial (bit-reflected: bit 31 is x^0)."""
    product = 0
    bit = 1 << 31
    while bit and a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return product


def _x_pow_2k() -> List[int]:
    """x^(2^k) modulo the polynomial, k = 0..63."""
    table = [1 << 30]  # x^1
    for _ in range(63):
        table.append(_crc_mulmod(table[-1], table[-1]))
    return table


_X_POW_2K = _x_pow_2k()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)``."""
    # crc(A + B) = crc(A) * x^(8 len(B)) + crc(B), over GF(2) modulo the polynomial.
    shift = 1 << 31  # x^0
    n = len2
    k = 3  # 8 * len2 = len2 << 3
    while n:
        if n & 1:
            shift = _crc_mulmod(_X_POW_2K[k], shift)
        n >>= 1
        k += 1
    return _crc_mulmod(shift, crc1) ^ crc2


def _deflate_block(level: int, block: BytesLike, window: bytes, final: bool) -> Tuple[bytes, int, int]:
    """One block of a gzip member's deflate stream: (deflate bytes, CRC-32, length).

    Primed with ``window`` (the input just before the block), so matches may
    reach back into it as in one continuous stream; a non-final block ends
    with a sync flush (byte-aligned, no final bit), so the blocks concatenated
    form one valid deflate stream.
    """
    if window:
        c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0, window)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
    out = c.compress(block)
    out += c.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)
    return out, zlib.crc32(block), len(block)



class Compressor(Protocol):
    """An incremental compressor (``compressor(level)`` of a codec)."""

    def compress(self, data: BytesLike, /) -> bytes: ...

    def flush(self) -> bytes: ...


class Decompressor(Protocol):
    """An incremental decompressor (``decompressor()`` of a codec); ``eof`` and
    ``needs_input`` are used when it has them."""

    def decompress(self, data: Buffer, max_length: int = ..., /) -> bytes: ...


class GzipCompressor:
    """Incremental gzip (RFC 1952) with the original's header: FLG 0, OS 255."""

    def __init__(self, compresslevel: int = 1) -> None:
        self._level = compresslevel
        self._deflate = zlib.compressobj(compresslevel, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
        self._crc = 0
        self._size = 0
        self._header_sent = False

    def _header(self) -> bytes:
        xfl = b"\x02" if self._level == 9 else b"\x04" if self._level == 1 else b"\x00"
        return b"\x1f\x8b\x08\x00" + struct.pack("<I", int(time.time()) & 0xFFFFFFFF) + xfl + b"\xff"

    def compress(self, data: BytesLike) -> bytes:
        """Compress ``data``; the header precedes the first non-empty output."""
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        out = self._deflate.compress(data)
        if out and not self._header_sent:
            self._header_sent = True
            out = self._header() + out
        return out

    def flush(self) -> bytes:
        """The rest of the deflate stream and the trailer (CRC-32, size)."""
        out = self._deflate.flush()
        if not self._header_sent:
            self._header_sent = True
            out = self._header() + out
        return out + struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF)


class GzipDecompressor:
    """Incremental gzip decompression; CRC-32 and size are verified
    (the original does not check them)."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""
        self._full = False

    def decompress(self, data: Buffer, max_length: Optional[int] = 0) -> bytes:
        """Decompress ``data`` (``max_length`` ≤ 0: unlimited); input beyond it is kept."""
        if max_length is None or max_length < 0:
            max_length = 0
        if self._pending:
            data = self._pending + bytes(data)
        try:
            out = self._z.decompress(data, max_length)
        except zlib.error as exc:
            raise BadGzip(f"corrupt gzip stream: {exc}") from None
        self._pending = self._z.unconsumed_tail
        # Output stopped at max_length: zlib may hold more even with no input left.
        self._full = bool(max_length) and len(out) >= max_length
        return out

    @property
    def eof(self) -> bool:
        """True once the whole member (with a valid trailer) was read."""
        return self._z.eof

    @property
    def needs_input(self) -> bool:
        """True when more input is required to make progress."""
        return not self._pending and not self._full and not self._z.eof


class _Codec:
    """A compression module: ``compressor(level)``, ``decompressor()``."""

    def __init__(
        self, name: str, compressor: Callable[[int], Compressor], decompressor: Callable[[], Decompressor]
    ) -> None:
        self.name = name
        self.compressor = compressor
        self.decompressor = decompressor


def _lz4_codec() -> _Codec:
    import lz4.frame

    class _Lz4Compressor:
        def __init__(self, level: int) -> None:
            # The content checksum lets the receiver detect corruption (like gzip's CRC-32).
            self._c = lz4.frame.LZ4FrameCompressor(compression_level=level, content_checksum=True)
            self._started = False

        def compress(self, data: BytesLike) -> bytes:
            out: bytes = b""
            if not self._started:
                self._started = True
                out = self._c.begin()
            out += self._c.compress(data)
            return out

        def flush(self) -> bytes:
            out: bytes = b"" if self._started else self._c.begin()
            self._started = True
            out += self._c.flush()
            return out

    return _Codec("lz4", _Lz4Compressor, lz4.frame.LZ4FrameDecompressor)


_BUILTIN: Dict[str, Callable[[], _Codec]] = {
    "gzip": lambda: _Codec("gzip", GzipCompressor, GzipDecompressor),
    "bz2": lambda: _Codec("bz2", bz2.BZ2Compressor, bz2.BZ2Decompressor),
    "lzma": lambda: _Codec("lzma", lambda level: lzma.LZMACompressor(preset=level), lzma.LZMADecompressor),
    "lz4": _lz4_codec,
}


def get_codec(name: CodecName) -> _Codec:
    """The codec of a module name: a built-in or a dotted path to a plug-in."""
    maker = _BUILTIN.get(name) if isinstance(name, str) else None
    if maker is not None:
        return maker()
    module: Any = resolve_module_attr(name) if isinstance(name, str) else name
    return _Codec(getattr(module, "__name__", str(name)), module.compressor, module.decompressor)


def detect_format(head: bytes) -> Optional[str]:
    """The built-in format whose magic bytes start ``head``, or ``None``."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_XZ_MAGIC):
        return "lzma"
    if head.startswith(_LZ4_MAGIC):
        return "lz4"
    if head.startswith(_BZ2_MAGIC):
        return "bz2"
    return None


def _could_be_magic(head: bytes) -> bool:
    """True while ``head`` is a proper prefix of some magic number."""
    return any(m.startswith(head) and len(head) < len(m) for m in (_GZIP_MAGIC, _BZ2_MAGIC, _XZ_MAGIC, _LZ4_MAGIC))
