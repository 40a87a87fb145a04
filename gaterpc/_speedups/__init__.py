"""Compiled hot paths, each with a pure-Python twin.

``GATERPC_NO_EXTENSIONS`` (any non-empty value other than ``0``) is read once,
at import, and forces the pure-Python twins; so does any interpreter other
than CPython.  Each selector module (``lru``, ``reqtable``, ``frames``,
``zmqio``, ``chunks``) exposes ``USE_C`` telling which twin it loaded.
"""

from __future__ import annotations

import os
import platform

__all__ = ("NO_EXTENSIONS",)

NO_EXTENSIONS: bool = (
    os.environ.get("GATERPC_NO_EXTENSIONS", "") not in ("", "0")
    or platform.python_implementation() != "CPython"
)
