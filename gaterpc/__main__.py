"""``python -m gaterpc``: the ``gaterpc`` command line (see :mod:`gaterpc.cli`)."""

from __future__ import annotations

import sys

from gaterpc.cli import main

__all__ = ("main",)


if __name__ == "__main__":
    sys.exit(main())
