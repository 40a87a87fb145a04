"""The echo benchmark: N calls of ``echo("hello world", i)`` through a broker.

Run it as ``gaterpc bench``, ``python -m gaterpc bench`` or
``python -m gaterpc.bench.echo``; ``--help`` lists the options.  The default is
100,000 calls, 1,000 in flight, client | broker | worker as three processes
over ipc.

Every role runs in a child process started here (``roles.py`` for gaterpc,
ours or the original 0.2.11; ``raw.py`` for the raw-pyzmq baselines, asyncio
and synchronous).  A child prints JSON lines on stdout: ``ready`` when
serving, then the client
waits for ``go`` on stdin, runs the calls and prints its ``result``.  The
harness samples CPU time (``/proc/<pid>/stat``) of every child right before
``go`` and right after the result, and peak RSS (``VmHWM``) after the run,
then ends every child by pid (SIGTERM, SIGKILL after a grace period).

The exit status is non-zero when a run fails: an error, a reply that does
not equal what was sent, fewer replies than calls, or the deadline.

The role processes are managed by ``procs.py``, the options and the printed
report live in ``report.py``; this module runs the workload.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

from gaterpc.bench.procs import (
    CLK_TCK, BenchError, Child, _active_backend, _command, _endpoints, _free_port, _package_root, stop_all,
)
from gaterpc.bench.report import LOOPLESS, LOOPS, SCHEDS, _ms, _resolve, build_parser, format_report
from gaterpc.sched import available as sched_available

__all__ = ("main", "run_benchmark", "build_parser", "BenchError", "Child", "stop_all", "_package_root")


# --------------------------------------------------------------------------- one run

def _progress_printer(total: int, label: str = "") -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
    """Progress on stderr: a bar on a terminal, else one line per 10% (visible when piped)."""
    width = 30
    start = time.monotonic()
    tty = sys.stderr.isatty() and not os.environ.get("CI")
    state = {"tenth": 0}

    def show(msg: dict[str, Any]) -> None:
        if "progress" not in msg:
            return
        done = int(msg["progress"])
        frac = min(1.0, done / max(1, total))
        rate = done / max(1e-9, time.monotonic() - start)
        if tty:
            bar = "#" * int(frac * width)
            sys.stderr.write(f"\r  [{bar:<{width}}] {frac * 100:5.1f}%  {done}/{total}  {rate:,.0f}/s ")
        else:
            tenth = int(frac * 10)
            if tenth <= state["tenth"]:
                return
            state["tenth"] = tenth
            sys.stderr.write(f"  {label}{tenth * 10:3d}%  {done:,}/{total:,}  {rate:,.0f}/s\n")
        sys.stderr.flush()

    def clear() -> None:
        if tty:
            sys.stderr.write("\r" + " " * (width + 50) + "\r")
            sys.stderr.flush()

    return show, clear


def run_once(impl: str, opts: argparse.Namespace, run_index: int = 0) -> dict[str, Any]:
    """Start the roles of ``opts.layout`` for ``impl``, run the workload once, measure, stop."""
    tmp = Path(tempfile.mkdtemp(prefix="gaterpc-bench-"))
    deadline = time.monotonic() + opts.timeout
    transport = opts.transport
    front, back = _endpoints(transport, tmp, f"b{run_index}")
    label = f"{impl}/{'uvloop' if opts.uvloop else 'asyncio'} " if impl not in LOOPLESS else f"{impl} "
    show: Optional[Callable[[dict[str, Any]], None]] = None
    clear: Optional[Callable[[], None]] = None
    if opts.progress:
        show, clear = _progress_printer(opts.n, label)
    workers = max(1, opts.workers)
    cfg: dict[str, Any] = {
        "front": front, "back": back, "base_path": str(tmp / "base"), "n": opts.n,
        "window": opts.window, "payload": opts.payload, "interface": opts.interface,
        "mode": opts.mode, "workers": workers, "uvloop": opts.uvloop, "timeout": opts.timeout,
        "progress": show is not None, "settle": 0.3 if workers > 1 else 0.0,
        "queued": 1000 * workers if opts.mode == "hol" else 0,
        "metrics": getattr(opts, "metrics", None),
        "io_threads": getattr(opts, "io_threads", "default"),
        "frames": getattr(opts, "limit_frames", "short"),
    }
    if opts.hwm is not None:
        cfg["hwm"] = opts.hwm
    if opts.inject_mismatch is not None:
        cfg["inject_mismatch"] = opts.inject_mismatch
    children: list[Child] = []

    layout = "3proc" if impl == "direct" else opts.layout
    real_impl = "ours" if impl in ("direct", "metrics") else impl
    if impl == "metrics":
        cfg["metrics"] = opts.metrics or 1.0
    if layout == "gate":
        ports: set[int] = set()
        while len(ports) < 2:
            ports.add(_free_port())
        cfg["gate_a_port"], cfg["gate_b_port"] = sorted(ports)
        cfg["gate_b_front"], cfg["gate_a_back"] = _endpoints(transport, tmp, f"g{run_index}")

    sched = _child_sched(opts)

    def spawn(role: str, label: str) -> Child:
        argv, env, cwd = _command(real_impl, role, cfg, opts, tmp)
        child = Child(label, argv, env, cwd, tmp / f"{label}.log", sched=sched)
        # ours may put ZeroMQ's I/O threads under batch, unless told not to
        child.io_threads_batch = real_impl == "ours" and getattr(opts, "io_threads", "default") != "normal"
        children.append(child)
        return child

    nclients = max(1, getattr(opts, "clients", 1) or 1)
    try:
        if layout in ("3proc", "gate"):
            if layout == "gate":
                for role in ("gate-b", "gate-a"):
                    g = spawn(role, role)
                    g.info = g.expect("ready", deadline, watch=children)
            else:
                broker = spawn("broker", "broker")
                broker.info = broker.expect("ready", deadline, watch=children)
            for k in range(workers):
                w = spawn("worker", f"worker{k + 1}" if workers > 1 else "worker")
                w.info = w.expect("ready", deadline, watch=children)
            clients = []
            share, extra = divmod(opts.n, nclients)
            base_cfg = dict(cfg)
            for k in range(nclients):
                cfg["n"] = share + (1 if k < extra else 0)
                clients.append(spawn("client", f"client{k + 1}" if nclients > 1 else "client"))
            cfg.clear()
            cfg.update(base_cfg)
        elif layout == "2proc":
            server = spawn("server", "broker+worker")
            server.info = server.expect("ready", deadline, watch=children)
            clients = [spawn("client", "client")]
        else:
            clients = [spawn("all", "broker+worker+client")]
        for client in clients:
            client.info.update(client.expect("ready", deadline, watch=children))
        for c in children:  # every thread of every role runs under the policy asked for
            c.check_sched()
        cpu0 = {c.pid: c.cpu() for c in children}
        wait0 = {c.pid: c.waited() for c in children}
        rss0 = {c.pid: c.rss_kib() for c in children}
        t0 = time.monotonic()
        for client in clients:
            client.send("go")
        results = []
        try:
            for k, client in enumerate(clients):
                results.append(client.expect("result", deadline, on_other=show if k == 0 else None,
                                             watch=children)["result"])
            if show is not None:
                show({"progress": sum(int(r.get("completed") or 0) for r in results)})
        finally:
            if clear is not None:
                clear()
        wall = time.monotonic() - t0
        cpu1 = {c.pid: c.cpu() for c in children}
        wait1 = {c.pid: c.waited() for c in children}
        rss1 = {c.pid: c.rss_kib() for c in children}
        hwm = {c.pid: c.hwm_kib() for c in children}
        for c in children:  # again: threads started during the run inherit it too
            c.check_sched()
    finally:
        stop_all(children)
        shutil.rmtree(tmp, ignore_errors=True)

    result = results[0] if len(results) == 1 else _combine(results)
    processes = []
    cpu_total = 0.0
    for c in children:
        c0, c1 = cpu0[c.pid], cpu1[c.pid]
        cpu = None if c0 is None or c1 is None else c1 - c0
        cpu_total += cpu or 0.0
        w0, w1 = wait0[c.pid], wait1[c.pid]
        processes.append({
            "role": c.role, "pid": c.pid, "cpu_s": cpu,
            # time its threads were ready to run but waited for a core (a starved role shows here)
            "wait_s": None if w0 is None or w1 is None else max(0.0, w1 - w0),
            "peak_rss_mib": _mib(hwm[c.pid]), "rss_before_mib": _mib(rss0[c.pid]),
            "rss_after_mib": _mib(rss1[c.pid]),
            "loop": c.info.get("loop"), "impl": c.info.get("impl"), "version": c.info.get("version"),
            "sched": ",".join(sorted(c.sched_seen)) or None,
        })
    completed = int(result.get("completed") or 0)
    queued = None
    if opts.mode == "queue":
        b = next((c for c in children if c.role in ("broker", "broker+worker")), None)
        r0, r1 = (rss0[b.pid], rss1[b.pid]) if b is not None else (None, None)
        if r0 is not None and r1 is not None:
            grown = (r1 - r0) * 1024
            queued = {"broker_rss_before_mib": _mib(r0), "broker_rss_queued_mib": _mib(r1),
                      "bytes_per_queued_request": grown / completed if completed else None}
    ok = (result.get("errors") == 0 and result.get("mismatches") == 0 and completed == opts.n)
    return {
        "impl": impl, "ok": ok, "layout": layout, "transport": transport, "mode": opts.mode,
        "n": opts.n, "window": result.get("window"), "payload": opts.payload,
        "interface": opts.interface, "uvloop_requested": opts.uvloop,
        "loop": None if impl in LOOPLESS else ("uvloop" if opts.uvloop else "asyncio"),
        "backend": opts.backend if impl == "ours" else None, "workers": workers,
        "sched": opts.sched, "sched_verified": sched is not None,
        "calls_per_s": result.get("rate"), "time_send_all_s": result.get("time_send_all"),
        "time_first_item_s": result.get("time_first_item"),
        "time_total_s": result.get("time_total"), "wall_s": wall,
        "latency_p50_ms": _ms(result.get("latency_p50")), "latency_p99_ms": _ms(result.get("latency_p99")),
        "latency_p999_ms": _ms(result.get("latency_p999")), "latency_max_ms": _ms(result.get("latency_max")),
        "latency_mean_ms": _ms(result.get("latency_mean")),
        "completed": completed, "errors": result.get("errors"), "mismatches": result.get("mismatches"),
        "first_errors": result.get("first_errors") or [],
        "cpu_s_total": cpu_total, "clients": nclients, "queued": queued, "hol": result.get("hol"),
        # payload bytes moved per second, both directions (the echo returns what it got)
        "payload_mb_per_s": (completed * opts.payload * 2 / result["time_total"] / 1e6)
        if opts.payload and result.get("time_total") else None,
        "client_rates": result.get("client_rates"), "fairness": result.get("fairness"),
        "cpu_us_per_call": (cpu_total / completed * 1e6) if completed else None,
        "processes": processes,
    }


def _child_sched(opts: argparse.Namespace) -> Optional[str]:
    """The policy to set in every role process of a run: ``opts.sched`` where this platform can
    set it (``normal`` elsewhere: the processes run as started, unverified)."""
    return opts.sched if sched_available(opts.sched) else None


def _mib(kib: Optional[int]) -> Optional[float]:
    """KiB as MiB rounded to 0.1, or None."""
    return None if kib is None else round(kib / 1024, 1)


def _combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result for several clients: calls/s over the slowest client's time; fairness min/max rate."""
    rates: list[float] = [float(r.get("rate") or 0.0) for r in results]
    top = max(rates, default=0.0)
    completed = sum(int(r.get("completed") or 0) for r in results)
    total = max(r.get("time_total") or 0.0 for r in results)
    send_all = max(r.get("time_send_all") or 0.0 for r in results)

    def median(key: str) -> Any:
        vals = sorted(r[key] for r in results if r.get(key) is not None)
        return vals[(len(vals) - 1) // 2] if vals else None

    return {
        "window": results[0].get("window"), "rate": completed / total if total else None,
        "time_send_all": send_all, "time_total": total, "completed": completed,
        "errors": sum(int(r.get("errors") or 0) for r in results),
        "mismatches": sum(int(r.get("mismatches") or 0) for r in results),
        "first_errors": [e for r in results for e in (r.get("first_errors") or [])][:5],
        # percentiles: the median over clients of each client's percentile
        "latency_p50": median("latency_p50"), "latency_p99": median("latency_p99"),
        "latency_p999": median("latency_p999"),
        "latency_max": max((r.get("latency_max") or 0.0) for r in results),
        "latency_mean": median("latency_mean"),
        "client_rates": rates,
        "fairness": (min(rates) / top) if top else None,
    }


def _median_of(impl: str, runs: list[dict[str, Any]], failure: str | None) -> dict[str, Any]:
    """The run with the median calls/s (all rates kept), or the failure."""
    if failure is not None:
        return {"impl": impl, "ok": False, "failure": failure, "runs": runs}
    ranked = sorted(runs, key=lambda x: x["calls_per_s"] or 0.0)
    chosen = dict(ranked[(len(ranked) - 1) // 2]) if all(r["ok"] for r in runs) else dict(runs[-1])
    chosen["ok"] = all(r["ok"] for r in runs)
    chosen["repeat"] = len(runs)
    chosen["calls_per_s_all"] = [r["calls_per_s"] for r in runs]
    return chosen


def run_repeated(impl: str, opts: argparse.Namespace) -> dict[str, Any]:
    """``opts.repeat`` runs of one implementation; the one with the median calls/s is reported."""
    runs = []
    for r in range(opts.repeat):
        try:
            runs.append(run_once(impl, opts, r))
        except (BenchError, OSError) as exc:
            return _median_of(impl, runs, str(exc))
        if not runs[-1]["ok"]:
            break
    return _median_of(impl, runs, None)


PlanKey = tuple[str, Optional[str], str]  # (implementation, event loop or None, scheduling policy)


def run_interleaved(plan: list[PlanKey], opts: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every ``(impl, loop, sched)`` of ``plan`` once per repetition, in turn (A B C A B C ...).

    Interleaving spreads the machine's drift over every entry alike; each
    entry reports the run with its median calls/s."""
    runs: dict[PlanKey, list[dict[str, Any]]] = {key: [] for key in plan}
    failures: dict[PlanKey, str] = {}
    for r in range(opts.repeat):
        for key in plan:
            if key in failures or (runs[key] and not runs[key][-1]["ok"]):
                continue
            impl, loop, sched = key
            o = copy.copy(opts)
            o.uvloop = loop == "uvloop"
            o.sched = sched
            if impl.endswith(ONE_BY_ONE):  # the same implementation, one client and one worker
                impl = impl[:-len(ONE_BY_ONE)]
                o.clients = o.workers = 1
            if impl.endswith(PROTOCOL_FRAMES):  # the limit or floor row with the protocol's frames
                impl = impl[:-len(PROTOCOL_FRAMES)]
                o.limit_frames = "protocol"
            elif impl in ("limit", "floor") and o.limit_frames == "both":
                o.limit_frames = "short"
            try:
                runs[key].append(run_once(impl, o, r))
            except (BenchError, OSError) as exc:
                failures[key] = str(exc)
    out = []
    for key in plan:
        res = _median_of(key[0], runs[key], failures.get(key))
        res["impl"], res["loop"], res["sched"] = key
        out.append(res)
    return out



ONE_BY_ONE = "@1x1"
#: suffix of the limit and floor rows run with the seven frames of a gaterpc request
#: (``--limit-frames both``), beside the same rows with their own short messages
PROTOCOL_FRAMES = ":7f"


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _scale_ratios(by_key: dict[tuple[str, Optional[str]], dict[str, Any]],
                  opts: argparse.Namespace) -> dict[str, Any]:
    """``--vs-1x1``: each fan-out run against the same implementation's 1x1 run of this invocation.

    "Allows" is the machine's usable cores divided by the CPU time the 1x1
    run spent per call over all its processes: the rate the fan-out would
    reach if its extra processes cost nothing per call and every core were
    busy.  Reporting it for the limit row too (libzmq loops, no RPC work)
    shows how much of the loss is the machine's, not ours."""
    cores = usable_cores()
    shape = f"{opts.clients}x{opts.workers}"
    out: dict[str, Any] = {}
    for (name, loop), one in by_key.items():
        if not name.endswith(ONE_BY_ONE):
            continue
        impl = name[:-len(ONE_BY_ONE)]
        wide = by_key.get((impl, loop))
        where = f" on {loop}" if loop else ""
        if wide is None or not (wide.get("ok") and one.get("ok") and wide.get("calls_per_s")
                                and one.get("calls_per_s")):
            out[f"{impl} {shape} / 1x1{where}"] = "n/a (a run failed)"
            continue
        out[f"{impl} {shape} / 1x1{where} (calls/s)"] = wide["calls_per_s"] / one["calls_per_s"]
        if not one.get("cpu_us_per_call"):
            # CPU time is read in clock ticks: a run this short may show none at all
            out[f"{impl} {shape}{where} as % of what its 1x1 CPU cost allows on {cores} cores"] = (
                f"n/a (the 1x1 run's CPU time is below the {1000 / CLK_TCK:g} ms clock tick; raise -n)")
            continue
        if wide.get("cpu_us_per_call"):
            out[f"{impl} {shape} / 1x1{where} (CPU us per call)"] = wide["cpu_us_per_call"] / one["cpu_us_per_call"]
        if wide.get("cpu_us_per_call"):
            # how busy the fan-out kept the machine: CPU seconds per wall second over the cores
            out[f"{impl} {shape}{where}: cores kept busy, as % of {cores}"] = \
                wide["calls_per_s"] * wide["cpu_us_per_call"] / (cores * 1e6)
        allowed = cores * 1e6 / one["cpu_us_per_call"]
        out[f"{impl} {shape}{where} as % of what its 1x1 CPU cost allows on {cores} cores"] = \
            wide["calls_per_s"] / allowed
    return out


def run_gate_spill(opts: argparse.Namespace) -> dict[str, Any]:
    """``--layout gate-spill``: calls/s of one slow local worker alone, then of the cluster.

    Gate A (its client and one slow worker of capacity 1) and gate B (four
    workers of the same speed) run in two processes; the client measures A
    with spilling off, then with ``gate.spill_after = 0`` (a request that
    finds A's worker busy goes to B at once when B has spare capacity)."""
    tmp = Path(tempfile.mkdtemp(prefix="gaterpc-bench-"))
    deadline = time.monotonic() + opts.timeout
    front, back = _endpoints(opts.transport, tmp, "s")
    b_front, a_back = _endpoints(opts.transport, tmp, "t")
    ports: set[int] = set()
    while len(ports) < 2:
        ports.add(_free_port())
    port_a, port_b = sorted(ports)
    cfg = {"front": front, "back": back, "gate_b_front": b_front, "gate_a_back": a_back,
           "gate_a_port": port_a, "gate_b_port": port_b, "base_path": str(tmp / "base"),
           "n": opts.n, "window": max(opts.window, 16), "timeout": opts.timeout,
           "remote_workers": 4, "spill_after": 0.0, "uvloop": False, "mode": "calls"}
    children: list[Child] = []
    result: dict[str, Any] = {}
    failure = None
    try:
        for role in ("spill-b", "spill-a"):
            argv, env, cwd = _command("ours", role, cfg, opts, tmp)
            children.append(Child(role, argv, env, cwd, tmp / f"{role}.log", sched=_child_sched(opts)))
        children[0].expect("ready", deadline, watch=children)
        for c in children:
            c.check_sched()
        result = children[1].expect("result", deadline, watch=children)["result"]
    except Exception as exc:  # a role failed or timed out: report it
        failure = f"{exc}; log tail: {children[-1].log_tail() if children else ''}"
    finally:
        stop_all(children)
        shutil.rmtree(tmp, ignore_errors=True)
    local = result.get("local_calls_per_s")
    cluster = result.get("cluster_calls_per_s")
    ratio = cluster / local if local and cluster else None
    return {"gate_spill": True, "config": {"n": opts.n, "window": cfg["window"], "transport": opts.transport,
                                           "backend": opts.backend, "remote_workers": 4, "sched": opts.sched},
            "result": result, "ratio": ratio, "failure": failure,
            "ok": failure is None and result.get("errors") == 0}


def run_benchmark(opts: argparse.Namespace) -> dict[str, Any]:
    """Run the selected implementation and the comparisons; return the report dict.

    Every (implementation, loop, scheduling policy) runs ``--repeat`` times,
    interleaved; ratios are computed only between runs on the same event loop
    under the same policy, and with ``--sched both`` batch over normal for each."""
    if opts.layout == "gate-spill":
        return run_gate_spill(opts)
    impls = [opts.impl]
    for flag, name in ((opts.vs_original, "original"), (opts.vs_raw, "raw"), (opts.vs_limit, "limit"),
                       (opts.vs_floor, "floor"), (opts.vs_direct, "direct"), (opts.vs_metrics, "metrics")):
        if flag and name not in impls:
            impls.append(name)
    if opts.vs_raw and opts.mode == "latency" and "raw-sync" not in impls:
        impls.append("raw-sync")  # issue 13: sequential p50 against raw synchronous pyzmq, same run
    loops = list(LOOPS) if opts.loop == "both" else [opts.loop]
    scheds = list(SCHEDS) if opts.sched == "both" else [opts.sched]
    results: list[dict[str, Any]] = []
    ratios: dict[str, Any] = {}
    active = _active_backend(opts) if "ours" in impls else None
    plan: list[PlanKey] = []
    for impl in impls:
        if impl == "original":
            if opts.mode == "stream" and impl != opts.impl:
                results.append({"impl": impl, "ok": True, "skipped": True,
                                "failure": "n/a: the original cannot stream to its client"})
                ratios[f"{opts.impl} / original"] = "n/a (the original cannot stream to its client)"
                continue
            from gaterpc.bench.origenv import OriginalEnvError, ensure_original_env
            try:
                opts.original_python = ensure_original_env()
            except OriginalEnvError as exc:
                results.append({"impl": impl, "ok": False, "failure": str(exc)})
                continue
        variants = [impl]
        if impl in ("limit", "floor") and opts.limit_frames == "both":
            variants.append(impl + PROTOCOL_FRAMES)
        if opts.vs_1x1 and impl in ("ours", "limit", "floor"):
            variants += [name + ONE_BY_ONE for name in variants]
        for name in variants:
            for loop in ([None] if impl in LOOPLESS else loops):
                plan.extend((name, loop, sched) for sched in scheds)
    results.extend(run_interleaved(plan, opts))
    for res in results:
        if res["impl"] == "ours":
            res["backend_active"] = active
    for sched in scheds:
        view = {(r["impl"], r.get("loop")): r for r in results if r.get("sched", sched) == sched}
        ratios.update(_ratios(view, impls, loops, opts, f"{sched}: " if len(scheds) > 1 else ""))
    if len(scheds) > 1:
        ratios.update(_sched_ratios(plan, results, opts.mode))
    config = {k: getattr(opts, k) for k in ("n", "window", "payload", "interface", "loop", "backend",
                                             "metrics", "io_threads", "limit_frames", "workers", "clients", "layout", "transport", "mode",
                                             "repeat", "timeout", "sched")}
    config["uvloop"] = opts.loop
    config["python"] = sys.version.split()[0]
    config["backend_active"] = active
    return {"config": config, "results": results, "ratios": ratios,
            "ok": all(r.get("ok") for r in results)}


def _ratios(by_key: dict[tuple[str, Optional[str]], dict[str, Any]], impls: list[str], loops: list[str],
            opts: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The ratios between the runs of one scheduling policy, named with ``prefix``."""
    ratios: dict[str, Any] = {}
    base_impl = opts.impl
    limit = by_key.get(("limit", None))
    floor = by_key.get(("floor", None))
    # the same rows with the protocol's frames (--limit-frames both), or None
    limit7 = by_key.get(("limit" + PROTOCOL_FRAMES, None))
    floor7 = by_key.get(("floor" + PROTOCOL_FRAMES, None))
    raw_sync = by_key.get(("raw-sync", None))

    def rate_ratio(name: str, num: dict[str, Any], den: dict[str, Any]) -> None:
        if num.get("calls_per_s") and den.get("calls_per_s"):
            ratios[name] = num["calls_per_s"] / den["calls_per_s"]
        else:
            ratios[name] = "n/a (a run failed)"

    if limit is not None and floor is not None:
        rate_ratio(f"{prefix}floor as % of the limit (calls/s)", floor, limit)
    if limit7 is not None and floor7 is not None:
        rate_ratio(f"{prefix}floor{PROTOCOL_FRAMES} as % of the limit{PROTOCOL_FRAMES} (calls/s)", floor7, limit7)
    for loop in loops:
        base = by_key.get((base_impl, loop))
        if base is None or base_impl in LOOPLESS:
            continue
        for impl in impls:
            if impl == base_impl or impl in LOOPLESS:
                continue
            other = by_key.get((impl, loop))
            if other is None or other.get("skipped"):
                continue
            rate_ratio(f"{prefix}{base_impl} / {impl} on {loop} (calls/s)", base, other)
        for bound_name, bound in (("limit", limit), ("floor", floor), ("limit" + PROTOCOL_FRAMES, limit7),
                                  ("floor" + PROTOCOL_FRAMES, floor7)):
            if bound is not None:
                rate_ratio(f"{prefix}{base_impl} on {loop} as % of the {bound_name} (calls/s)", base, bound)
        if raw_sync is not None:
            # below 1.00x: a sequential call through us is faster than through raw blocking pyzmq
            name = f"{prefix}{base_impl} on {loop} / raw-sync (p50 latency)"
            if base.get("ok") and raw_sync.get("ok") and base.get("latency_p50_ms") \
                    and raw_sync.get("latency_p50_ms"):
                ratios[name] = base["latency_p50_ms"] / raw_sync["latency_p50_ms"]
            else:
                ratios[name] = "n/a (a run failed)"
    if opts.vs_1x1:
        ratios.update({prefix + k: v for k, v in _scale_ratios(by_key, opts).items()})
    return ratios


def _sched_ratios(plan: list[PlanKey], results: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """``--sched both``: each implementation under batch over itself under normal, same loop, same run."""
    by_key = {(r["impl"], r.get("loop"), r.get("sched")): r for r in results}
    ratios: dict[str, Any] = {}
    for impl, loop, sched in plan:
        if sched != SCHEDS[0]:
            continue
        normal, batch = by_key.get((impl, loop, SCHEDS[0])), by_key.get((impl, loop, SCHEDS[1]))
        where = f"{impl} on {loop}" if loop else impl
        if normal is None or batch is None or not (normal.get("ok") and batch.get("ok")):
            ratios[f"{where}: batch / normal"] = "n/a (a run failed)"
            continue
        for key, what in (("calls_per_s", "calls/s"), ("cpu_us_per_call", "CPU us per call"),
                          ("latency_p50_ms", "p50 latency")):
            if key == "latency_p50_ms" and mode != "latency":
                continue
            if normal.get(key) and batch.get(key):
                ratios[f"{where}: batch / normal ({what})"] = batch[key] / normal[key]
    return ratios


def _interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, prog: str = "gaterpc bench") -> int:
    """Run the echo benchmark from the command line; exit status 0 when every run succeeded."""
    parser = build_parser(prog)
    opts = parser.parse_args(argv)
    _resolve(opts, parser)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so that the children are ended and the temp dir removed.
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_benchmark(opts)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(format_report(report))
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(prog="python -m gaterpc.bench.echo"))