"""HugeData throughput and memory: client | broker | worker over ipc.

For each payload size (default 1, 16 and 128 MiB; half random, half
compressible) and each codec, one transfer runs in fresh processes, so that
each process's peak RSS belongs to that transfer alone (and so that the
original, which hangs on a second HugeData transfer in a process, can be
measured too).  ``--per-process K`` makes K transfers one after the
other in each set of our processes instead (three 16 MiB transfers in one
set of processes is the shape of the HugeData performance goal): the later
ones run in processes that have made one already, as in a long-running
service, and the peak RSS then shows whether a transfer gives its memory
back.  Reports per row: MB/s (payload MiB per second of the call),
the CPU milliseconds each process spent on the transfer (every thread; a
figure much less sensitive to a loaded machine than MB/s), each process's
peak RSS, the largest peak RSS over the payload size ("max RSS/size", the
~40 MiB interpreter included), the largest growth of a process's RSS
during the transfer over the payload size ("growth/size") and each
process's minor page faults during the transfer, in thousands ("faults k
b/w/c": broker, worker, client; each is a first touch of a fresh 4 KiB page,
a cost the kernel pays in system time).

    gaterpc bench hugedata                        # ours: gzip and lz4
    gaterpc bench hugedata --vs-original          # plus the original 0.2.11 (gzip)
    gaterpc bench hugedata --sizes 1,16 --json out.json
    gaterpc bench hugedata --sizes 16 --blksize default,1000,1048576 --repeat 3   # the 16 MiB goal scenario
    gaterpc bench hugedata --sizes 16 --modules lz4 --per-process 3 --repeat 3  # 16 MiB x3 per set of processes
    gaterpc bench hugedata --sizes 16 --modules lz4 --window 0,default     # flow control off, then on
    gaterpc bench hugedata --sizes 128 --modules lz4 --window 0,default --client-stall 1  # a busy client

``--blksize default`` (the default) passes no ``blksize``: each
implementation's own default.  The original's is 1000-byte chunks; ours is
1000 too, except towards a client of ours, which gets chunks of
``Settings.HUGE_DATA_NATIVE_SIZEOF`` (64 KiB).  ``--window`` sets
``Settings.HUGE_DATA_WINDOW`` (HugeData flow control) in every role of ours.

(``python -m gaterpc.bench.hugedata`` takes the same options.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import selectors
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from gaterpc.global_settings import MIN_HUGE_WINDOW

HERE = Path(__file__).resolve().parent
# The directory holding the ``gaterpc`` package: the roles' PYTHONPATH for our runs.
PACKAGE_ROOT = HERE.parent.parent
ROLES = HERE / "hugeroles.py"
ROLE_NAMES = ("broker", "worker", "client")
#: What ``--json`` keeps of every transfer (besides the median row).
TRANSFER_FIELDS = ("transfer", "ok", "mb_s", "cpu_broker", "cpu_worker", "cpu_client", "faults_broker",
                   "faults_worker", "faults_client", "rss_client_before", "peak_client_so_far")
MiB = 1024 * 1024


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """The next stdout line of ``proc`` ("" at its end or when ``deadline`` passes)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            return ""
    return proc.stdout.readline()


def _json_line(proc: subprocess.Popen[str], deadline: float) -> Optional[dict[str, Any]]:
    """The next JSON line of ``proc``, skipping others; ``None`` at its end or on time-out."""
    while True:
        line = _read_line(proc, deadline)
        if not line:
            return None
        if line.startswith("{"):
            row: dict[str, Any] = json.loads(line)
            return row


