"""Frame splitting and building for every role (pure-Python twin).

The compiled twin ``_frames_c`` has the same functions, constants and
results.  Parsers never raise on junk: they return ``None`` for a message
that does not have the expected shape, so that a role drops it.  The
constants are ``gaterpc.protocol``'s (the compiled twin's come from
``_wire.pxd``).
"""

from __future__ import annotations

from contextvars import Context
from typing import Any, Coroutine, Optional, Sequence, Tuple

from gaterpc.protocol import (
    HUGE_END as _HUGE_END,
    HUGE_EXC as _HUGE_EXC,
    HUGE_TAG as _HUGE_TAG,
    KIND_HUGE_CHUNK,
    KIND_HUGE_END,
    KIND_HUGE_ERROR,
    KIND_INVALID,
    KIND_SINGLE,
    KIND_STREAM_END,
    KIND_STREAM_ERROR,
    KIND_STREAM_ITEM,
    SINGLE_ERR_MID as _SINGLE_ERR_MID,
    SINGLE_HEAD as _SINGLE_HEAD,
    SINGLE_OK_TAIL as _SINGLE_OK_TAIL,
    STREAM_END as _STREAM_END,
    STREAM_EXC as _STREAM_EXC,
    STREAM_TAG as _STREAM_TAG,
)

__all__ = (
    "KIND_INVALID", "KIND_SINGLE", "KIND_STREAM_ITEM", "KIND_STREAM_END", "KIND_STREAM_ERROR",
    "KIND_HUGE_CHUNK", "KIND_HUGE_END", "KIND_HUGE_ERROR",
    "split_frontend", "split_backend", "split_worker", "split_client_reply",
    "reply_kind", "is_terminal", "singleton_ok", "singleton_error", "coro_step",
)

#: A received message: its frames (``bytes`` from a socket; tests also pass other buffers).
Message = Sequence[Any]


def split_frontend(msg: Message, header: Any) -> Optional[Tuple[Any, Any, Sequence[Any]]]:
    """Broker frontend: ``[client, '', header, service, ...rest]`` -> ``(client, service, rest)``."""
    if len(msg) < 5 or msg[1] or msg[2] != header:
        return None
    return msg[0], msg[3], msg[4:]


def split_backend(msg: Message, header: Any) -> Optional[Tuple[Any, Any, Sequence[Any]]]:
    """Broker backend: ``[worker, '', header, command, ...rest]`` -> ``(worker, command, rest)``."""
    if len(msg) < 4 or msg[1] or msg[2] != header:
        return None
    return msg[0], msg[3], msg[4:]


def split_worker(msg: Message, header: Any) -> Optional[Tuple[Any, Sequence[Any]]]:
    """Worker side: ``['', header, command, ...rest]`` -> ``(command, rest)``."""
    if len(msg) < 3 or msg[0] or msg[1] != header:
        return None
    return msg[2], msg[3:]


def split_client_reply(msg: Message, header: Any) -> Optional[Tuple[Any, Any, Sequence[Any]]]:
    """Client side: ``['', header, service, rid, ...body]`` -> ``(service, rid, body)``."""
    if len(msg) < 5 or msg[0] or msg[1] != header:
        return None
    return msg[2], msg[3], msg[4:]


def reply_kind(body: Message) -> int:
    """Classify a reply body: one of the ``KIND_*`` constants."""
    n = len(body)
    if n == 1:
        return KIND_SINGLE
    if n < 2:
        return KIND_INVALID
    tag = body[0]
    if tag == _STREAM_TAG:
        if n == 2:
            return KIND_STREAM_END if body[1] == _STREAM_END else KIND_STREAM_ITEM
        if n == 3 and body[1] == _STREAM_EXC:
            return KIND_STREAM_ERROR
        return KIND_INVALID
    if tag == _HUGE_TAG:
        if n == 2:
            return KIND_HUGE_END if body[1] == _HUGE_END else KIND_HUGE_CHUNK
        if n == 3 and (body[1] == _STREAM_EXC or body[1] == _HUGE_EXC):
            return KIND_HUGE_ERROR
        return KIND_INVALID
    return KIND_INVALID


def is_terminal(body: Message) -> bool:
    """True when a reply body completes its request (single, end or error)."""
    k = reply_kind(body)
    return not (k == KIND_STREAM_ITEM or k == KIND_HUGE_CHUNK)


def singleton_ok(packed_result: bytes) -> bytes:
    """``mp({"result": <value>, "exception": nil})`` from ``mp(value)``."""
    if type(packed_result) is bytes:
        # One copy of the (possibly large) packed result, not two.
        return b"".join((_SINGLE_HEAD, packed_result, _SINGLE_OK_TAIL))
    return _SINGLE_HEAD + packed_result + _SINGLE_OK_TAIL


def singleton_error(packed_triple: bytes) -> bytes:
    """``mp({"result": nil, "exception": <triple>})`` from ``mp(triple)``."""
    return _SINGLE_HEAD + _SINGLE_ERR_MID + packed_triple


def coro_step(ctx: Context, coro: Coroutine[Any, Any, Any]) -> Tuple[bool, Any]:
    """Run ``coro`` one step (``send(None)``) in the context ``ctx``.

    ``(True, returned value)`` when it finished, ``(False, yielded value)``
    when it suspended; an exception of the step propagates.  The execute
    path's eager first step (the compiled twin raises no ``StopIteration``
    for a coroutine that returns).
    """
    if type(ctx) is not Context:
        raise TypeError("an instance of Context was expected")
    try:
        return False, ctx.run(coro.send, None)
    except StopIteration as stop:
        return True, stop.value
