"""Compiled hot paths, each with a pure-Python twin.

Every hot path ``NAME`` is a trio: ``_NAME_c.pyx`` (compiled), ``_NAME_py.py``
(the pure twin, same names and behaviour) and the selector ``NAME.py`` that
the rest of the package imports.  Every selector calls :func:`load_twin`,
whose contract is:

* ``GATERPC_NO_EXTENSIONS`` set (any value but ``""``/``"0"``), or an
  interpreter other than CPython: the pure twin, silently.
* Otherwise the compiled twin.  If it cannot be imported, the pure twin, and
  one WARNING on the ``gaterpc`` logger naming the module and the reason --
  unless ``GATERPC_REQUIRE_EXTENSIONS`` is set, in which case the
  ``ImportError`` propagates (CI sets it, so a missing build fails loudly).

Both variables are read once, at import.  Each selector exposes ``USE_C``.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
from types import ModuleType

__all__ = ("NO_EXTENSIONS", "REQUIRE_EXTENSIONS", "load_twin")


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


NO_EXTENSIONS: bool = _flag("GATERPC_NO_EXTENSIONS") or platform.python_implementation() != "CPython"
REQUIRE_EXTENSIONS: bool = _flag("GATERPC_REQUIRE_EXTENSIONS") and not NO_EXTENSIONS


def load_twin(name: str) -> tuple[ModuleType, bool]:
    """``(module, use_c)`` for hot path ``name`` (``"lru"``, ``"zmqio"``, ...), per the contract above."""
    pure = f"{__name__}._{name}_py"
    if NO_EXTENSIONS:
        return importlib.import_module(pure), False
    compiled = f"{__name__}._{name}_c"
    try:
        return importlib.import_module(compiled), True
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name not in (None, compiled):
            raise  # a run-time dependency (pyzmq, msgpack...) is missing: the pure twin needs it too
        if REQUIRE_EXTENSIONS:
            raise ImportError(
                f"gaterpc: the compiled module gaterpc._speedups._{name}_c is required "
                f"(GATERPC_REQUIRE_EXTENSIONS is set) but cannot be imported: {exc}. "
                "Build it with 'pip install -e .' (needs Cython and a C compiler)."
            ) from exc
        logging.getLogger("gaterpc").warning(
            "compiled module gaterpc._speedups._%s_c unavailable (%s); using the pure-Python twin "
            "(slower). Build it with 'pip install -e .', or set GATERPC_NO_EXTENSIONS=1 to choose "
            "pure Python on purpose.", name, exc,
        )
        return importlib.import_module(pure), False
