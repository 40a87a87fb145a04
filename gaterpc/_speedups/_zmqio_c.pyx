# cython: language_level=3, boundscheck=False, wraparound=False
"""Non-blocking batch I/O on one pyzmq socket (compiled twin of ``_zmqio_py``).

libzmq is called directly on the pyzmq socket's handle (``socket.underlying``)
through function pointers taken from the very libzmq that pyzmq loaded (see
``_find_libzmq``); ``zmq_msg_t`` is treated as an opaque 64-byte aligned
struct.  Frames are copied into ``bytes`` on receive, except frames of at
least ``recv_nocopy_min`` bytes (when set), which arrive as read-only
``memoryview`` objects owning the received libzmq message.  On send, a
``bytes`` frame of at least ``ZERO_COPY_MIN`` bytes (``gaterpc.protocol``) is
handed to libzmq without a copy (``zmq_msg_init_data``): the message holds a
reference to the ``bytes`` object until libzmq is done with it; such a
received view, passed on whole, shares its libzmq buffer (``zmq_msg_copy``:
libzmq counts the references, no Python object is held by its threads); any
other frame (small, a slice of a view, or a mutable buffer such as
``bytearray``) is copied.  The GIL is held throughout (every call is
non-blocking).

libzmq releases a zero-copy message from whichever thread finishes with it
(usually its I/O thread), which must not wait for the GIL: the free function
only pushes the reference onto a lock-free list, and the next call of any
``ZSocketIO`` of the process (or :func:`release_sent`) drops the references
gathered there with the GIL held.

Importing raises ``ImportError`` when the library cannot be located, so the
selector falls back to the pure twin.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBuffer_FillInfo, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from cpython.exc cimport PyErr_CheckSignals
from cpython.memoryview cimport PyMemoryView_Check, PyMemoryView_GET_BUFFER
from libc.stdint cimport uintptr_t
from libc.stdlib cimport malloc, free

from gaterpc._speedups._wire cimport ZERO_COPY_MIN, ZMQ_DONTWAIT, ZMQ_EVENTS, ZMQ_SNDMORE

import ctypes
import errno as _errno
import os
import sys

import zmq

__all__ = ("ZSocketIO", "release_sent")

cdef extern from *:
    """
    typedef union {
        unsigned char _[64];
        void *_p;
        double _d;
        long long _ll;
    } gaterpc_zmq_msg_t;
    """
    ctypedef struct gaterpc_zmq_msg_t:
        pass

cdef extern from *:
    """
    /* A Python object lent to libzmq by a zero-copy send.  libzmq's free
       function runs in any thread, without the GIL: it only pushes the hold
       onto a lock-free stack (Treiber push; the consumer takes the whole
       stack at once, so there is no ABA), emptied with the GIL held. */
    typedef struct gaterpc_hold {
        PyObject *obj;
        struct gaterpc_hold *next;
    } gaterpc_hold;

    static gaterpc_hold *gaterpc_released = NULL;

    #if defined(_MSC_VER)
    #include <windows.h>
    static void gaterpc_hold_free(void *data, void *hint) {
        gaterpc_hold *h = (gaterpc_hold *)hint;
        gaterpc_hold *head;
        (void)data;
        do {
            head = (gaterpc_hold *)gaterpc_released;
            h->next = head;
        } while (InterlockedCompareExchangePointer((PVOID volatile *)&gaterpc_released, h, head) != head);
    }
    static gaterpc_hold *gaterpc_take_released(void) {
        if (gaterpc_released == NULL) return NULL;
        return (gaterpc_hold *)InterlockedExchangePointer((PVOID volatile *)&gaterpc_released, NULL);
    }
    #else
    static void gaterpc_hold_free(void *data, void *hint) {
        gaterpc_hold *h = (gaterpc_hold *)hint;
        gaterpc_hold *head = __atomic_load_n(&gaterpc_released, __ATOMIC_RELAXED);
        (void)data;
        do {
            h->next = head;
        } while (!__atomic_compare_exchange_n(&gaterpc_released, &head, h, 1,
                                              __ATOMIC_RELEASE, __ATOMIC_RELAXED));
    }
    static gaterpc_hold *gaterpc_take_released(void) {
        if (__atomic_load_n(&gaterpc_released, __ATOMIC_RELAXED) == NULL) return NULL;
        return __atomic_exchange_n(&gaterpc_released, NULL, __ATOMIC_ACQUIRE);
    }
    #endif
    """
    ctypedef struct gaterpc_hold:
        PyObject* obj
        gaterpc_hold* next
    void gaterpc_hold_free(void* data, void* hint) noexcept nogil
    gaterpc_hold* gaterpc_take_released() noexcept nogil

ctypedef int (*f_msg_init)(gaterpc_zmq_msg_t*) noexcept nogil
ctypedef int (*f_msg_init_size)(gaterpc_zmq_msg_t*, size_t) noexcept nogil
ctypedef int (*f_msg_io)(gaterpc_zmq_msg_t*, void*, int) noexcept nogil
ctypedef void* (*f_msg_data)(gaterpc_zmq_msg_t*) noexcept nogil
ctypedef size_t (*f_msg_size)(const gaterpc_zmq_msg_t*) noexcept nogil
ctypedef int (*f_msg_more)(const gaterpc_zmq_msg_t*) noexcept nogil
ctypedef int (*f_msg_close)(gaterpc_zmq_msg_t*) noexcept nogil
ctypedef int (*f_errno)() noexcept nogil
ctypedef int (*f_getsockopt)(void*, int, void*, size_t*) noexcept nogil
ctypedef int (*f_send)(void*, const void*, size_t, int) noexcept nogil
ctypedef void (*f_free)(void*, void*) noexcept nogil
ctypedef int (*f_msg_init_data)(gaterpc_zmq_msg_t*, void*, size_t, f_free, void*) noexcept nogil
ctypedef int (*f_msg_move)(gaterpc_zmq_msg_t*, gaterpc_zmq_msg_t*) noexcept nogil
ctypedef int (*f_msg_copy)(gaterpc_zmq_msg_t*, gaterpc_zmq_msg_t*) noexcept nogil

cdef enum:
    STACK_FRAMES = 16  # Py_buffer views of a message kept on the C stack; more are malloc'ed

cdef f_msg_init z_msg_init = NULL
cdef f_msg_init_size z_msg_init_size = NULL
cdef f_msg_io z_msg_recv = NULL
cdef f_msg_io z_msg_send = NULL
cdef f_msg_data z_msg_data = NULL
cdef f_msg_size z_msg_size = NULL
cdef f_msg_more z_msg_more = NULL
cdef f_msg_close z_msg_close = NULL
cdef f_errno z_errno = NULL
cdef f_getsockopt z_getsockopt = NULL
cdef f_send z_send = NULL
cdef f_msg_init_data z_msg_init_data = NULL
cdef f_msg_move z_msg_move = NULL
cdef f_msg_copy z_msg_copy = NULL

cdef int EAGAIN = zmq.EAGAIN
cdef int EINTR = _errno.EINTR
cdef int ETERM = zmq.ETERM
cdef int ENOTSOCK = zmq.ENOTSOCK

cdef object ZMQError = zmq.ZMQError
cdef object ContextTerminated = zmq.ContextTerminated
cdef object Socket = zmq.Socket


def _loaded_libzmq_candidates():
    """Paths of libraries that may hold pyzmq's libzmq, most reliable first."""
    import zmq.backend.cython._zmq as backend

    paths = []
    # 1. Linux: the libraries actually mapped into this process.
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    if os.path.basename(path).startswith("libzmq") and path not in paths:
                        paths.append(path)
    except OSError:
        pass
    # 2. macOS: the images loaded by dyld.
    if sys.platform == "darwin":
        try:
            libc = ctypes.CDLL(None)
            libc._dyld_image_count.restype = ctypes.c_uint32
            libc._dyld_get_image_name.restype = ctypes.c_char_p
            libc._dyld_get_image_name.argtypes = [ctypes.c_uint32]
            for i in range(libc._dyld_image_count()):
                path = os.fsdecode(libc._dyld_get_image_name(i) or b"")
                if "libzmq" in os.path.basename(path) and path not in paths:
                    paths.append(path)
        except (OSError, AttributeError):
            pass
    # 3. libzmq linked statically into pyzmq's backend extension.
    paths.append(backend.__file__)
    # 4. The directories wheel repair tools bundle libzmq into.
    pkg = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(zmq.__file__))))
    for libdir in (
        os.path.join(pkg, "pyzmq.libs"),
        os.path.join(os.path.dirname(os.path.abspath(zmq.__file__)), ".dylibs"),
    ):
        try:
            names = sorted(os.listdir(libdir))
        except OSError:
            continue
        for name in names:
            if name.startswith("libzmq"):
                path = os.path.join(libdir, name)
                if path not in paths:
                    paths.append(path)
    return paths