def run_once(python: str, env: dict[str, str], impl: str, module: str, size: int, blksize: int,
             timeout: float, transfers: int = 1, window: Optional[int] = None,
             stall: float = 0.0) -> list[dict[str, Any]]:
    """``transfers`` transfers of ``size`` bytes, one after the other, in fresh broker,
    worker and client processes; one result row per transfer (fewer when one fails:
    the failed one is the last).

    Per role: ``rss_<role>`` peak RSS (MiB) over the whole run, ``base_<role>``
    RSS when the first transfer started (so growth over several transfers
    shows memory a transfer did not give back), ``cpu_<role>`` CPU seconds
    spent on that transfer (every thread; the client's: of the call alone;
    the broker's and the worker's: from a mark just before the call to a
    mark just after it, so that neither their start nor their shutdown
    counts), ``faults_<role>`` the minor page faults over the same span (each
    first touch of a fresh page of memory).  ``transfer`` is the row's index
    in the run (0: the first, in processes that have done nothing yet);
    ``rss_client_before`` is the client's RSS just before it (after the
    last one's result was dropped), ``peak_client_so_far`` its peak RSS
    once it ended.  ``window`` (ours only): ``Settings.HUGE_DATA_WINDOW`` in
    every role, ``None`` for its default.  ``stall`` (ours only): the client's
    event loop is blocked for that many seconds when the first chunk of each
    transfer arrives.
    """
    tmp = Path(tempfile.mkdtemp(prefix="gaterpc-huge-"))
    cfg = {"base_path": str(tmp), "front": f"ipc://{tmp}/front", "back": f"ipc://{tmp}/back",
           "size": size, "module": module, "seed": 7, "blksize": blksize, "timeout": timeout,
           "transfers": transfers}
    if window is not None:
        cfg["window"] = window
    if stall and impl == "ours":
        cfg["stall"] = stall
    procs: dict[str, subprocess.Popen[str]] = {}
    rows: list[dict[str, Any]] = []

    def new_row(index: int) -> dict[str, Any]:
        row = {"impl": impl, "module": module, "size_mib": size / MiB, "blksize": blksize or "default",
               "window": "default" if window is None else window,
               "ok": False, "transfer": index, "per_process": transfers}
        rows.append(row)
        return row

    deadline = time.monotonic() + timeout + 60
    try:
        for role in ("broker", "worker"):
            p = subprocess.Popen([str(python), str(ROLES), role, json.dumps(cfg)], stdout=subprocess.PIPE,
                                 text=True, env=env, cwd=str(tmp), start_new_session=True)
            procs[role] = p
            line = _json_line(p, deadline)
            if not line or not line.get("ready"):
                raise RuntimeError(f"{role} did not start")
        client = subprocess.Popen([str(python), str(ROLES), "client", json.dumps(cfg)], stdout=subprocess.PIPE,
                                  stdin=subprocess.PIPE, text=True, env=env, cwd=str(tmp), start_new_session=True)
        procs["client"] = client
        assert client.stdin is not None
        first: dict[str, dict[str, Any]] = {}
        for index in range(transfers):
            result = new_row(index)
            deadline = time.monotonic() + timeout + 60
            if index:
                # the last transfer's end is marked: the client may prepare the next one
                client.stdin.write("next\n")
                client.stdin.flush()
            mark = _json_line(client, deadline)
            if mark is None:
                result["error"] = "the client did not start" if index == 0 else "no mark from the client"
                break
            base: dict[str, dict[str, Any]] = {"client": mark}
            result["rss_client_before"] = mark.get("rss_now_mib")
            for role in ("broker", "worker"):
                procs[role].send_signal(signal.SIGUSR1)
                row = _json_line(procs[role], deadline)
                if row is None:
                    result["error"] = f"no baseline from the {role}"
                    break
                base[role] = row
            if len(base) < 3:
                break
            first = first or base
            client.stdin.write("go\n")
            client.stdin.flush()
            call = _json_line(client, time.monotonic() + timeout + 30)
            if call is None or "elapsed" not in call:
                result["error"] = "timeout" if client.poll() is None else "no result"
                break
            for role in ("broker", "worker"):
                procs[role].send_signal(signal.SIGUSR1)  # the transfer is over: its CPU time ends here
                row = _json_line(procs[role], deadline)
                end = row or {}
                result[f"cpu_{role}"] = end["cpu_s"] - base[role]["cpu_s"] if "cpu_s" in end else None
                result[f"faults_{role}"] = (end["minflt"] - base[role]["minflt"]
                                            if "minflt" in end and "minflt" in base[role] else None)
            result.update(ok=call["ok"], elapsed=call["elapsed"], mb_s=size / MiB / call["elapsed"],
                          rss_client=call["rss_mib"], peak_client_so_far=call["rss_mib"],
                          cpu_client=call.get("call_cpu_s"), faults_client=call.get("call_minflt"))
            if not call["ok"]:
                break
        if first:
            # the client's figures on exit, once it made every call (else its latest report)
            done = len(rows) == transfers and all(r["ok"] for r in rows)
            last = _json_line(client, deadline) if done else None
            latest = max((r.get("rss_client") or 0.0 for r in rows), default=None)
            peaks: dict[str, Any] = {"client": last["rss_mib"] if last else latest}
            for role in ("broker", "worker"):
                p = procs[role]
                p.terminate()
                try:
                    tail, _ = p.communicate(timeout=10)
                    lines = [json.loads(x) for x in tail.splitlines() if x.startswith("{")]
                except subprocess.TimeoutExpired:
                    lines = []
                peaks[role] = lines[-1]["rss_mib"] if lines else None
            for result in rows:
                for role in ROLE_NAMES:
                    result[f"rss_{role}"] = peaks[role]
                    result[f"base_{role}"] = first[role].get("rss_now_mib")
        return rows
    finally:
        for p in procs.values():
            # Each role runs in its own session: kill the group, pool children included.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)
            for pipe in (p.stdout, p.stdin):
                if pipe is not None:
                    pipe.close()


