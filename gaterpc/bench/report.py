"""The echo benchmark's command line (options and their checks) and its printed report."""

from __future__ import annotations

import argparse
from typing import Any, Optional

from gaterpc.sched import available as sched_available

# gate-spill: one slow local worker behind gate A, four idle ones behind gate B
LAYOUTS = ("3proc", "2proc", "inproc", "gate", "gate-spill")
IMPLS = ("ours", "original", "raw", "raw-sync", "limit", "floor")  # plus "direct"/"metrics": ours, run another way
#: implementations that run without an event loop (one row, not one per --loop)
LOOPLESS = ("limit", "floor", "raw-sync")
LOOPS = ("asyncio", "uvloop")
#: CPU scheduling policies of the role processes (``--sched``; ``both`` runs each in turn)
SCHEDS = ("normal", "batch")


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else seconds * 1000.0


def _fmt(v: Optional[float], spec: str = ",.0f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def format_gate_spill(report: dict[str, Any]) -> str:
    """The text report of ``--layout gate-spill``."""
    cfg, res = report["config"], report["result"]
    out = [f"gaterpc gate spill-over benchmark: n={cfg['n']:,} window={cfg['window']} "
           f"transport={cfg['transport']} backend={cfg['backend']} sched={cfg.get('sched', 'normal')}: gate A with 1 slow worker "
           f"(capacity 1), gate B with {cfg['remote_workers']} like it"]
    if report.get("failure"):
        out.append(f"FAILED: {report['failure']}")
        return "\n".join(out)
    out.append(f"local worker alone (spilling off): {_fmt(res.get('local_calls_per_s'))} calls/s")
    out.append(f"cluster (gate.spill_after = 0):    {_fmt(res.get('cluster_calls_per_s'))} calls/s, "
               f"{res.get('spilled', 0):,} calls spilled to gate B, {res.get('errors')} errors")
    out.append(f"cluster / local: {_fmt(report.get('ratio'), '.2f')}x")
    return "\n".join(out)


def format_report(report: dict[str, Any]) -> str:
    """The text report: one row per run, then per process, failures, warnings and ratios."""
    if report.get("gate_spill"):
        return format_gate_spill(report)
    out = []
    cfg = report["config"]
    out.append(f"gaterpc echo benchmark: mode={cfg['mode']} n={cfg['n']:,} window={cfg['window']} "
               f"layout={cfg['layout']} transport={cfg['transport']} payload={cfg['payload']} "
               f"interface={cfg['interface']} loop={cfg['loop']} backend={cfg['backend']}"
               f"{'' if cfg.get('backend_active') in (None, cfg['backend']) else ' (active: ' + cfg['backend_active'] + ')'} "
               f"workers={cfg['workers']} clients={cfg.get('clients', 1)} repeat={cfg['repeat']} "
               f"sched={cfg.get('sched', 'normal')}"
               f"{' limit-frames=' + cfg['limit_frames'] if cfg.get('limit_frames', 'short') != 'short' else ''}")
    rate_name = "items/s" if cfg["mode"] == "stream" else "calls/s"
    header = (f"{'impl':<9} {'loop':<8} {'sched':<6} {rate_name:>9} {'send all s':>10} {'total s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'p99.9 ms':>9} {'CPU us/call':>11} {'status':>8}")
    out.append(header)
    out.append("-" * len(header))
    for res in report["results"]:
        loop = res.get("loop") or "-"
        sched = res.get("sched") or "-"
        if res.get("skipped"):
            out.append(f"{res['impl']:<9} {loop:<8} {sched:<6} {res['failure']}")
            continue
        if "failure" in res and "calls_per_s" not in res:
            out.append(f"{res['impl']:<9} {loop:<8} {sched:<6} FAILED: {res['failure'].splitlines()[0]}")
            continue
        status = "ok" if res["ok"] else "FAILED"
        out.append(
            f"{res['impl']:<9} {loop:<8} {sched:<6} {_fmt(res['calls_per_s']):>9} {_fmt(res['time_send_all_s'], '.3f'):>10} "
            f"{_fmt(res['time_total_s'], '.3f'):>8} {_fmt(res['latency_p50_ms'], '.3f'):>8} "
            f"{_fmt(res['latency_p99_ms'], '.3f'):>8} {_fmt(res['latency_p999_ms'], '.3f'):>9} "
            f"{_fmt(res['cpu_us_per_call'], ',.0f'):>11} {status:>8}")
    for res in report["results"]:
        h = res.get("hol")
        if h:
            out.append(f"{res['impl']:<9} {res.get('loop') or '-':<8} echo p50 {_fmt(_ms(h['p50_unloaded']), '.3f')} ms "
                       f"unloaded, {_fmt(_ms(h['p50_loaded']), '.3f')} ms with {h['queued_slow_calls']:,} slow "
                       f"calls queued for another service: {_fmt(h['ratio'], '.2f')}x")
        q = res.get("queued")
        if q:
            out.append(f"{res['impl']:<9} {res.get('loop') or '-':<8} broker RSS {q['broker_rss_before_mib']} MiB "
                       f"-> {q['broker_rss_queued_mib']} MiB with {res['completed']:,} requests queued: "
                       f"{_fmt(q['bytes_per_queued_request'], ',.0f')} bytes per queued request")
        if res.get("payload_mb_per_s") is not None:
            out.append(f"{res['impl']:<9} {res.get('loop') or '-':<8} payload MB/s (both directions) "
                       f"{res['payload_mb_per_s']:,.1f}")
        if res.get("fairness") is not None:
            rates = ", ".join(f"{r:,.0f}" for r in res.get("client_rates") or [])
            out.append(f"{res['impl']:<9} {res.get('loop') or '-':<8} fairness (slowest/fastest client) "
                       f"{res['fairness']:.2f}; per client calls/s: {rates}")
    out.append("")
    # sched: the policy the harness read from every thread of the process while it ran
    # waited s: how long its threads were ready to run but waited for a core (run queue)
    out.append(f"{'impl':<9} {'process':<22} {'CPU s':>7} {'CPU us/call':>11} {'waited s':>8} "
               f"{'peak RSS MiB':>12}  {'sched':<6}  loop")
    for res in report["results"]:
        done = res.get("completed") or 0
        for p in res.get("processes", []):
            per_call = p["cpu_s"] / done * 1e6 if done and p.get("cpu_s") is not None else None
            out.append(f"{res['impl']:<9} {p['role']:<22} {_fmt(p['cpu_s'], '.2f'):>7} "
                       f"{_fmt(per_call, ',.1f'):>11} {_fmt(p.get('wait_s'), '.2f'):>8} "
                       f"{_fmt(p['peak_rss_mib'], '.1f'):>12}  "
                       f"{p.get('sched') or '-':<6}  {p.get('loop') or '-'}")
    for res in report["results"]:
        if not res.get("ok"):
            detail = res.get("failure") or "; ".join(res.get("first_errors") or []) or (
                f"completed {res.get('completed')} of {res.get('n')}")
            out.append(f"\n{res['impl']} FAILED: {detail}")
    for res in report["results"]:
        want = res.get("loop")
        seen = {p.get("loop") for p in res.get("processes", []) if p.get("loop")}
        if want and seen and not all(want in (s or "") for s in seen):
            out.append(f"\nwarning: {res['impl']} asked for {want} but ran on {', '.join(sorted(seen))}")
    if report.get("ratios"):
        out.append("")
        out.append("ratios (like for like: same event loop, same run):")
        for name, value in report["ratios"].items():
            if isinstance(value, str):
                text = value
            elif "% of" in name:
                text = f"{value * 100:.0f}%"
            else:
                text = f"{value:.2f}x"
            out.append(f"  {name}: {text}")
    return "\n".join(out)


# --------------------------------------------------------------------------- entry points

def build_parser(prog: str = "gaterpc bench") -> argparse.ArgumentParser:
    """The options of the echo benchmark."""
    p = argparse.ArgumentParser(
        prog=prog, description="Echo benchmark: N calls of echo('hello world', i) through a gaterpc broker.")
    p.add_argument("-n", type=int, default=None,
                   help="number of calls (stream: items); default 100000 (latency mode: 10000)")
    p.add_argument("--window", type=int, default=1000, help="calls in flight (default 1000)")
    p.add_argument("--payload", type=int, default=0, metavar="BYTES",
                   help="add a payload string of that many bytes to each call")
    p.add_argument("--interface", choices=("async", "sync"), default="async",
                   help="the worker's echo is 'async def' or plain 'def'")
    p.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default=None,
                   help="event loop of every role (ours, original and raw alike); 'both' runs each "
                        "implementation on each loop and compares like with like (default: uvloop "
                        "when installed)")
    p.add_argument("--sched", choices=SCHEDS + ("both",), default="normal",
                   help="CPU scheduling policy of every role process (every implementation alike): normal "
                        "(SCHED_OTHER, the default) or batch (SCHED_BATCH: a woken process does not preempt "
                        "the running one; fewer, longer wake-ups when processes outnumber cores); 'both' runs "
                        "each implementation under each policy and adds batch/normal ratios. The harness "
                        "reads every thread's policy while the roles run and fails the run on a mismatch")
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=None,
                   help="same as --loop uvloop / --loop asyncio")
    p.add_argument("--backend", choices=("compiled", "pure"), default="compiled",
                   help="pure: GATERPC_NO_EXTENSIONS=1 in the role processes")
    p.add_argument("--workers", type=int, default=1, metavar="K", help="number of workers (processes in 3proc)")
    p.add_argument("--clients", type=int, default=1, metavar="M",
                   help="number of client processes (3proc layout); -n is split among them and the "
                        "report adds fairness = slowest client's calls/s over the fastest's")
    p.add_argument("--layout", choices=LAYOUTS, default="3proc",
                   help="3proc: client | broker | worker; 2proc: client | broker+worker; inproc: one process")
    p.add_argument("--transport", choices=("ipc", "tcp", "inproc"), default="ipc",
                   help="ipc (default), tcp on 127.0.0.1, or inproc (inproc layout only)")
    p.add_argument("--mode", choices=("throughput", "latency", "stream", "queue", "hol"), default="throughput",
                   help="queue: -n calls to one worker with one unit of capacity that holds it, so all "
                        "but one wait in the broker; reports the broker's RSS and bytes per queued request. "
                        "hol: sequential echo p50 unloaded, then with 1,000 slow calls per worker queued "
                        "for another service on the same broker (head-of-line blocking check)")
    p.add_argument("--hwm", type=int, default=None, metavar="N",
                   help="ZeroMQ high-water mark of gaterpc's sockets (Settings.ZMQ_SOCK; 0 = unlimited); "
                        "default: the library's, raised for windows above 1,500. The raw baseline's "
                        "sockets are always unlimited")
    p.add_argument("--impl", choices=IMPLS, default="ours",
                   help="what to measure: our gaterpc, the original 0.2.11, the raw-pyzmq asyncio baseline "
                        "(raw) or the raw synchronous one (raw-sync: blocking pyzmq, one call at a time)")
    p.add_argument("--vs-original", action="store_true", help="also run the original gaterpc 0.2.11")
    p.add_argument("--vs-raw", action="store_true",
                   help="also run the raw-pyzmq baseline (asyncio, on each --loop); with --mode latency also "
                        "the raw synchronous row (raw-sync: blocking pyzmq client, zmq.Poller broker and "
                        "worker) and the p50 ratio to it")
    p.add_argument("--vs-direct", action="store_true",
                   help="with --layout gate: also run ours directly (client | broker | worker) in the same "
                        "run, for the forwarded/direct ratio")
    p.add_argument("--vs-limit", action="store_true",
                   help="also run the limit row: the same three processes as libzmq loops doing no RPC "
                        "work (C proxy broker, C reflector worker, compiled batch-I/O client)")
    p.add_argument("--vs-floor", action="store_true",
                   help="also run the floor row: the limit's client, with the broker and the worker as "
                        "Python loops over the same compiled batch I/O, doing no RPC work (what moving the "
                        "messages costs in Python, before any RPC work)")
    p.add_argument("--limit-frames", dest="limit_frames", choices=("short", "protocol", "both"),
                   default="short",
                   help="the messages of the limit and floor rows: short (3 frames: delimiter, counter, "
                        "body; the default), protocol (the 7 frames of a gaterpc echo request, each way: "
                        "what libzmq alone costs for the protocol's frame count) or both (each row twice, "
                        "the protocol's named limit:7f and floor:7f)")
    p.add_argument("--vs-1x1", dest="vs_1x1", action="store_true",
                   help="with --clients/--workers above 1: also run each implementation as one client and "
                        "one worker in the same invocation, and report how close the fan-out comes to what "
                        "the 1x1 CPU cost per call allows on this machine's cores")
    p.add_argument("--metrics", type=float, default=None, metavar="S",
                   help="ours: every role serves its metrics on 127.0.0.1 and is scraped every S seconds "
                        "(the cost of metrics, to compare with a run without)")
    p.add_argument("--vs-metrics", action="store_true",
                   help="also run ours with metrics served and scraped (every --metrics S seconds, default "
                        "1), in the same run: the cost of metrics as a ratio")
    p.add_argument("--io-threads", dest="io_threads", choices=("default", "auto", "normal", "batch"),
                   default="default",
                   help="ours: scheduling policy of ZeroMQ's I/O threads (Settings.ZMQ_IO_THREAD_BATCH): "
                        "default (the library's default, auto), auto (SCHED_BATCH while the process waits "
                        "for cores as long as it runs), normal (always the system's default policy) or "
                        "batch (always SCHED_BATCH where the system allows it)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--repeat", type=int, default=1, metavar="R", help="report the median of R runs")
    p.add_argument("--timeout", type=float, default=180.0, metavar="S", help="deadline of each run (s)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (there is none anyway when stderr is not a terminal)")
    # Test hook (raw baseline only): the worker answers call number I with a wrong value.
    p.add_argument("--inject-mismatch", type=int, default=None, metavar="I", help=argparse.SUPPRESS)
    return p


