"""Command line of gaterpc: ``gaterpc bench ...`` / ``python -m gaterpc bench ...``."""

from __future__ import annotations

import sys

USAGE = """usage: gaterpc COMMAND [options]

commands:
  bench    echo benchmark: N calls of echo('hello world', i) through a broker
           (default: 100,000 calls, 1,000 in flight, client | broker | worker over ipc);
           'gaterpc bench --help' lists the options
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "bench":
        from gaterpc.bench.echo import main as bench_main
        return bench_main(rest, prog="gaterpc bench")
    sys.stderr.write(f"gaterpc: unknown command {command!r}\n\n{USAGE}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
