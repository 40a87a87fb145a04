"""The echo benchmark: ``python bench/echo.py [options]`` = ``gaterpc bench [options]``.

A thin wrapper around ``gaterpc.bench.echo`` for a source checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gaterpc.bench.echo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="python bench/echo.py"))
