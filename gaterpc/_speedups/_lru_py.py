"""``KVLRUCache``: a small LRU mapping (pure-Python twin of ``_lru_c``).

Design (shared with the compiled twin, modelled on uvloop's ``lru.pyx``):

* ``cache`` is an ``OrderedDict`` in recency order (least recent first); a
  hit or a set moves the key to the end, eviction pops from the front.
* ``full`` is ``len(cache) >= maxsize``, recomputed after every insert and
  removal (``pop`` resets it, fixing defect U5 of the original).
* Re-setting an existing key refreshes its recency; an equal value keeps the
  stored object, a different one replaces it.
* ``hits``/``misses`` count every lookup; with ``debug`` and
  ``max_tracking_entries > 0`` ``tracking_entries`` also counts them per key
  (``key -> (hits, misses)``, the least recently counted keys dropped beyond
  ``max_tracking_entries``).
* With ``ttl`` (seconds, ``time.monotonic``) an entry older than ``ttl``
  since it was last *set* is a miss and is dropped; a hit does not extend
  its life.  Set times live in a second ``OrderedDict`` ordered by set time,
  so dropping everything expired is amortised O(1).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Tuple

__all__ = ("KVLRUCache",)

_MARKER: Any = object()


class KVLRUCache:
    """LRU mapping of at most ``maxsize`` entries, optionally expiring after ``ttl`` seconds.

    ``c[key] = value`` inserts (evicting the least recently used entry when
    full) or refreshes; ``c[key]`` returns the value or raises ``KeyError()``;
    ``key in c``, ``len(c)``, ``c.pop(key)`` (value or ``None``).  ``timer``
    replaces ``time.monotonic`` (for tests).
    """

    __slots__ = (
        "_maxsize", "max_tracking_entries", "debug", "_cache", "_tracking_entries",
        "full", "hits", "misses", "_ttl", "_ttl_c", "_stamps", "_timer",
    )

    _maxsize: int
    max_tracking_entries: int
    debug: bool
    _cache: OrderedDict[Any, Any]
    _tracking_entries: OrderedDict[Any, Tuple[int, int]]
    full: bool
    hits: int
    misses: int
    _ttl: Optional[float]
    _ttl_c: float  # ``_ttl`` as a float (0.0 without a ttl), for the arithmetic
    _stamps: OrderedDict[Any, float]
    _timer: Callable[[], float]

    def __init__(
        self,
        maxsize: int = 128,
        max_tracking_entries: int = 1000,
        debug: bool = False,
        *,
        ttl: Optional[float] = None,
        timer: Optional[Callable[[], float]] = None,
    ) -> None:
        self._maxsize = 0
        self.maxsize = maxsize
        self.max_tracking_entries = max_tracking_entries
        self.debug = debug
        self._cache = OrderedDict()
        self._tracking_entries = OrderedDict()
        self.full = False
        self.hits = 0
        self.misses = 0
        if ttl is not None:
            ttl = float(ttl)
            if not ttl > 0:
                raise ValueError("ttl must be a positive number of seconds or None")
        self._ttl = ttl
        self._ttl_c = 0.0 if ttl is None else ttl
        self._stamps = OrderedDict()
        self._timer = time.monotonic if timer is None else timer

    @property
    def maxsize(self) -> int:
        """Largest number of entries kept (a positive int)."""
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        if value <= 0:
            raise ValueError("maxsize must be a positive integer")
        self._maxsize = int(value)

    @property
    def cache(self) -> OrderedDict[Any, Any]:
        """The entries, ``key -> value``, least recently used first (read-only attribute)."""
        return self._cache

    @property
    def tracking_entries(self) -> OrderedDict[Any, Tuple[int, int]]:
        """Per-key ``(hits, misses)`` counted when ``debug`` (read-only attribute)."""
        return self._tracking_entries

    @property
    def ttl(self) -> Optional[float]:
        """Seconds an entry stays valid after it was set, or ``None`` (never expires)."""
        return self._ttl

    # -- internals ---------------------------------------------------------

    def _track(self, key: Hashable, hit: bool) -> None:
        entries = self._tracking_entries
        h, m = entries.pop(key, (0, 0))
        entries[key] = (h + 1, m) if hit else (h, m + 1)
        while len(entries) > self.max_tracking_entries:
            entries.popitem(last=False)

    def _purge(self) -> None:
        """Drop every expired entry (oldest set first)."""
        stamps = self._stamps
        if not stamps:
            return
        limit = self._timer() - self._ttl_c
        cache = self._cache
        while stamps:
            key = next(iter(stamps))
            if stamps[key] > limit:
                break
            del stamps[key]
            del cache[key]
        self.full = len(cache) >= self._maxsize

    def _expired(self, key: object) -> bool:
        """True (and the entry dropped) if ``key`` is present but expired."""
        stamp = self._stamps.get(key)
        if stamp is None or self._timer() - stamp < self._ttl_c:
            return False
        del self._stamps[key]
        del self._cache[key]
        self.full = len(self._cache) >= self._maxsize
        return True

    # -- mapping protocol --------------------------------------------------

    def __setitem__(self, key: Hashable, value: Any) -> None:
        cache = self._cache
        if self._ttl is not None:
            self._purge()
            stamps = self._stamps
            stamps[key] = self._timer()
            stamps.move_to_end(key)
        old = cache.get(key, _MARKER)
        if old is not _MARKER:
            if old is not value and old != value:
                cache[key] = value
            cache.move_to_end(key)
            return
        maxsize = self._maxsize
        while len(cache) >= maxsize:
            evicted, _ = cache.popitem(last=False)
            self._stamps.pop(evicted, None)
        cache[key] = value
        self.full = len(cache) >= maxsize

    def _lookup(self, key: Hashable) -> Any:
        """The value of ``key`` (marked most recent), or ``_MARKER``; counts the hit or miss."""
        value = self._cache.get(key, _MARKER)
        if value is not _MARKER and (self._ttl is None or not self._expired(key)):
            self._cache.move_to_end(key)
            self.hits += 1
            if self.debug and self.max_tracking_entries > 0:
                self._track(key, True)
            return value
        self.misses += 1
        if self.debug and self.max_tracking_entries > 0:
            self._track(key, False)
        return _MARKER

    def __getitem__(self, key: Hashable) -> Any:
        value = self._lookup(key)
        if value is _MARKER:
            raise KeyError()
        return value

    def get(self, key: Hashable, default: Any = None) -> Any:
        """``c[key]`` (counted as a hit or miss), or ``default`` on a miss."""
        value = self._lookup(key)
        if value is _MARKER:
            return default
        return value

    def __contains__(self, key: object) -> bool:
        if key not in self._cache:
            return False
        return self._ttl is None or not self._expired(key)

    def __len__(self) -> int:
        if self._ttl is not None:
            self._purge()
        return len(self._cache)

    def pop(self, key: Hashable, default: Any = None) -> Any:
        """Remove ``key`` and return its value, or ``default`` if absent or expired."""
        value = self._cache.pop(key, _MARKER)
        if value is _MARKER:
            return default
        self.full = len(self._cache) >= self._maxsize
        stamp = self._stamps.pop(key, None)
        if stamp is not None and self._timer() - stamp >= self._ttl_c:
            return default
        return value

    def clear(self) -> None:
        """Remove every entry (counters and tracking are kept)."""
        self._cache.clear()
        self._stamps.clear()
        self.full = False

    def __repr__(self) -> str:
        return (
            f"hits: {self.hits}, misses: {self.misses}, "
            f"maxsize: {self._maxsize}, cache size: {len(self)}"
        )
