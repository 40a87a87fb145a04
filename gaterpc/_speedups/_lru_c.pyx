# cython: language_level=3, boundscheck=False, wraparound=False
"""``KVLRUCache``: a small LRU mapping (compiled twin of ``_lru_py``).

Same design, attributes, results and exceptions as the pure twin (see its
docstring); modelled on uvloop's ``lru.pyx``: an ``OrderedDict`` in recency
order with its bound methods cached in C fields.
"""

cimport cython
from cpython.dict cimport PyDict_GetItemWithError
from cpython.object cimport PyObject

import time
from collections import OrderedDict

__all__ = ("KVLRUCache",)

cdef object _MARKER = object()
cdef object _ZERO = (0, 0)


@cython.final
cdef class KVLRUCache:
    """LRU mapping of at most ``maxsize`` entries, optionally expiring after ``ttl`` seconds.

    ``c[key] = value`` inserts (evicting the least recently used entry when
    full) or refreshes; ``c[key]`` returns the value or raises ``KeyError()``;
    ``key in c``, ``len(c)``, ``c.pop(key)`` (value or ``None``).  ``timer``
    replaces ``time.monotonic`` (for tests).
    """

    cdef Py_ssize_t _maxsize
    cdef public object max_tracking_entries
    cdef public object debug
    cdef readonly object cache
    cdef readonly object tracking_entries
    cdef public bint full
    cdef public Py_ssize_t hits
    cdef public Py_ssize_t misses
    cdef object _ttl
    cdef double _ttl_c
    cdef bint _has_ttl
    cdef object _stamps
    cdef object _timer
    # Bound methods of ``cache`` cached once (uvloop's pattern).
    cdef object _get
    cdef object _move_to_end
    cdef object _popitem
    cdef object _pop

    def __init__(self, maxsize=128, max_tracking_entries=1000, debug=False, *, ttl=None, timer=None):
        self._maxsize = 0
        self.maxsize = maxsize
        self.max_tracking_entries = max_tracking_entries
        self.debug = debug
        self.cache = OrderedDict()
        self.tracking_entries = OrderedDict()
        self.full = False
        self.hits = 0
        self.misses = 0
        if ttl is not None:
            ttl = float(ttl)
            if not ttl > 0:
                raise ValueError("ttl must be a positive number of seconds or None")
            self._ttl_c = ttl
        self._ttl = ttl
        self._has_ttl = ttl is not None
        self._stamps = OrderedDict()
        self._timer = time.monotonic if timer is None else timer
        self._get = self.cache.get
        self._move_to_end = self.cache.move_to_end
        self._popitem = self.cache.popitem
        self._pop = self.cache.pop

    @property
    def maxsize(self):
        """Largest number of entries kept (a positive int)."""
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value):
        if value <= 0:
            raise ValueError("maxsize must be a positive integer")
        self._maxsize = int(value)

    @property
    def ttl(self):
        """Seconds an entry stays valid after it was set, or ``None`` (never expires)."""
        return self._ttl

    # -- internals ---------------------------------------------------------

    cdef inline bint _tracking(self) except -1:
        return bool(self.debug) and self.max_tracking_entries > 0

    cdef _track(self, key, bint hit):
        entries = self.tracking_entries
        h, m = entries.pop(key, _ZERO)
        entries[key] = (h + 1, m) if hit else (h, m + 1)
        while len(entries) > self.max_tracking_entries:
            entries.popitem(last=False)

    cdef _purge(self):
        cdef object stamps = self._stamps
        if not stamps:
            return
        cdef double limit = <double>self._timer() - self._ttl_c
        cache = self.cache
        while stamps:
            key = next(iter(stamps))
            if <double>stamps[key] > limit:
                break
            del stamps[key]
            del cache[key]
        self.full = len(cache) >= self._maxsize

    cdef bint _expired(self, key) except -1:
        cdef PyObject* p = PyDict_GetItemWithError(self._stamps, key)
        if p is NULL:
            return False
        stamp = <object>p
        if <double>self._timer() - <double>stamp < self._ttl_c:
            return False
        del self._stamps[key]
        del self.cache[key]
        self.full = len(self.cache) >= self._maxsize
        return True

    # -- mapping protocol --------------------------------------------------

    def __setitem__(self, key, value):
        cdef object cache = self.cache
        if self._has_ttl:
            self._purge()
            stamps = self._stamps
            stamps[key] = self._timer()
            stamps.move_to_end(key)
        old = self._get(key, _MARKER)
        if old is not _MARKER:
            if old is not value and old != value:
                cache[key] = value
            self._move_to_end(key)
            return
        cdef Py_ssize_t maxsize = self._maxsize
        while len(cache) >= maxsize:
            evicted, _ = self._popitem(last=False)
            if self._has_ttl:
                self._stamps.pop(evicted, None)
        cache[key] = value
        self.full = len(cache) >= maxsize

    cdef object _lookup(self, key):
        """The value of ``key`` (marked most recent), or ``_MARKER``; counts the hit or miss."""
        cdef PyObject* p = PyDict_GetItemWithError(self.cache, key)
        cdef object value = _MARKER
        if p is not NULL:
            value = <object>p  # a strong reference before any Python code runs
            if self._has_ttl and self._expired(key):
                value = _MARKER
        if value is not _MARKER:
            self._move_to_end(key)
            self.hits += 1
            if self.debug and self._tracking():
                self._track(key, True)
            return value
        self.misses += 1
        if self.debug and self._tracking():
            self._track(key, False)
        return _MARKER

    def __getitem__(self, key):
        value = self._lookup(key)
        if value is _MARKER:
            raise KeyError()
        return value

    def get(self, key, default=None):
        """``c[key]`` (counted as a hit or miss), or ``default`` on a miss."""
        value = self._lookup(key)
        if value is _MARKER:
            return default
        return value

    def __contains__(self, key):
        if key not in self.cache:
            return False
        return not self._has_ttl or not self._expired(key)

    def __len__(self):
        if self._has_ttl:
            self._purge()
        return len(self.cache)

    def pop(self, key, default=None):
        """Remove ``key`` and return its value, or ``default`` if absent or expired."""
        value = self._pop(key, _MARKER)
        if value is _MARKER:
            return default
        self.full = len(self.cache) >= self._maxsize
        if self._has_ttl:
            stamp = self._stamps.pop(key, None)
            if stamp is not None and <double>self._timer() - <double>stamp >= self._ttl_c:
                return default
        return value

    def clear(self):
        """Remove every entry (counters and tracking are kept)."""
        self.cache.clear()
        self._stamps.clear()
        self.full = False

    def __repr__(self):
        return (
            f"hits: {self.hits}, misses: {self.misses}, "
            f"maxsize: {self._maxsize}, cache size: {len(self)}"
        )
