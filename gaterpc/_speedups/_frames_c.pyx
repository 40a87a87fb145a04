# cython: language_level=3, boundscheck=False, wraparound=False
"""Frame splitting and building for every role (compiled twin of ``_frames_py``).

Same functions, constants and results as the pure twin; parsers return
``None`` for messages without the expected shape.  The constants come from
``_wire.pxd`` (their Python twins live in ``gaterpc.protocol``).
"""

cimport cython
from cpython.bytes cimport PyBytes_GET_SIZE, PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.list cimport PyList_GET_SIZE
from cpython.ref cimport PyObject, Py_XDECREF
from libc.string cimport memcmp, memcpy

from gaterpc._speedups cimport _wire as W

__all__ = (
    "KIND_INVALID", "KIND_SINGLE", "KIND_STREAM_ITEM", "KIND_STREAM_END", "KIND_STREAM_ERROR",
    "KIND_HUGE_CHUNK", "KIND_HUGE_END", "KIND_HUGE_ERROR",
    "split_frontend", "split_backend", "split_worker", "split_client_reply",
    "reply_kind", "is_terminal", "singleton_ok", "singleton_error", "coro_step",
)

KIND_INVALID = W.KIND_INVALID
KIND_SINGLE = W.KIND_SINGLE
KIND_STREAM_ITEM = W.KIND_STREAM_ITEM
KIND_STREAM_END = W.KIND_STREAM_END
KIND_STREAM_ERROR = W.KIND_STREAM_ERROR
KIND_HUGE_CHUNK = W.KIND_HUGE_CHUNK
KIND_HUGE_END = W.KIND_HUGE_END
KIND_HUGE_ERROR = W.KIND_HUGE_ERROR

cdef bytes _STREAM_TAG = <bytes>W.STREAM_TAG
cdef bytes _STREAM_END = <bytes>W.STREAM_END
cdef bytes _STREAM_EXC = <bytes>W.STREAM_EXC
cdef bytes _HUGE_TAG = <bytes>W.HUGE_TAG
cdef bytes _HUGE_END = <bytes>W.HUGE_END
cdef bytes _HUGE_EXC = <bytes>W.HUGE_EXC
cdef bytes _SINGLE_HEAD = <bytes>W.SINGLE_HEAD
cdef bytes _SINGLE_OK_TAIL = <bytes>W.SINGLE_OK_TAIL
cdef bytes _SINGLE_ERR_MID = <bytes>W.SINGLE_ERR_MID


def _wire_constants():
    """Every constant of ``_wire.pxd`` as the compiled modules see it (for the parity test)."""
    return {
        "STREAM_TAG": _STREAM_TAG, "STREAM_END": _STREAM_END, "STREAM_EXC": _STREAM_EXC,
        "HUGE_TAG": _HUGE_TAG, "HUGE_END": _HUGE_END, "HUGE_EXC": _HUGE_EXC,
        "SINGLE_HEAD": _SINGLE_HEAD, "SINGLE_OK_TAIL": _SINGLE_OK_TAIL, "SINGLE_ERR_MID": _SINGLE_ERR_MID,
        "KIND_INVALID": W.KIND_INVALID, "KIND_SINGLE": W.KIND_SINGLE,
        "KIND_STREAM_ITEM": W.KIND_STREAM_ITEM, "KIND_STREAM_END": W.KIND_STREAM_END,
        "KIND_STREAM_ERROR": W.KIND_STREAM_ERROR, "KIND_HUGE_CHUNK": W.KIND_HUGE_CHUNK,
        "KIND_HUGE_END": W.KIND_HUGE_END, "KIND_HUGE_ERROR": W.KIND_HUGE_ERROR,
        "REQTABLE_SLACK": W.REQTABLE_SLACK, "HUGE_UNLIMITED_STEP": W.HUGE_UNLIMITED_STEP,
        "ZERO_COPY_MIN": W.ZERO_COPY_MIN,
        "ZMQ_DONTWAIT": W.ZMQ_DONTWAIT, "ZMQ_SNDMORE": W.ZMQ_SNDMORE, "ZMQ_EVENTS": W.ZMQ_EVENTS,
    }


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
        return W.KIND_SINGLE
    if n < 2:
        return W.KIND_INVALID
    tag = body[0]
    if _eq(tag, _STREAM_TAG):
        if n == 2:
            return W.KIND_STREAM_END if _eq(body[1], _STREAM_END) else W.KIND_STREAM_ITEM
        if n == 3 and _eq(body[1], _STREAM_EXC):
            return W.KIND_STREAM_ERROR
        return W.KIND_INVALID
    if _eq(tag, _HUGE_TAG):
        if n == 2:
            return W.KIND_HUGE_END if _eq(body[1], _HUGE_END) else W.KIND_HUGE_CHUNK
        if n == 3 and (_eq(body[1], _STREAM_EXC) or _eq(body[1], _HUGE_EXC)):
            return W.KIND_HUGE_ERROR
        return W.KIND_INVALID
    return W.KIND_INVALID


def reply_kind(body):
    """Classify a reply body: one of the ``KIND_*`` constants."""
    return _reply_kind(body)


def is_terminal(body):
    """True when a reply body completes its request (single, end or error)."""
    cdef int k = _reply_kind(body)
    return not (k == W.KIND_STREAM_ITEM or k == W.KIND_HUGE_CHUNK)


def singleton_ok(packed_result):
    """``mp({"result": <value>, "exception": nil})`` from ``mp(value)``."""
    cdef Py_ssize_t h, n, t
    cdef bytes out
    cdef char* buf
    if type(packed_result) is not bytes:
        return _SINGLE_HEAD + packed_result + _SINGLE_OK_TAIL
    # One allocation and one copy of the (possibly large) packed result.
    h = PyBytes_GET_SIZE(_SINGLE_HEAD)
    n = PyBytes_GET_SIZE(packed_result)
    t = PyBytes_GET_SIZE(_SINGLE_OK_TAIL)
    out = PyBytes_FromStringAndSize(NULL, h + n + t)
    buf = PyBytes_AS_STRING(out)
    memcpy(buf, PyBytes_AS_STRING(_SINGLE_HEAD), h)
    memcpy(buf + h, PyBytes_AS_STRING(packed_result), n)
    memcpy(buf + h + n, PyBytes_AS_STRING(_SINGLE_OK_TAIL), t)
    return out


def singleton_error(packed_triple):
    """``mp({"result": nil, "exception": <triple>})`` from ``mp(triple)``."""
    return _SINGLE_HEAD + _SINGLE_ERR_MID + packed_triple


cdef extern from "Python.h":
    # PYGEN_ERROR is -1: Cython raises the exception it leaves set.
    int PyIter_Send(object iter, object arg, PyObject** presult) except -1
    int PyContext_Enter(object ctx) except -1
    int PyContext_Exit(object ctx) except -1


def coro_step(ctx, coro):
    """Run ``coro`` one step (``send(None)``) in the context ``ctx``.

    ``(True, returned value)`` when it finished, ``(False, yielded value)``
    when it suspended; an exception of the step propagates.  The execute
    path's eager first step: no ``StopIteration`` is raised for a
    coroutine that returns.
    """
    cdef PyObject* res = NULL
    cdef int r
    PyContext_Enter(ctx)
    try:
        r = PyIter_Send(coro, None, &res)
    finally:
        PyContext_Exit(ctx)
    value = <object>res
    Py_XDECREF(res)
    return (r == 0, value)
