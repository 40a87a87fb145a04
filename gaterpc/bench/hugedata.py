"""HugeData throughput and memory: client | broker | worker over ipc.

For each payload size (default 1, 16 and 128 MiB; half random, half
compressible) and each codec, one transfer runs in fresh processes, so that
each process's peak RSS belongs to that transfer alone (and so that the
original, which hangs on a second HugeData transfer in a process, can be
measured too).  Reports MB/s (payload MiB per second of the call) and peak
RSS per process.

    gaterpc bench hugedata                        # ours: gzip and lz4
    gaterpc bench hugedata --vs-original          # plus the original 0.2.11 (gzip)
    gaterpc bench hugedata --sizes 1,16 --json out.json

(``python -m gaterpc.bench.hugedata`` takes the same options.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

HERE = Path(__file__).resolve().parent
# The directory holding the ``gaterpc`` package: the roles' PYTHONPATH for our runs.
PACKAGE_ROOT = HERE.parent.parent
ROLES = HERE / "hugeroles.py"
MiB = 1024 * 1024


def run_once(python: str, env: dict[str, str], impl: str, module: str, size: int, blksize: int,
             timeout: float) -> dict[str, Any]:
    """One transfer of ``size`` bytes in fresh broker, worker and client processes; the result row."""
    tmp = Path(tempfile.mkdtemp(prefix="gaterpc-huge-"))
    cfg = {"base_path": str(tmp), "front": f"ipc://{tmp}/front", "back": f"ipc://{tmp}/back",
           "size": size, "module": module, "seed": 7, "blksize": blksize, "timeout": timeout}
    procs: dict[str, subprocess.Popen[str]] = {}
    result: dict[str, Any] = {"impl": impl, "module": module, "size_mib": size / MiB, "ok": False}
    try:
        for role in ("broker", "worker"):
            p = subprocess.Popen([str(python), str(ROLES), role, json.dumps(cfg)], stdout=subprocess.PIPE,
                                 text=True, env=env, cwd=str(tmp), start_new_session=True)
            procs[role] = p
            assert p.stdout is not None
            line = p.stdout.readline()
            if '"ready"' not in line:
                raise RuntimeError(f"{role} did not start")
        client = subprocess.Popen([str(python), str(ROLES), "client", json.dumps(cfg)], stdout=subprocess.PIPE,
                                  text=True, env=env, cwd=str(tmp), start_new_session=True)
        procs["client"] = client
        try:
            out, _ = client.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            result["error"] = "timeout"
            return result
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        call = next((x for x in lines if "elapsed" in x), None)
        if call is None:
            result["error"] = "no result"
            return result
        result.update(ok=call["ok"], elapsed=call["elapsed"], mb_s=size / MiB / call["elapsed"],
                      rss_client=lines[-1]["rss_mib"])
        for role in ("broker", "worker"):
            p = procs[role]
            p.terminate()
            try:
                tail, _ = p.communicate(timeout=10)
                rss = [json.loads(x)["rss_mib"] for x in tail.splitlines() if x.startswith("{")]
                result[f"rss_{role}"] = rss[-1] if rss else None
            except subprocess.TimeoutExpired:
                result[f"rss_{role}"] = None
        return result
    finally:
        for p in procs.values():
            # Each role runs in its own session: kill the group, pool children included.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the transfers and print the table; exit status 0 when every run of ours succeeded."""
    ap = argparse.ArgumentParser(prog="gaterpc bench hugedata", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,16,128", help="payload sizes in MiB (comma separated)")
    ap.add_argument("--modules", default="gzip,lz4", help="our codecs (comma separated)")
    ap.add_argument("--blksize", type=int, default=1000, help="chunk size (the original's default: 1000)")
    ap.add_argument("--vs-original", action="store_true", help="also run the original 0.2.11 (gzip)")
    ap.add_argument("--original-sizes", default="1,16", help="sizes in MiB for the original (it is slow)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per transfer")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)
    sizes = [int(float(s) * MiB) for s in args.sizes.split(",")]
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT))
    runs: list[tuple[str, dict[str, str], str, str]] = [(sys.executable, env, "ours", m)
                                                        for m in args.modules.split(",")]
    if args.vs_original:
        from gaterpc.bench.origenv import ensure_original_env

        orig_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        runs.append((str(ensure_original_env()), orig_env, "original", "gzip"))
    results: list[dict[str, Any]] = []
    print(f"{'impl':9} {'codec':5} {'MiB':>5} {'MB/s':>8} {'s':>7} {'RSS broker':>10} {'worker':>7} "
          f"{'client':>7} {'max RSS/size':>12}  status")
    orig_sizes = [int(float(s) * MiB) for s in args.original_sizes.split(",")]
    for python, env_, impl, module in runs:
        for size in (orig_sizes if impl == "original" else sizes):
            r = run_once(python, env_, impl, module, size, args.blksize, args.timeout)
            results.append(r)
            rss = [r.get(k) for k in ("rss_broker", "rss_worker", "rss_client")]
            ratio = max(x for x in rss if x) / (size / MiB) if any(rss) else None
            r["max_rss_ratio"] = ratio
            print(f"{impl:9} {module:5} {size / MiB:5.0f} {fmt(r.get('mb_s'), '{:8.1f}'):>8} "
                  f"{fmt(r.get('elapsed'), '{:7.2f}'):>7} {fmt(rss[0], '{:10.0f}'):>10} "
                  f"{fmt(rss[1], '{:7.0f}'):>7} {fmt(rss[2], '{:7.0f}'):>7} {fmt(ratio, '{:12.2f}'):>12}  "
                  f"{'ok' if r['ok'] else 'FAILED ' + r.get('error', 'bad payload')}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results if r["impl"] == "ours") else 1


def fmt(value: Optional[float], spec: str) -> str:
    """``spec.format(value)``, or ``-`` for a missing value."""
    return spec.format(value) if value is not None else "-"


if __name__ == "__main__":
    sys.exit(main())
