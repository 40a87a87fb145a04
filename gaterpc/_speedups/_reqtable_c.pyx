# cython: language_level=3, boundscheck=False, wraparound=False
"""``RequestTable``: pending requests with deadlines (compiled twin of ``_reqtable_py``).

Same design, results and exceptions as the pure twin (see its docstring):
a dict key -> entry, a non-decreasing fifo list consumed from a head index
plus a heap for out-of-order deadlines, lazy deletion of stale references
and an O(n) rebuild when they pile up.
"""

cimport cython
from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem, PyDict_DelItem, PyDict_Size
from cpython.list cimport PyList_GET_SIZE, PyList_GET_ITEM
from cpython.object cimport PyObject
from libc.math cimport isnan

from gaterpc._speedups._wire cimport REQTABLE_SLACK as _SLACK

import heapq

__all__ = ("RequestTable",)

cdef object _heappush = heapq.heappush
cdef object _heappop = heapq.heappop
cdef object _heapify = heapq.heapify


@cython.final
@cython.freelist(256)
cdef class _Entry:
    cdef double deadline
    cdef unsigned long long seq
    cdef object key
    cdef object value


@cython.final
cdef class RequestTable:
    """Pending requests: key (bytes request id) -> value, each with a deadline (loop time, float)."""

    cdef dict _map
    cdef list _fifo
    cdef Py_ssize_t _head
    cdef list _heap
    cdef unsigned long long _seq

    def __cinit__(self):
        self._map = {}
        self._fifo = []
        self._head = 0
        self._heap = []
        self._seq = 0

    cdef int _push(self, object key, object value, double deadline) except -1:
        cdef _Entry entry, last
        cdef Py_ssize_t n
        if isnan(deadline):
            raise ValueError("deadline must not be NaN")
        entry = _Entry.__new__(_Entry)
        entry.deadline = deadline
        entry.seq = self._seq
        self._seq += 1
        entry.key = key
        entry.value = value
        PyDict_SetItem(self._map, key, entry)
        n = PyList_GET_SIZE(self._fifo)
        if n > self._head:
            last = <_Entry>PyList_GET_ITEM(self._fifo, n - 1)
            if deadline < last.deadline:
                _heappush(self._heap, (deadline, entry.seq, entry))
                return 0
        self._fifo.append(entry)
        if n + 1 - self._head + PyList_GET_SIZE(self._heap) > 2 * PyDict_Size(self._map) + _SLACK:
            self._compact()
        return 0

    cdef _compact(self):
        cdef _Entry e
        cdef list fifo = []
        cdef list heap = []
        cdef Py_ssize_t i
        cdef dict m = self._map
        for i in range(self._head, PyList_GET_SIZE(self._fifo)):
            e = <_Entry>PyList_GET_ITEM(self._fifo, i)
            if <PyObject*>e is PyDict_GetItemWithError(m, e.key):
                fifo.append(e)
        for t in self._heap:
            e = <_Entry>t[2]
            if <PyObject*>e is PyDict_GetItemWithError(m, e.key):
                heap.append(t)
        _heapify(heap)
        self._fifo = fifo
        self._head = 0
        self._heap = heap

    def add(self, key, value, double deadline):
        """Store ``value`` under ``key`` until ``deadline``; replaces an existing key."""
        self._push(key, value, deadline)

    def pop(self, key, default=None):
        """Remove ``key`` and return its value, or ``default`` if absent."""
        cdef PyObject* p = PyDict_GetItemWithError(self._map, key)
        if p is NULL:
            return default
        value = (<_Entry>p).value
        # The index may still refer to the entry (lazy deletion): it must not
        # keep the value (a future holding a large result) alive.
        (<_Entry>p).value = None
        PyDict_DelItem(self._map, key)
        return value

    def get(self, key, default=None):
        """The value of ``key``, or ``default`` if absent."""
        cdef PyObject* p = PyDict_GetItemWithError(self._map, key)
        if p is NULL:
            return default
        return (<_Entry>p).value

    def touch(self, key, double deadline):
        """Move the deadline of ``key``; ``False`` if absent."""
        cdef PyObject* p = PyDict_GetItemWithError(self._map, key)
        cdef _Entry old
        if p is NULL:
            return False
        old = <_Entry>p  # a strong reference: _push may compact the index and free it
        self._push(key, old.value, deadline)
        old.value = None  # now a stale reference of the index: keep nothing alive
        return True

    def expire(self, double now):
        """Remove and return ``[(key, value), ...]`` of every entry with deadline <= now."""
        cdef list out = []
        cdef dict m = self._map
        cdef list fifo = self._fifo
        cdef list heap = self._heap
        cdef Py_ssize_t head = self._head
        cdef Py_ssize_t nfifo = PyList_GET_SIZE(fifo)
        cdef _Entry f, h, entry
        while True:
            f = None
            if head < nfifo:
                f = <_Entry>PyList_GET_ITEM(fifo, head)
                if f.deadline > now:
                    f = None
            h = None
            if PyList_GET_SIZE(heap):
                h = <_Entry>(<tuple>PyList_GET_ITEM(heap, 0))[2]
                if h.deadline > now:
                    h = None
            if f is None and h is None:
                break
            if h is None or (
                f is not None
                and (f.deadline < h.deadline or (f.deadline == h.deadline and f.seq < h.seq))
            ):
                entry = f
                head += 1
            else:
                entry = h
                _heappop(heap)
            if PyDict_GetItemWithError(m, entry.key) is <PyObject*>entry:
                PyDict_DelItem(m, entry.key)
                out.append((entry.key, entry.value))
        if head >= nfifo:
            del fifo[:]
            head = 0
        elif head > _SLACK and 2 * head > nfifo:
            del fifo[:head]
            head = 0
        self._head = head
        return out

    def clear(self):
        """Remove and return all values (insertion order)."""
        cdef _Entry e
        values = [e.value for e in self._map.values()]
        self._map.clear()
        del self._fifo[:]
        self._head = 0
        del self._heap[:]
        return values

    def __len__(self):
        return PyDict_Size(self._map)

    def __contains__(self, key):
        return key in self._map

    def __iter__(self):
        return iter(self._map)

    def __repr__(self):
        return f"<RequestTable {len(self._map)} pending>"
