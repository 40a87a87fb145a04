# cython: language_level=3, boundscheck=False, wraparound=False
"""The broker's routing fast path (compiled twin of ``_route_py``).

Same functions and behaviour as the pure twin (see its docstring): the loop
over a batch, the frame checks, the round robin and the rewrite of the frame
list run in C on the broker's own Python objects; everything uncommon is
handed to the broker's Python methods exactly as the pure twin does.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.sequence cimport PySequence_SetSlice
from libc.string cimport memcmp

from zmq import ZMQError

from gaterpc._speedups cimport _wire as W
from gaterpc.counters import count_drop
from gaterpc.protocol import CREDIT_HEADER as _PY_CREDIT_HEADER, REPLY as _PY_REPLY, REQUEST as _PY_REQUEST

__all__ = ("route_requests", "route_replies", "take", "give_back")

cdef bytes _REPLY = _PY_REPLY
cdef bytes _REQUEST = _PY_REQUEST
cdef bytes _CREDIT_HEADER = _PY_CREDIT_HEADER
cdef bytes _EMPTY = b""
cdef bytes _STREAM_TAG = <bytes>W.STREAM_TAG
cdef bytes _STREAM_END = <bytes>W.STREAM_END
cdef bytes _HUGE_TAG = <bytes>W.HUGE_TAG
cdef bytes _HUGE_END = <bytes>W.HUGE_END


cdef inline bint _is_empty(object frame) except -1:
    # An empty frame is falsy whatever its type (bytes, bytearray, memoryview).
    if type(frame) is bytes:
        return PyBytes_GET_SIZE(frame) == 0
    return not frame


cdef inline bint _eq(object frame, object expected) except -1:
    cdef Py_ssize_t n
    if type(frame) is bytes and type(expected) is bytes:
        n = PyBytes_GET_SIZE(frame)
        return n == PyBytes_GET_SIZE(expected) and memcmp(
            PyBytes_AS_STRING(frame), PyBytes_AS_STRING(expected), n) == 0
    return frame == expected


cdef inline bint _goes_on(object msg, Py_ssize_t n) except -1:
    # The reply body msg[7:] is a stream item or a HugeData chunk: its request goes on.
    if n != 9:
        return False
    tag = msg[7]
    if _eq(tag, _STREAM_TAG):
        return not _eq(msg[8], _STREAM_END)
    if _eq(tag, _HUGE_TAG):
        return not _eq(msg[8], _HUGE_END)
    return False


cdef object _take(object svc):
    ready = svc._ready
    workers = svc.workers
    while ready:
        w = ready[0]
        if not w.ready or w.max_allowed_request <= 0 or w.identity not in workers:
            ready.popleft()
            w._in_ready = False
            continue
        w.max_allowed_request -= 1
        if w.max_allowed_request > 0:
            ready.rotate(-1)
        else:
            ready.popleft()
            w._in_ready = False
        return w
    return None


cdef int _give_back(object svc, object w) except -1:
    w.max_allowed_request += 1
    if not w._in_ready and w.ready and w.max_allowed_request > 0 and w.identity in svc.workers:
        w._in_ready = True
        svc._ready.append(w)
    if svc._capacity_waiters:
        svc._wake_capacity_waiter()
    return 0


cdef class _Out:
    """Where a batch's rewritten messages go: one ``LoopSocket`` (or ``None``).

    For a ``LoopSocket`` in per-peer mode, a message to a peer with nothing
    waiting in its backlog is handed straight to the socket's batch I/O
    (``lsock.io.send``), which is what ``LoopSocket.send`` does first, minus
    two Python calls; the one re-check of ``EVENTS`` that every send
    schedules is scheduled once, at the end of the batch (:meth:`done`).
    Everything else -- a peer with a backlog, a message that would block, a
    peer gone (EHOSTUNREACH), a closed socket, a socket of another kind --
    goes through ``lsock.send`` unchanged (a message that met an error is
    simply offered to it again: nothing of it was sent).
    """

    cdef object lsock
    cdef object send
    cdef object io
    cdef dict peers
    cdef bint direct
    cdef bint sent

    def __init__(self, lsock):
        self.lsock = lsock
        self.sent = False
        self.direct = False
        if lsock is None:
            return
        self.send = lsock.send
        if getattr(lsock, "_per_peer", False) is True:
            peers = getattr(lsock, "_peers", None)
            io = getattr(lsock, "io", None)
            if type(peers) is dict and io is not None:
                self.peers = peers
                self.io = io
                self.direct = True

    cdef int put(self, object msg) except -1:
        if self.lsock is None:
            return 0
        if self.direct and (not self.peers or PyDict_GetItem(self.peers, msg[0]) is NULL) \
                and not self.lsock._closed:
            try:
                if self.io.send(msg):
                    self.sent = True
                    return 0
            except ZMQError:
                pass
        self.send(msg)
        return 0

    cdef int done(self) except -1:
        if self.sent:
            self.sent = False
            self.lsock._schedule_check()
        return 0


def take(svc):
    """A worker of ``svc`` with spare capacity (one unit taken), or ``None``."""
    return _take(svc)


def give_back(svc, w):
    """Return one unit of capacity of ``w`` to ``svc``."""
    _give_back(svc, w)


def route_requests(broker, msgs):
    """Route a frontend batch (see the pure twin)."""
    cdef object header = broker._mdp_client
    cdef object worker_header = broker._mdp_worker
    cdef object internal_b = broker._internal_b
    cdef dict services = broker._services_b
    cdef _Out out = _Out(broker._lback)
    cdef object msg
    cdef object svc, w, service_b, client_id
    cdef PyObject* found
    cdef Py_ssize_t n
    for msg in msgs:
        n = len(msg)
        if n < 5 or not _is_empty(msg[1]) or not _eq(msg[2], header):
            if n == 6 and _is_empty(msg[1]) and _eq(msg[2], _CREDIT_HEADER):
                try:
                    broker._client_credit(msg)  # HugeData flow control (rare: not a request)
                except Exception:
                    broker._count_error(msg, True)
            else:
                count_drop("frontend_malformed")  # names no request: nobody to answer
            continue
        try:
            service_b = msg[3]
            w = None
            svc = None
            if n > 5 and not _eq(service_b, internal_b):
                found = PyDict_GetItem(services, service_b)
                if found is not NULL:
                    svc = <object>found
                    w = _take(svc)
            if w is None:
                broker._route_request(msg, service_b)
                continue
            svc.stat_requests += 1
            client_id = msg[0]
            w._inflight[msg[4]] = client_id
            # [client, '', MDPC01, service, rid, *body] -> [worker, '', MDPW01, 02, client, '', rid, *body]
            PySequence_SetSlice(msg, 0, 4, (w.identity, _EMPTY, worker_header, _REQUEST, client_id, _EMPTY))
            out.put(msg)
        except Exception:
            broker._count_error(msg, True)
    out.done()


def route_replies(broker, msgs, double now):
    """Handle a backend batch (see the pure twin)."""
    cdef object header = broker._mdp_worker
    cdef object client_header = broker._mdp_client
    cdef dict workers = broker.workers
    cdef object special = broker._special_ids
    cdef _Out out = _Out(broker._lfront)
    cdef object msg
    cdef object w, svc, client_id, request_id, inflight, partial
    cdef PyObject* found
    cdef Py_ssize_t n
    for msg in msgs:
        n = len(msg)
        if n < 4 or not _is_empty(msg[1]) or not _eq(msg[2], header):
            continue
        try:
            if not _eq(msg[3], _REPLY):
                broker._backend_command(msg[0], msg[3], msg[4:], now)
                continue
            found = PyDict_GetItem(workers, msg[0])
            if found is NULL:
                broker._unknown_worker(msg[0])
                continue
            w = <object>found
            if n < 8 or not _is_empty(msg[5]):
                count_drop("malformed_reply")
                continue
            w.expiry = now + w.heartbeat * w.heartbeat_liveness / 1000
            client_id = msg[4]
            if client_id in special:
                # a reply to the broker itself / a peer gate
                broker._on_reply(w, msg)
                continue
            request_id = msg[6]
            inflight = w._inflight
            if inflight.get(request_id) != client_id:
                count_drop("reply_not_dispatched")
                continue
            svc = w.service
            if n != 8 and _goes_on(msg, n):
                # a stream item or HugeData chunk: if the worker dies now, the caller
                # gets a stream-shaped error (see the broker's _on_reply)
                w._partial[request_id] = msg[7]
            else:
                svc.stat_served += 1
                del inflight[request_id]
                partial = w._partial
                if partial:
                    partial.pop(request_id, None)
                _give_back(svc, w)
                if svc._waiting:
                    broker._dispatch_waiting(svc)
            # -> [client, '', MDPC01, service, rid, *body]
            PySequence_SetSlice(msg, 0, 6, (client_id, _EMPTY, client_header, svc._name_b))
            out.put(msg)
        except Exception:
            broker._count_error(msg)
    out.done()