_SYMBOLS = (
    "zmq_msg_init", "zmq_msg_init_size", "zmq_msg_recv", "zmq_msg_send", "zmq_msg_data",
    "zmq_msg_size", "zmq_msg_more", "zmq_msg_close", "zmq_errno", "zmq_getsockopt", "zmq_send",
    "zmq_version", "zmq_msg_init_data", "zmq_msg_move", "zmq_msg_copy",
)


def _find_libzmq():
    """``(path, {symbol: address})`` of the libzmq pyzmq loaded; ``ImportError`` if not found."""
    want = zmq.zmq_version_info()
    tried = []
    for path in _loaded_libzmq_candidates():
        try:
            lib = ctypes.CDLL(path)
            addrs = {name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in _SYMBOLS}
        except (OSError, AttributeError) as exc:
            tried.append(f"{path}: {exc}")
            continue
        major, minor, patch = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        lib.zmq_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
        if (major.value, minor.value, patch.value) != tuple(want):
            tried.append(f"{path}: version {major.value}.{minor.value}.{patch.value} != {want}")
            continue
        return path, addrs
    raise ImportError("cannot locate the libzmq pyzmq loaded; tried: " + "; ".join(tried or ["nothing"]))


cdef void _bind(dict addrs):
    global z_msg_init, z_msg_init_size, z_msg_recv, z_msg_send, z_msg_data, z_msg_size
    global z_msg_more, z_msg_close, z_errno, z_getsockopt, z_send, z_msg_init_data, z_msg_move, z_msg_copy
    z_msg_init = <f_msg_init><uintptr_t>addrs["zmq_msg_init"]
    z_msg_init_size = <f_msg_init_size><uintptr_t>addrs["zmq_msg_init_size"]
    z_msg_recv = <f_msg_io><uintptr_t>addrs["zmq_msg_recv"]
    z_msg_send = <f_msg_io><uintptr_t>addrs["zmq_msg_send"]
    z_msg_data = <f_msg_data><uintptr_t>addrs["zmq_msg_data"]
    z_msg_size = <f_msg_size><uintptr_t>addrs["zmq_msg_size"]
    z_msg_more = <f_msg_more><uintptr_t>addrs["zmq_msg_more"]
    z_msg_close = <f_msg_close><uintptr_t>addrs["zmq_msg_close"]
    z_errno = <f_errno><uintptr_t>addrs["zmq_errno"]
    z_getsockopt = <f_getsockopt><uintptr_t>addrs["zmq_getsockopt"]
    z_send = <f_send><uintptr_t>addrs["zmq_send"]
    z_msg_init_data = <f_msg_init_data><uintptr_t>addrs["zmq_msg_init_data"]
    z_msg_move = <f_msg_move><uintptr_t>addrs["zmq_msg_move"]
    z_msg_copy = <f_msg_copy><uintptr_t>addrs["zmq_msg_copy"]


