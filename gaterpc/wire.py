"""Request and reply bodies, decoded without I/O: bytes in, events out.

The roles own the sockets; this module only reads the frames they received
(see ``docs/PROTOCOL.md``, "Request body" and "Reply body").

* :func:`decode_request` turns the body frames of a request
  (``func_name[, args[, kwargs]]``, each a MessagePack frame) into a
  :class:`Request`, or raises :class:`BadRequest` with a message the caller
  can act on.  The worker and the broker's internal service both use it, so
  a malformed call is refused with the same words wherever it lands.  It
  decodes with one ``msgpack.Unpacker`` per thread built from the global
  ``message_pack`` settings (rebuilt when they change): same values and
  errors as :func:`~gaterpc.serialization.msg_unpack`, without parsing
  msgpack's options for every frame.
* :func:`ok_reply_body` builds the single reply body of a result (the
  original's ``{"result": value, "exception": nil}``) in one buffer.
* :func:`classify_reply` tells what one reply body is: a single reply, a
  stream item, the end of a stream, a stream error, a HugeData chunk, the end
  of a HugeData transfer or a HugeData error (:data:`ReplyEvent`).

Neither checks that the function exists: that is the receiver's business
(its table of ``@interface`` methods).  The broker's per-message path keeps
the compiled ``is_terminal`` for its terminal test and the client and the
gate dispatch on the compiled ``reply_kind`` (cheaper than building an event):
all of them, and :func:`classify_reply`, share that one classifier;
:func:`classify_reply` is for code that needs the parts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence, Union

import msgpack

from gaterpc import serialization as _serialization
from gaterpc._speedups.frames import (
    KIND_HUGE_CHUNK, KIND_HUGE_END, KIND_HUGE_ERROR, KIND_SINGLE, KIND_STREAM_END, KIND_STREAM_ERROR,
    KIND_STREAM_ITEM, reply_kind, singleton_ok,
)
from gaterpc.protocol import BIN32_MAX, ZERO_COPY_MIN, ok_body_bytes
from gaterpc.serialization import msg_pack, msg_unpack

__all__ = (
    "BadRequest", "Request", "decode_request",
    "Single", "StreamItem", "StreamEnd", "StreamError", "HugeChunk", "HugeEnd", "HugeError",
    "ReplyEvent", "classify_reply", "is_partial", "ok_reply_body",
)

Frame = Union[bytes, bytearray, memoryview]


class BadRequest(ValueError):
    """A request body that cannot be run; the message says what is wrong."""


class Request(NamedTuple):
    """A decoded request body: the function name (any decoded value) and its arguments."""

    func_name: Any
    args: Union[list[Any], tuple[Any, ...]]
    kwargs: dict[str, Any]


_new_tuple = tuple.__new__
_tls = threading.local()


class _Decoder:
    """A ``msgpack.Unpacker`` kept per thread for request frames (no per-call set-up).

    ``msgpack.unpackb`` parses its keyword options on every call, which
    costs more than decoding a small frame; an Unpacker built once with the
    same options (the global ``message_pack`` settings, rebuilt when they
    change) decodes each frame with one ``feed`` and one ``unpack``.  Only a
    frame that decodes completely and exactly is taken from it; anything
    else (an error, trailing bytes, a buffer that is not ``bytes``) is decoded
    again by :func:`~gaterpc.serialization.msg_unpack`, so results and
    errors are msg_unpack's.
    """

    __slots__ = ("options", "unpacker", "offset")

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.unpacker = msgpack.Unpacker(**options)
        self.offset = 0  # bytes fed so far: where a clean decode must end

    def decode(self, data: Frame) -> Any:
        if type(data) is bytes:
            unpacker = self.unpacker
            try:
                unpacker.feed(data)
                obj = unpacker.unpack()
            except Exception:  # noqa: BLE001 - redone below for the proper error
                pass
            else:
                end = self.offset + len(data)
                if unpacker.tell() == end:
                    self.offset = end
                    return obj
            # Whatever is left in the buffer is junk now: start afresh.
            self.unpacker = msgpack.Unpacker(**self.options)
            self.offset = 0
        return msg_unpack(data)


def _decoder() -> _Decoder:
    options = _serialization._unpack_kwargs  # a new dict whenever message_pack changes
    decoder: _Decoder | None = getattr(_tls, "decoder", None)
    if decoder is None or decoder.options is not options:
        decoder = _tls.decoder = _Decoder(options)
    return decoder


def decode_request(frames: Sequence[Frame], start: int = 0) -> Request:
    """Decode the request body ``frames[start:]`` = ``[func_name[, args[, kwargs]]]``.

    (``start`` lets a role decode in place, without slicing the message.)

    Raises :class:`BadRequest` for a wrong frame count, arguments that are
    not an array, keyword arguments that are not a map, or keyword names
    that are not ``str`` or start with ``__`` (reserved for the broker's own
    ``__client_id``/``__request_id``); a frame that is not MessagePack raises
    the serializer's error.  ``func_name`` is returned as decoded: the caller
    looks it up (a non-``str`` name is simply not found).
    """
    n = len(frames) - start
    if n < 1 or n > 3:
        raise BadRequest(f"malformed request: {n} body frames (1 to 3 expected)")
    decode = _decoder().decode
    func_name = decode(frames[start])
    args = decode(frames[start + 1]) if n > 1 else []
    kwargs = decode(frames[start + 2]) if n > 2 else {}
    if not isinstance(args, (list, tuple)):
        raise BadRequest("malformed request: the arguments frame is not an array")
    if type(kwargs) is not dict:
        raise BadRequest("malformed request: the keyword arguments frame is not a map")
    if kwargs:
        for key in kwargs:
            if type(key) is not str or key.startswith("__"):
                raise BadRequest("keyword argument names must be str and must not start with '__'")
    return _new_tuple(Request, (func_name, args, kwargs))  # Request(...) without its Python-level __new__


# -- reply bodies -----------------------------------------------------------------


@dataclass(frozen=True)
class Single:
    """A complete reply: one MessagePack ``{"result": ..., "exception": ...}`` frame."""

    envelope: bytes


@dataclass(frozen=True)
class StreamItem:
    """One item of a stream (its packed value)."""

    item: bytes


@dataclass(frozen=True)
class StreamEnd:
    """The stream ended normally."""


@dataclass(frozen=True)
class StreamError:
    """The stream ended with an error (a packed ``[class, repr, traceback]``)."""

    triple: bytes


@dataclass(frozen=True)
class HugeChunk:
    """One compressed chunk of a HugeData transfer."""

    chunk: bytes


@dataclass(frozen=True)
class HugeEnd:
    """The HugeData transfer is complete."""


@dataclass(frozen=True)
class HugeError:
    """The HugeData transfer failed (a packed ``[class, repr, traceback]``)."""

    triple: bytes


ReplyEvent = Union[Single, StreamItem, StreamEnd, StreamError, HugeChunk, HugeEnd, HugeError]


def classify_reply(body: Sequence[bytes]) -> ReplyEvent:
    """What the reply body ``body`` (the frames after the request id) is.

    Raises :class:`ValueError` for a body that is none of them (a relaying
    broker passes such bodies on unchanged; a client drops them).
    :func:`is_partial` tells whether more replies of the request follow.
    """
    k = reply_kind(body)
    if k == KIND_SINGLE:
        return Single(bytes(body[0]))
    if k == KIND_STREAM_ITEM:
        return StreamItem(bytes(body[1]))
    if k == KIND_STREAM_END:
        return StreamEnd()
    if k == KIND_STREAM_ERROR:
        return StreamError(bytes(body[2]))
    if k == KIND_HUGE_CHUNK:
        return HugeChunk(bytes(body[1]))
    if k == KIND_HUGE_END:
        return HugeEnd()
    if k == KIND_HUGE_ERROR:
        return HugeError(bytes(body[2]))
    raise ValueError(f"not a reply body ({len(body)} frames)")


def is_partial(event: ReplyEvent) -> bool:
    """True for events after which more replies of the same request follow."""
    return isinstance(event, (StreamItem, HugeChunk))


# -- single reply bodies ------------------------------------------------------------


def ok_reply_body(value: Any) -> bytes:
    """The single reply body for ``value``: the bytes and errors of ``singleton_ok(msg_pack(value))``.

    A large reply is built without two large fresh buffers alive at once (at
    1 MiB that costs over ten times one, in page faults): a ``bytes`` value of
    ``ZERO_COPY_MIN`` bytes or more is framed directly
    (:func:`gaterpc.protocol.ok_body_bytes`, one copy); any other value whose
    packed form is that large is packed again, once that copy is freed, as
    the reply map itself (``{"result": value, "exception": None}``, the same
    bytes) into one buffer.  Small values take the plain path (one length
    test more).
    """
    t = type(value)
    if t is bytes and ZERO_COPY_MIN <= len(value) <= BIN32_MAX:
        return ok_body_bytes(value)
    packed = msg_pack(value)  # msg_pack's errors
    if len(packed) < ZERO_COPY_MIN or _serialization._pack_default is not None \
            or t not in _serialization._PLAIN_TYPES:
        return singleton_ok(packed)
    del packed
    try:
        packer = _serialization._tls.packer
    except AttributeError:
        packer = _serialization._new_packer()
    body: bytes = packer.pack({"result": value, "exception": None})
    return body