def growth_ratio(r: dict[str, Any], size: int) -> Optional[float]:
    """The largest growth of a process's RSS during the transfer (peak - baseline) over the payload size."""
    growth = [r[f"rss_{role}"] - r[f"base_{role}"] for role in ROLE_NAMES
              if r.get(f"rss_{role}") is not None and r.get(f"base_{role}") is not None]
    return max(growth) / (size / MiB) if growth else None


def _positive(text: str) -> Optional[int]:
    try:
        n = int(text)
    except ValueError:
        return None
    return n if n > 0 else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the transfers and print the table; exit status 0 when every run of ours succeeded."""
    ap = argparse.ArgumentParser(prog="gaterpc bench hugedata", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,16,128", help="payload sizes in MiB (comma separated)")
    ap.add_argument("--modules", default="gzip,lz4", help="our codecs (comma separated)")
    ap.add_argument("--blksize", default="default",
                    help="chunk sizes the worker's HugeData uses, comma separated; 'default' passes none "
                         "(the implementation's default: the original's is 1000; ours is 1000 too, and "
                         "Settings.HUGE_DATA_NATIVE_SIZEOF for a client of ours)")
    ap.add_argument("--window", default="default",
                    help="HugeData flow-control windows (Settings.HUGE_DATA_WINDOW, bytes) in every "
                         "role of ours, comma separated; 0 turns flow control off, 'default' keeps "
                         "the setting's default")
    ap.add_argument("--client-stall", type=float, default=0.0, metavar="SECONDS",
                    help="ours only: block the client's event loop for SECONDS when the first chunk of each "
                         "transfer arrives (a client busy elsewhere): what piles up meanwhile shows in the "
                         "client's RSS")
    ap.add_argument("--vs-original", action="store_true", help="also run the original 0.2.11 (gzip)")
    ap.add_argument("--original-sizes", default="1,16", help="sizes in MiB for the original (it is slow)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="sets of fresh processes per row (the row shows the median transfer)")
    ap.add_argument("--per-process", type=int, default=1, metavar="K",
                    help="transfers one after the other in each set of processes (ours only: the "
                         "original hangs on a second transfer in a process and always makes one)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per transfer")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)
    # 0 stands for "default": no blksize passed to HugeData
    blksizes = [0 if b.strip() == "default" else _positive(b) for b in args.blksize.split(",") if b.strip()]
    if not blksizes or any(b is None for b in blksizes):
        ap.error(f"--blksize: comma-separated sizes in bytes (above 0) or 'default', not {args.blksize!r}")
    windows: list[Optional[int]] = []
    for w in (x.strip() for x in args.window.split(",") if x.strip()):
        value = None if w == "default" else (0 if w == "0" else _positive(w))
        if w != "default" and (value is None or 0 < value < MIN_HUGE_WINDOW):
            ap.error(f"--window: comma-separated sizes in bytes (0: off, else at least {MIN_HUGE_WINDOW}) "
                     f"or 'default', not {args.window!r}")
        windows.append(value)
    if not 0 <= args.client_stall <= 60:
        ap.error(f"--client-stall: 0 to 60 seconds, not {args.client_stall}")
    if not windows:
        ap.error(f"--window: comma-separated sizes in bytes or 'default', not {args.window!r}")
    if args.per_process < 1:
        ap.error(f"--per-process: at least 1, not {args.per_process}")
    sizes = [int(float(s) * MiB) for s in args.sizes.split(",")]
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT))
    runs: list[tuple[str, dict[str, str], str, str]] = [(sys.executable, env, "ours", m)
                                                        for m in args.modules.split(",")]
    if args.vs_original:
        from gaterpc.bench.origenv import ensure_original_env

        orig_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        runs.append((str(ensure_original_env()), orig_env, "original", "gzip"))
    results: list[dict[str, Any]] = []
    if args.per_process > 1:
        print(f"each set of processes makes {args.per_process} transfers in turn (the original: 1); "
              "a row is the median of all transfers, CPU ms that transfer's, RSS the peak over "
              "the set and growth/size from before its first transfer")
    print(f"{'impl':9} {'codec':5} {'MiB':>5} {'blksize':>8} {'window':>8} {'MB/s':>8} {'s':>7} "
          f"{'CPU ms broker':>13} {'worker':>7} "
          f"{'client':>7} {'RSS broker':>10} {'worker':>7} {'client':>7} {'max RSS/size':>12} "
          f"{'growth/size':>11} {'faults k b/w/c':>16}  status")
    orig_sizes = [int(float(s) * MiB) for s in args.original_sizes.split(",")]
    for python, env_, impl, module in runs:
        combos = [(s, b or 0, w) for s in (orig_sizes if impl == "original" else sizes) for b in blksizes
                  for w in (windows if impl == "ours" else [None])]
        for size, blksize, window in combos:
            per_process = 1 if impl == "original" else args.per_process
            runs_ = [row for _ in range(max(1, args.repeat))
                     for row in run_once(python, env_, impl, module, size, blksize, args.timeout, per_process,
                                         window, args.client_stall)]
            order = list(runs_)
            # The transfer with the median MB/s (a failed one counts as the slowest; a set of
            # processes stops at its first failed transfer).
            runs_.sort(key=lambda x: x.get("mb_s") or 0.0 if x["ok"] else -1.0)
            r = runs_[(len(runs_) - 1) // 2] if all(x["ok"] for x in runs_) else runs_[0]
            r["runs"] = len(runs_)
            r["mb_s_runs"] = [x.get("mb_s") for x in runs_]
            # the first transfer of each set of processes (``transfer`` 0) and the later ones
            r["mb_s_first"] = [x.get("mb_s") for x in runs_ if x.get("transfer") == 0]
            # every transfer, in the order run (sets of processes one after the other)
            r["transfers"] = [{k: x.get(k) for k in TRANSFER_FIELDS} for x in order]
            results.append(r)
            rss = [r.get(f"rss_{role}") for role in ROLE_NAMES]
            cpu = [r.get(f"cpu_{role}") for role in ROLE_NAMES]
            ratio = max(x for x in rss if x) / (size / MiB) if any(rss) else None
            r["max_rss_ratio"] = ratio
            r["max_growth_ratio"] = growth = growth_ratio(r, size)
            wcol = "default" if window is None else window or "off"
            print(f"{impl:9} {module:5} {size / MiB:5.0f} {blksize or 'default':>8} {wcol:>8} "
                  f"{fmt(r.get('mb_s'), '{:8.1f}'):>8} "
                  f"{fmt(r.get('elapsed'), '{:7.2f}'):>7} "
                  f"{fmt(cpu[0] and cpu[0] * 1e3, '{:13.0f}'):>13} {fmt(cpu[1] and cpu[1] * 1e3, '{:7.0f}'):>7} "
                  f"{fmt(cpu[2] and cpu[2] * 1e3, '{:7.0f}'):>7} {fmt(rss[0], '{:10.0f}'):>10} "
                  f"{fmt(rss[1], '{:7.0f}'):>7} {fmt(rss[2], '{:7.0f}'):>7} {fmt(ratio, '{:12.2f}'):>12} "
                  f"{fmt(growth, '{:11.2f}'):>11} {faults_column(r):>16}  "
                  f"{'ok' if r['ok'] else 'FAILED ' + r.get('error', 'bad payload')}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results if r["impl"] == "ours") else 1


def faults_column(r: dict[str, Any]) -> str:
    """Each role's minor page faults during the transfer, in thousands: ``broker/worker/client``."""
    return "/".join(fmt(r.get(f"faults_{role}") and r[f"faults_{role}"] / 1000, "{:.1f}")
                    if r.get(f"faults_{role}") != 0 else "0" for role in ROLE_NAMES)


def fmt(value: Optional[float], spec: str) -> str:
    """``spec.format(value)``, or ``-`` for a missing value."""
    return spec.format(value) if value is not None else "-"


if __name__ == "__main__":
    sys.exit(main())