LIBZMQ_PATH, _addrs = _find_libzmq()
_bind(_addrs)
del _addrs


cdef object _error(int err):
    """The exception pyzmq raises for ``err`` (EAGAIN and EINTR never reach here)."""
    if err == ETERM:
        return ContextTerminated(err)
    return ZMQError(err)


cdef inline Py_ssize_t _release_sent() noexcept:
    """Drop the references of the zero-copy frames libzmq is done with; how many."""
    cdef gaterpc_hold* h = gaterpc_take_released()
    cdef gaterpc_hold* nxt
    cdef Py_ssize_t n = 0
    while h is not NULL:
        nxt = h.next
        Py_DECREF(<object>h.obj)
        free(h)
        h = nxt
        n += 1
    return n


def release_sent():
    """Drop now the references held for zero-copy frames libzmq has finished sending.

    Every ``ZSocketIO`` call does it anyway; returns how many were dropped.
    """
    return _release_sent()


@cython.final
cdef class _Msg:
    """A received libzmq message, lent read-only through the buffer protocol (no copy)."""

    cdef gaterpc_zmq_msg_t msg
    cdef bint live

    def __getbuffer__(self, Py_buffer* view, int flags):
        PyBuffer_FillInfo(view, self, z_msg_data(&self.msg), <Py_ssize_t>z_msg_size(&self.msg), 1, flags)

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __dealloc__(self):
        if self.live:
            self.live = 0
            z_msg_close(&self.msg)


