"""Streaming decode of HugeData results (the client's receivers).

:class:`StreamDecoder` takes the decompressed pieces of a HugeData payload
as :class:`gaterpc.hugedata.HugeDataReceiver` makes them (in its thread)
and feeds them to a msgpack ``Unpacker``, which resumes inside lists and
maps across pieces and drops what it has decoded: the decompressed payload
never exists whole next to the decoded value.  The decode settings and the
errors are those of :func:`gaterpc.serialization.msg_unpack`.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, cast

import msgpack

from gaterpc import serialization as _serialization
from gaterpc.exceptions import HugeDataException
from gaterpc.hugecodecs import BytesLike
from gaterpc.serialization import MsgUnpackError, _unpack_error, msg_unpack
from gaterpc._speedups.chunks import UNLIMITED_STEP

__all__ = ("INLINE_OUTPUT", "Output", "STREAMING", "StreamDecoder")

#: Decompressed output a receiver makes in ``feed`` on the caller's thread
#: (the event loop) before its thread takes over: a highly compressible
#: start must not stall the loop.
INLINE_OUTPUT = 1024 * 1024
#: Bytes of the decompressed payload shown by a decode error.
_PREVIEW = 200
#: msgpack's compiled ``Unpacker`` resumes where a piece ended; its pure-Python
#: fallback parses the value again from its start at every piece and keeps
#: all the input, so with it the payload is gathered and decoded at the end.
STREAMING = not msgpack.Unpacker.__module__.startswith("msgpack.fallback")


class _Preview:
    """The start of a decoded payload, for :func:`gaterpc.serialization._unpack_error` (its length: the total)."""

    __slots__ = ("head", "size")

    def __init__(self, head: bytes, size: int) -> None:
        self.head = head
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: slice) -> bytes:
        return self.head[index]

    def __str__(self) -> str:
        return str(self.head)


class StreamDecoder:
    """The output side of a decoding receiver: decompressed pieces go into a
    msgpack ``Unpacker`` as they come (same interface as ``OutputLimiter``).

    The ``Unpacker`` resumes inside containers across pieces and drops what
    it has decoded, so it holds at most one undecoded value (a ``bin`` of up
    to ``max_bin_len``) plus one piece.  The decode settings are those of
    :func:`gaterpc.serialization.msg_unpack` (hooks and limits of
    ``message_pack``), and so are the errors: a ``MsgUnpackError`` for
    undecodable or trailing data, or a payload that ends inside the value.
    Without msgpack's compiled extension (``STREAMING`` false) the pieces
    are gathered and decoded by :meth:`result`.
    """

    __slots__ = ("limit", "total", "_unpacker", "_head", "_done", "_result", "_whole")

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.total = 0
        # max_buffer_size 0: no limit of its own (the decompressed size is bounded by ``limit``).
        self._unpacker: Optional[msgpack.Unpacker] = msgpack.Unpacker(
            max_buffer_size=0, **_serialization._unpack_kwargs)
        self._head = b""
        self._done = False
        self._result: Any = None
        self._whole: Optional[bytearray] = None if STREAMING else bytearray()

    def room(self) -> int:
        """How much output to ask for next: one byte past the limit, to detect it."""
        if not self.limit:
            return UNLIMITED_STEP
        left = self.limit - self.total + 1
        return left if left > 0 else 1

    def _error(self, exc: BaseException) -> MsgUnpackError:
        self._unpacker = None
        return _unpack_error(_Preview(self._head, self.total), cast(Exception, exc))

    def add(self, piece: BytesLike) -> None:
        """Decode a piece; ``HugeDataException`` past the limit, ``MsgUnpackError`` for bad data."""
        n = len(piece)
        if not n:
            return
        self.total += n
        if self.limit and self.total > self.limit:
            self._unpacker = None
            raise HugeDataException(
                f"decompressed payload exceeds limit ({self.limit} bytes); "
                "aborting to prevent decompression bomb")
        if len(self._head) < _PREVIEW:
            self._head += bytes(memoryview(piece)[:_PREVIEW - len(self._head)])
        unpacker = self._unpacker
        if unpacker is None:
            raise HugeDataException("the HugeData decoder failed or was closed")
        if self._whole is not None:
            self._whole += piece
            return
        if self._done:
            raise self._error(msgpack.ExtraData(self._result, b""))
        unpacker.feed(piece)
        try:
            self._result = unpacker.unpack()
        except msgpack.OutOfData:
            return
        except Exception as exc:
            raise self._error(exc) from None
        self._done = True
        if unpacker.tell() < self.total:  # bytes after the value
            raise self._error(msgpack.ExtraData(self._result, b""))

    def result(self) -> Any:
        """The decoded value, once the whole payload was added."""
        whole, self._whole = self._whole, None
        if whole is not None:
            self._unpacker = None
            return msg_unpack(whole)
        if not self._done:
            raise self._error(ValueError("Unpack failed: incomplete input"))
        result, self._result = self._result, None
        self._unpacker = None
        return result


class Output(Protocol):
    """Where a receiver puts decompressed output: ``OutputLimiter`` or :class:`StreamDecoder`."""

    @property
    def total(self) -> int: ...

    def room(self) -> int: ...

    def add(self, piece: BytesLike) -> None: ...
