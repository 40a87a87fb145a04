# cython: language_level=3, boundscheck=False, wraparound=False
"""Frame splitting and building for every role (compiled twin of ``_frames_py``).

Same functions, constants and results as the pure twin; parsers return
``None`` for messages without the expected shape.
"""

cimport cython
from cpython.bytes cimport PyBytes_GET_SIZE, PyBytes_AS_STRING
from cpython.list cimport PyList_GET_SIZE
from libc.string cimport memcmp

__all__ = (
    "KIND_INVALID", "KIND_SINGLE", "KIND_STREAM_ITEM", "KIND_STREAM_END", "KIND_STREAM_ERROR",
    "KIND_HUGE_CHUNK", "KIND_HUGE_END", "KIND_HUGE_ERROR",
    "split_frontend", "split_backend", "split_worker", "split_client_reply",
    "reply_kind", "is_terminal", "singleton_ok", "singleton_error",
)

DEF _KIND_INVALID = -1
DEF _KIND_SINGLE = 0
DEF _KIND_STREAM_ITEM = 1
DEF _KIND_STREAM_END = 2
DEF _KIND_STREAM_ERROR = 3
DEF _KIND_HUGE_CHUNK = 4
DEF _KIND_HUGE_END = 5
DEF _KIND_HUGE_ERROR = 6

KIND_INVALID = _KIND_INVALID
KIND_SINGLE = _KIND_SINGLE
KIND_STREAM_ITEM = _KIND_STREAM_ITEM
KIND_STREAM_END = _KIND_STREAM_END
KIND_STREAM_ERROR = _KIND_STREAM_ERROR
KIND_HUGE_CHUNK = _KIND_HUGE_CHUNK
KIND_HUGE_END = _KIND_HUGE_END
KIND_HUGE_ERROR = _KIND_HUGE_ERROR

cdef bytes _STREAM_TAG = b"GateStreamGenerator"
cdef bytes _STREAM_END = b"GateStreamEnd"
cdef bytes _STREAM_EXC = b"GateStreamException"
cdef bytes _HUGE_TAG = b"GateStreamHugData"
cdef bytes _HUGE_END = b"HugeDataEND"
cdef bytes _HUGE_EXC = b"HugeDataException"
cdef bytes _SINGLE_HEAD = b"\x82\xa6result"
cdef bytes _SINGLE_OK_TAIL = b"\xa9exception\xc0"
cdef bytes _SINGLE_ERR_MID = b"\xc0\xa9exception"


cdef inline bint _is_empty(object frame):
    # An empty frame is falsy whatever its type (bytes, bytearray, memoryview).
    if type(frame) is bytes:
        return PyBytes_GET_SIZE(frame) == 0
    return not frame


cdef inline bint _eq(object frame, bytes expected):
    cdef Py_ssize_t n
    if type(frame) is bytes:
        n = PyBytes_GET_SIZE(frame)
        return n == PyBytes_GET_SIZE(expected) and memcmp(
            PyBytes_AS_STRING(frame), PyBytes_AS_STRING(expected), n) == 0
    return frame == expected


def split_frontend(msg, header):
    """Broker frontend: ``[client, '', header, service, ...rest]`` -> ``(client, service, rest)``."""
    if len(msg) < 5 or not _is_empty(msg[1]) or msg[2] != header:
        return None
    return msg[0], msg[3], msg[4:]


def split_backend(msg, header):
    """Broker backend: ``[worker, '', header, command, ...rest]`` -> ``(worker, command, rest)``."""
    if len(msg) < 4 or not _is_empty(msg[1]) or msg[2] != header:
        return None
    return msg[0], msg[3], msg[4:]


def split_worker(msg, header):
    """Worker side: ``['', header, command, ...rest]`` -> ``(command, rest)``."""
    if len(msg) < 3 or not _is_empty(msg[0]) or msg[1] != header:
        return None
    return msg[2], msg[3:]


def split_client_reply(msg, header):
    """Client side: ``['', header, service, rid, ...body]`` -> ``(service, rid, body)``."""
    if len(msg) < 5 or not _is_empty(msg[0]) or msg[1] != header:
        return None
    return msg[2], msg[3], msg[4:]


cdef int _reply_kind(object body) except -2:
    cdef Py_ssize_t n = len(body)
    if n == 1:
        return _KIND_SINGLE
    if n < 2:
        return _KIND_INVALID
    tag = body[0]
    if _eq(tag, _STREAM_TAG):
        if n == 2:
            return _KIND_STREAM_END if _eq(body[1], _STREAM_END) else _KIND_STREAM_ITEM
        if n == 3 and _eq(body[1], _STREAM_EXC):
            return _KIND_STREAM_ERROR
        return _KIND_INVALID
    if _eq(tag, _HUGE_TAG):
        if n == 2:
            return _KIND_HUGE_END if _eq(body[1], _HUGE_END) else _KIND_HUGE_CHUNK
        if n == 3 and (_eq(body[1], _STREAM_EXC) or _eq(body[1], _HUGE_EXC)):
            return _KIND_HUGE_ERROR
        return _KIND_INVALID
    return _KIND_INVALID


def reply_kind(body):
    """Classify a reply body (WIRE.md §4.3)."""
    return _reply_kind(body)


def is_terminal(body):
    """True when a reply body completes its request (single, end or error)."""
    cdef int k = _reply_kind(body)
    return not (k == _KIND_STREAM_ITEM or k == _KIND_HUGE_CHUNK)


def singleton_ok(packed_result):
    """``mp({"result": <value>, "exception": nil})`` from ``mp(value)``."""
    return _SINGLE_HEAD + packed_result + _SINGLE_OK_TAIL


def singleton_error(packed_triple):
    """``mp({"result": nil, "exception": <triple>})`` from ``mp(triple)``."""
    return _SINGLE_HEAD + _SINGLE_ERR_MID + packed_triple