def _resolve(opts: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Defaults that depend on other options, and the checks across options (usage errors)."""
    if opts.n is None:
        # the spill-over layout runs slow (5 ms) workers: a smaller default keeps it to seconds
        opts.n = 10_000 if opts.mode == "latency" else 2_000 if opts.layout == "gate-spill" else 100_000
    if opts.layout == "gate" and (opts.impl != "ours" or opts.vs_original or opts.vs_raw or opts.vs_limit
                                  or opts.vs_floor):
        parser.error("--layout gate runs our roles only (add --vs-direct for the direct comparison)")
    if opts.vs_direct and opts.layout != "gate":
        parser.error("--vs-direct goes with --layout gate")
    if opts.clients > 1 and opts.layout not in ("3proc", "gate"):
        parser.error("--clients needs --layout 3proc")
    if opts.n < 1 or opts.window < 1 or opts.repeat < 1 or opts.workers < 1 or opts.payload < 0 \
            or opts.clients < 1:
        parser.error("-n, --window, --repeat and --workers must be positive, --payload non-negative")
    if opts.timeout <= 0:
        parser.error("--timeout must be positive")
    if opts.vs_1x1 and (opts.clients == 1 and opts.workers == 1 or opts.layout != "3proc"
                        or opts.mode != "throughput"):
        parser.error("--vs-1x1 goes with --clients or --workers above 1, --layout 3proc and throughput mode")
    if opts.transport == "inproc" and opts.layout != "inproc":
        parser.error("--transport inproc needs --layout inproc")
    if opts.mode in ("latency", "stream", "hol"):
        opts.window = 1
    if opts.mode in ("queue", "hol") and (opts.layout != "3proc" or opts.impl != "ours" or opts.vs_original
                                 or opts.vs_raw or opts.vs_limit or opts.vs_floor):
        parser.error("--mode queue and --mode hol run our roles only, in the 3proc layout")
    if opts.loop is None and opts.uvloop is not None:
        opts.loop = "uvloop" if opts.uvloop else "asyncio"
    if opts.loop is None:
        try:
            import uvloop  # noqa: F401
            opts.loop = "uvloop"
        except ImportError:
            opts.loop = "asyncio"
    opts.uvloop = opts.loop == "uvloop"
    if (opts.vs_limit or opts.vs_floor or opts.impl in ("limit", "floor")) \
            and (opts.layout != "3proc" or opts.mode == "stream"):
        parser.error("the limit and floor rows need --layout 3proc and a throughput or latency mode")
    if opts.limit_frames != "short" and not (opts.vs_limit or opts.vs_floor or opts.impl in ("limit", "floor")):
        parser.error("--limit-frames goes with the limit or floor row (--vs-limit, --vs-floor)")
    if opts.sched != "normal" and not sched_available("batch"):
        parser.error("--sched batch needs the SCHED_BATCH scheduling policy (Linux)")
    if opts.sched == "both" and opts.layout == "gate-spill":
        parser.error("--layout gate-spill runs one policy: --sched normal or --sched batch")
    opts.original_python = None
