"""``RequestTable``: pending requests with deadlines (pure-Python twin of ``_reqtable_c``).

Design (shared with the compiled twin):

* ``_map``: ``dict`` key -> entry, an entry being ``[deadline, seq, key,
  value]`` (a cdef class in the compiled twin).  ``add``/``pop``/``get``/
  ``__contains__`` are one dict operation each: O(1).
* Deadline index, two parts, each entry referenced from exactly one:

  - ``_fifo``: a list consumed from index ``_head``, deadlines
    non-decreasing.  An entry goes here when its deadline is not earlier
    than the last one appended -- always the case when a table uses one
    timeout and a monotonic clock.
  - ``_heap``: a ``heapq`` of ``(deadline, seq, entry)`` for the entries
    that would break the order (other timeouts, ``touch`` to an earlier
    time).

* Lazy deletion: ``pop`` and ``touch`` leave the old reference in the
  index (its value cleared, so that a stale reference never keeps a large
  result alive); it is stale when ``_map.get(entry key) is not entry`` and is
  skipped by ``expire``.  Whenever stale references outnumber live entries
  by more than ``_SLACK`` the index is rebuilt (O(n), so amortised O(1)
  per operation); the consumed prefix of ``_fifo`` is cut the same way.
* ``expire(now)`` merges the fifo front and the heap top, so the result is
  in ``(deadline, seq)`` order: deadline order, ties in insertion order.
  With in-order deadlines it is amortised O(1) per expired entry;
  out-of-order entries cost O(log n).
"""

from __future__ import annotations

import heapq
from math import isnan
from typing import Any, Hashable, Iterator, List, Tuple

from gaterpc.protocol import REQTABLE_SLACK as _SLACK

__all__ = ("RequestTable",)


def _to_double(x: Any) -> float:
    """``x`` converted as the compiled twin's ``double`` arguments are (same result, same ``TypeError``)."""
    if type(x) is float:
        return x
    t = type(x)
    if hasattr(t, "__float__") or hasattr(t, "__index__"):
        return float(x)
    raise TypeError(f"must be real number, not {t.__name__}")

_DEADLINE, _SEQ, _KEY, _VALUE = 0, 1, 2, 3


class RequestTable:
    """Pending requests: key (bytes request id) -> value, each with a deadline (loop time, float)."""

    __slots__ = ("_map", "_fifo", "_head", "_heap", "_seq")

    # An entry is ``[deadline, seq, key, value]`` (a list, for speed).
    _map: dict[Any, list[Any]]
    _fifo: list[list[Any]]
    _head: int
    _heap: list[tuple[float, int, list[Any]]]
    _seq: int

    def __init__(self) -> None:
        self._map = {}
        self._fifo = []
        self._head = 0
        self._heap = []
        self._seq = 0

    def _push(self, key: Hashable, value: Any, deadline: float) -> None:
        if isnan(deadline):
            raise ValueError("deadline must not be NaN")
        seq = self._seq
        self._seq = seq + 1
        entry = [deadline, seq, key, value]
        self._map[key] = entry
        fifo = self._fifo
        if len(fifo) > self._head and deadline < fifo[-1][_DEADLINE]:
            heapq.heappush(self._heap, (deadline, seq, entry))
        else:
            fifo.append(entry)
            if len(fifo) - self._head + len(self._heap) > 2 * len(self._map) + _SLACK:
                self._compact()

    def _compact(self) -> None:
        """Drop stale index references and the consumed fifo prefix."""
        get = self._map.get
        self._fifo = [e for e in self._fifo[self._head:] if get(e[_KEY]) is e]
        self._head = 0
        heap = [t for t in self._heap if get(t[2][_KEY]) is t[2]]
        heapq.heapify(heap)
        self._heap = heap

    def add(self, key: Hashable, value: Any, deadline: float) -> None:
        """Store ``value`` under ``key`` until ``deadline``; replaces an existing key."""
        self._push(key, value, deadline if type(deadline) is float else _to_double(deadline))

    def pop(self, key: Hashable, default: Any = None) -> Any:
        """Remove ``key`` and return its value, or ``default`` if absent."""
        entry = self._map.pop(key, None)
        if entry is None:
            hash(key)  # an unhashable key raises even on an empty table, as in the compiled twin
            return default
        value = entry[_VALUE]
        # The index may still refer to the entry (lazy deletion): it must not
        # keep the value (a future holding a large result) alive.
        entry[_VALUE] = None
        return value

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` if absent."""
        entry = self._map.get(key)
        if entry is None:
            return default
        return entry[_VALUE]

    def touch(self, key: Hashable, deadline: float) -> bool:
        """Move the deadline of ``key``; ``False`` if absent."""
        if type(deadline) is not float:
            deadline = _to_double(deadline)
        entry = self._map.get(key)
        if entry is None:
            return False
        self._push(key, entry[_VALUE], deadline)
        entry[_VALUE] = None  # now a stale reference of the index: keep nothing alive
        return True

    def expire(self, now: float) -> List[Tuple[Any, Any]]:
        """Remove and return ``[(key, value), ...]`` of every entry with deadline <= now."""
        if type(now) is not float:
            now = _to_double(now)
        out: List[Tuple[Any, Any]] = []
        m = self._map
        fifo = self._fifo
        heap = self._heap
        head = self._head
        nfifo = len(fifo)
        while True:
            f = fifo[head] if head < nfifo else None
            if f is not None and f[_DEADLINE] > now:
                f = None
            h = heap[0][2] if heap else None
            if h is not None and h[_DEADLINE] > now:
                h = None
            if f is None and h is None:
                break
            if h is None or (
                f is not None
                and (f[_DEADLINE] < h[_DEADLINE] or (f[_DEADLINE] == h[_DEADLINE] and f[_SEQ] < h[_SEQ]))
            ):
                entry = f
                head += 1
            else:
                entry = h
                heapq.heappop(heap)
            key = entry[_KEY]  # type: ignore[index]
            if m.get(key) is entry:
                del m[key]
                out.append((key, entry[_VALUE]))  # type: ignore[index]
        if head >= nfifo:
            fifo.clear()
            head = 0
        elif head > _SLACK and 2 * head > nfifo:
            del fifo[:head]
            head = 0
        self._head = head
        return out

    def clear(self) -> List[Any]:
        """Remove and return all values (insertion order)."""
        values = [e[_VALUE] for e in self._map.values()]
        self._map.clear()
        self._fifo.clear()
        self._head = 0
        self._heap.clear()
        return values

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __iter__(self) -> Iterator[Any]:
        return iter(self._map)

    def __repr__(self) -> str:
        return f"<RequestTable {len(self._map)} pending>"
