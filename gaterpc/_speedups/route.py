"""Selector for the broker routing fast path: see :func:`gaterpc._speedups.load_twin` for the contract.

Public modules import from here, never from ``_route_c``/``_route_py`` directly.
``USE_C`` tells which twin is active.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gaterpc._speedups import load_twin

if TYPE_CHECKING:
    from gaterpc._speedups._route_py import *  # noqa: F403
    from gaterpc._speedups._route_py import __all__

    USE_C: bool
else:
    _twin, USE_C = load_twin("route")
    __all__ = tuple(_twin.__all__)
    globals().update({_n: getattr(_twin, _n) for _n in __all__})
    del _twin
