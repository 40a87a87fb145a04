"""Process-wide counters of dropped messages and requests, by reason.

Every place that drops something (a message it cannot route, a request it
cannot serve, a backlog over its budget) calls :func:`count_drop` with a short
reason name; nothing is dropped silently.  The figures are read by
:func:`drops_snapshot` (tests, operators' own monitoring).  Counting is a
dict update: cheap enough for the rare paths where drops happen, and never
called per message on the normal path.
"""

from __future__ import annotations

__all__ = ("count_drop", "drops_snapshot", "reset_drops", "count_event", "events_snapshot")

_drops: dict[str, int] = {}


def count_drop(reason: str, n: int = 1) -> None:
    """Add ``n`` to the drop counter ``reason``."""
    _drops[reason] = _drops.get(reason, 0) + n


def drops_snapshot() -> dict[str, int]:
    """A copy of every drop counter (reason -> count)."""
    return dict(_drops)


def reset_drops() -> None:
    """Zero every drop counter (tests)."""
    _drops.clear()


_events: dict[str, int] = {}


def count_event(name: str, n: int = 1) -> None:
    """Add ``n`` to the event counter ``name`` (reconnections, HugeData transfers, ...)."""
    _events[name] = _events.get(name, 0) + n


def events_snapshot() -> dict[str, int]:
    """A copy of every event counter (name -> count)."""
    return dict(_events)
