"""Selector for HugeData chunk assembly: compiled twin unless disabled or missing."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gaterpc._speedups import NO_EXTENSIONS

USE_C = False
if TYPE_CHECKING or NO_EXTENSIONS:
    from gaterpc._speedups._chunks_py import *  # noqa: F403
    from gaterpc._speedups._chunks_py import __all__
else:
    try:
        from gaterpc._speedups._chunks_c import *  # noqa: F403
        from gaterpc._speedups._chunks_c import __all__
        USE_C = True
    except ImportError as exc:  # pragma: no cover - depends on the build
        logging.getLogger("gaterpc").debug("compiled chunks unavailable, using the pure twin: %s", exc)
        from gaterpc._speedups._chunks_py import *  # noqa: F403
        from gaterpc._speedups._chunks_py import __all__