cdef object _msg_view(gaterpc_zmq_msg_t* zmsg):
    """A read-only ``memoryview`` owning the content of ``zmsg`` (left empty)."""
    cdef _Msg m = _Msg.__new__(_Msg)
    z_msg_init(&m.msg)
    m.live = 1
    z_msg_move(&m.msg, zmsg)
    return memoryview(m)


cdef inline _Msg _whole_msg(Py_buffer* view):
    """The received message ``view`` shows whole (a ``memoryview`` from ``recv_batch``), else None."""
    cdef object obj
    cdef Py_buffer* mv
    cdef _Msg m
    if <PyObject*>view.obj == NULL:
        return None
    obj = view.obj
    if not PyMemoryView_Check(obj):
        return None
    mv = PyMemoryView_GET_BUFFER(obj)
    if <PyObject*>mv.obj == NULL or type(mv.obj) is not _Msg:
        return None
    m = <_Msg>mv.obj
    # A slice of the view shares its _Msg: only the whole message can be passed on.
    if not m.live or view.buf != z_msg_data(&m.msg) or <size_t>view.len != z_msg_size(&m.msg):
        return None
    return m


cdef int _send_shared(void* h, _Msg m, int flags) noexcept:
    """Send a received message again, sharing its buffer (libzmq counts the references): 0 or -errno."""
    cdef gaterpc_zmq_msg_t zmsg
    cdef int err
    z_msg_init(&zmsg)
    if z_msg_copy(&zmsg, &m.msg) < 0:
        err = z_errno()
        z_msg_close(&zmsg)
        return -err
    if z_msg_send(&zmsg, h, flags) < 0:
        err = z_errno()
        z_msg_close(&zmsg)
        return -err
    return 0


cdef int _send_nocopy(void* h, object frame, int flags) except -2:
    """Send one ``bytes`` frame without copying it: 0 sent, else minus the errno."""
    cdef gaterpc_zmq_msg_t zmsg
    cdef int err
    cdef gaterpc_hold* hold = <gaterpc_hold*>malloc(sizeof(gaterpc_hold))
    if hold is NULL:
        raise MemoryError()
    hold.obj = <PyObject*>frame
    hold.next = NULL
    Py_INCREF(frame)
    if z_msg_init_data(&zmsg, <void*>PyBytes_AS_STRING(frame), <size_t>PyBytes_GET_SIZE(frame),
                       gaterpc_hold_free, <void*>hold) < 0:
        # libzmq did not take the hold (no memory): it is still ours.
        err = z_errno()
        Py_DECREF(frame)
        free(hold)
        return -err
    if z_msg_send(&zmsg, h, flags) < 0:
        # Still ours: closing it calls the free function (the hold is released later).
        err = z_errno()
        z_msg_close(&zmsg)
        return -err
    return 0


