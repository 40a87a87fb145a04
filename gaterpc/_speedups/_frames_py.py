"""Frame splitting and building for every role (pure-Python twin).

The compiled twin ``_frames_c`` has the same functions, constants and
results.  Parsers never raise on junk: they return ``None`` for a message
that does not have the expected shape, so that a role drops it.
"""

from __future__ import annotations

__all__ = (
    "KIND_INVALID", "KIND_SINGLE", "KIND_STREAM_ITEM", "KIND_STREAM_END", "KIND_STREAM_ERROR",
    "KIND_HUGE_CHUNK", "KIND_HUGE_END", "KIND_HUGE_ERROR",
    "split_frontend", "split_backend", "split_worker", "split_client_reply",
    "reply_kind", "is_terminal", "singleton_ok", "singleton_error",
)

KIND_INVALID = -1
KIND_SINGLE = 0
KIND_STREAM_ITEM = 1
KIND_STREAM_END = 2
KIND_STREAM_ERROR = 3
KIND_HUGE_CHUNK = 4
KIND_HUGE_END = 5
KIND_HUGE_ERROR = 6

_STREAM_TAG = b"GateStreamGenerator"
_STREAM_END = b"GateStreamEnd"
_STREAM_EXC = b"GateStreamException"
_HUGE_TAG = b"GateStreamHugData"
_HUGE_END = b"HugeDataEND"
_HUGE_EXC = b"HugeDataException"

_SINGLE_HEAD = b"\x82\xa6result"
_SINGLE_OK_TAIL = b"\xa9exception\xc0"
_SINGLE_ERR_MID = b"\xc0\xa9exception"


def split_frontend(msg, header):
    """Broker frontend: ``[client, '', header, service, ...rest]`` -> ``(client, service, rest)``."""
    if len(msg) < 5 or msg[1] or msg[2] != header:
        return None
    return msg[0], msg[3], msg[4:]


def split_backend(msg, header):
    """Broker backend: ``[worker, '', header, command, ...rest]`` -> ``(worker, command, rest)``."""
    if len(msg) < 4 or msg[1] or msg[2] != header:
        return None
    return msg[0], msg[3], msg[4:]


def split_worker(msg, header):
    """Worker side: ``['', header, command, ...rest]`` -> ``(command, rest)``."""
    if len(msg) < 3 or msg[0] or msg[1] != header:
        return None
    return msg[2], msg[3:]


def split_client_reply(msg, header):
    """Client side: ``['', header, service, rid, ...body]`` -> ``(service, rid, body)``."""
    if len(msg) < 5 or msg[0] or msg[1] != header:
        return None
    return msg[2], msg[3], msg[4:]


def reply_kind(body):
    """Classify a reply body (WIRE.md §4.3)."""
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


def is_terminal(body):
    """True when a reply body completes its request (single, end or error)."""
    k = reply_kind(body)
    return not (k == KIND_STREAM_ITEM or k == KIND_HUGE_CHUNK)


def singleton_ok(packed_result):
    """``mp({"result": <value>, "exception": nil})`` from ``mp(value)``."""
    return _SINGLE_HEAD + packed_result + _SINGLE_OK_TAIL


def singleton_error(packed_triple):
    """``mp({"result": nil, "exception": <triple>})`` from ``mp(triple)``."""
    return _SINGLE_HEAD + _SINGLE_ERR_MID + packed_triple