@cython.final
cdef class ZSocketIO:
    """Non-blocking batch I/O on one pyzmq socket (sync zmq.Socket; the caller integrates the FD with asyncio).

    ``recv_batch(n)`` returns up to ``n`` complete multipart messages (each a
    list of ``bytes``), ``[]`` when nothing is ready; ``send(frames)`` sends
    one multipart message atomically or returns ``False`` with nothing sent
    if it would block; ``send_many(messages)`` stops at the first that would
    block and returns the count sent; ``events()`` is ``ZMQ_EVENTS``;
    ``close(linger)`` closes the socket, after which every call raises
    ``zmq.ZMQError(ENOTSOCK)``.  Errors other than EAGAIN are raised as
    pyzmq raises them (EINTR is retried).

    Counters (read-only ints, for metrics): ``rx_msgs``/``rx_bytes`` count
    the complete messages returned by ``recv_batch`` and the sum of their
    frame sizes; ``tx_msgs``/``tx_bytes`` the messages ``send``/
    ``send_many`` sent whole and their frame sizes (a message that would
    block is not counted).  Every frame counts, including a ROUTER's
    routing-id frame.  ``tx_nocopy_frames``/``tx_nocopy_bytes`` count the
    frames of those messages handed to libzmq without a copy (``bytes`` of
    at least ``ZERO_COPY_MIN`` bytes, or received views passed on whole)
    and their sizes.

    ``recv_nocopy_min`` (default 0: off): a received frame of at least that
    many bytes is returned as a read-only ``memoryview`` of libzmq's own
    buffer instead of a ``bytes`` copy (``rx_nocopy_frames`` counts them).
    Smaller frames stay ``bytes``.  Only for a receiver whose code accepts
    any buffer in those frames (msgpack, ``==``, ``len``, forwarding).
    """

    cdef readonly object socket
    cdef void* _handle
    cdef readonly unsigned long long rx_msgs
    cdef readonly unsigned long long rx_bytes
    cdef readonly unsigned long long tx_msgs
    cdef readonly unsigned long long tx_bytes
    cdef readonly unsigned long long tx_nocopy_frames
    cdef readonly unsigned long long tx_nocopy_bytes
    cdef readonly unsigned long long rx_nocopy_frames
    cdef readonly Py_ssize_t recv_nocopy_min

    def __init__(self, sock, recv_nocopy_min=0):
        if type(recv_nocopy_min) is not int or recv_nocopy_min < 0:
            raise ValueError(f"recv_nocopy_min must be an int >= 0, got {recv_nocopy_min!r}")
        if not isinstance(sock, Socket):
            raise TypeError(f"expected a zmq.Socket, got {type(sock).__name__}")
        if sock.closed:
            raise ZMQError(ENOTSOCK)
        self.socket = sock
        self._handle = <void*><uintptr_t>sock.underlying
        self.recv_nocopy_min = recv_nocopy_min

    cdef inline void* _sock(self) except NULL:
        # The pyzmq socket may have been closed behind our back: never use a
        # freed handle.
        if self._handle is NULL or self.socket.closed:
            self._handle = NULL
            raise ZMQError(ENOTSOCK)
        return self._handle

    def recv_batch(self, Py_ssize_t max_msgs):
        """Up to ``max_msgs`` complete multipart messages; ``[]`` when nothing is ready."""
        cdef void* h = self._sock()
        cdef list out = []
        cdef list msg
        _release_sent()
        cdef gaterpc_zmq_msg_t zmsg
        cdef int rc, err
        cdef Py_ssize_t count = 0
        cdef size_t size, nbytes
        cdef size_t nocopy_min = <size_t>self.recv_nocopy_min if self.recv_nocopy_min > 0 else <size_t>-1
        cdef object frame
        while count < max_msgs:
            msg = []
            nbytes = 0
            while True:
                z_msg_init(&zmsg)
                rc = z_msg_recv(&zmsg, h, ZMQ_DONTWAIT)
                if rc < 0:
                    err = z_errno()
                    z_msg_close(&zmsg)
                    if err == EINTR:
                        PyErr_CheckSignals()
                        continue
                    if err == EAGAIN and not msg:
                        return out
                    raise _error(err)
                size = z_msg_size(&zmsg)
                rc = z_msg_more(&zmsg)
                try:
                    if size >= nocopy_min:
                        frame = _msg_view(&zmsg)
                        self.rx_nocopy_frames += 1
                    else:
                        frame = PyBytes_FromStringAndSize(<char*>z_msg_data(&zmsg), <Py_ssize_t>size)
                finally:
                    z_msg_close(&zmsg)
                msg.append(frame)
                nbytes += size
                if not rc:
                    break
            out.append(msg)
            count += 1
            self.rx_msgs += 1
            self.rx_bytes += nbytes
        return out

    cdef int _send_frames(self, void* h, object frames) except -1:
        """1 sent, 0 would block (nothing sent)."""
        cdef Py_buffer stack_views[STACK_FRAMES]
        cdef Py_buffer* views = stack_views
        cdef Py_ssize_t n, i, got = 0
        cdef size_t nbytes = 0, nocopy_bytes = 0
        cdef int rc, err, flags, nocopy = 0
        cdef object seq
        cdef _Msg shared
        _release_sent()
        if type(frames) is list or type(frames) is tuple:
            seq = frames
        else:
            seq = list(frames)
        n = len(seq)
        if n == 0:
            raise ValueError("a message needs at least one frame")
        if n > STACK_FRAMES:
            views = <Py_buffer*>malloc(n * sizeof(Py_buffer))
            if views is NULL:
                raise MemoryError()
        try:
            # Get every buffer before sending the first frame: a failure in
            # the middle would leave a partial multipart message in the socket.
            for i in range(n):
                PyObject_GetBuffer(seq[i], &views[i], PyBUF_SIMPLE)
                got += 1
                nbytes += <size_t>views[i].len
            i = 0
            while i < n:
                flags = ZMQ_DONTWAIT | ZMQ_SNDMORE if i < n - 1 else ZMQ_DONTWAIT
                # Only an immutable ``bytes`` may be lent: a bytearray could change under libzmq.
                if views[i].len >= ZERO_COPY_MIN and PyBytes_CheckExact(<object>views[i].obj):
                    rc = _send_nocopy(h, <object>views[i].obj, flags)
                    err = -rc
                    if rc == 0:
                        nocopy += 1
                        nocopy_bytes += <size_t>views[i].len
                else:
                    shared = _whole_msg(&views[i]) if views[i].len >= ZERO_COPY_MIN else None
                    if shared is not None:
                        # A frame received without a copy, passed on (a broker forwarding a body).
                        rc = _send_shared(h, shared, flags)
                        err = -rc
                        if rc == 0:
                            nocopy += 1
                            nocopy_bytes += <size_t>views[i].len
                    else:
                        rc = z_send(h, views[i].buf, <size_t>views[i].len, flags)
                        if rc < 0:
                            err = z_errno()
                if rc < 0:
                    if err == EINTR:
                        PyErr_CheckSignals()
                        continue
                    if err == EAGAIN and i == 0:
                        return 0
                    raise _error(err)
                i += 1
            self.tx_msgs += 1
            self.tx_bytes += nbytes
            self.tx_nocopy_frames += nocopy
            self.tx_nocopy_bytes += nocopy_bytes
            return 1
        finally:
            for i in range(got):
                PyBuffer_Release(&views[i])
            if views is not stack_views:
                free(views)

    def send(self, frames):
        """Send one multipart message; ``False`` and nothing sent if it would block."""
        return self._send_frames(self._sock(), frames) == 1

    def send_many(self, messages):
        """Send messages in order, stopping at the first that would block; return how many were sent."""
        cdef Py_ssize_t sent = 0
        for frames in messages:
            if not self._send_frames(self._sock(), frames):
                break
            sent += 1
        return sent

    def events(self):
        """The socket's ``ZMQ_EVENTS`` (POLLIN=1, POLLOUT=2)."""
        cdef void* h = self._sock()
        cdef int value = 0
        _release_sent()
        cdef size_t size = sizeof(int)
        cdef int err
        while z_getsockopt(h, ZMQ_EVENTS, &value, &size) < 0:
            err = z_errno()
            if err != EINTR:
                raise _error(err)
            PyErr_CheckSignals()
        return value

    def close(self, linger=0):
        """Close the socket (idempotent); later calls raise ``zmq.ZMQError(ENOTSOCK)``."""
        self._handle = NULL
        self.socket.close(linger=linger)
        _release_sent()
