"""The echo benchmark harness (``gaterpc bench``), run end to end on small workloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gaterpc.__main__ import main as cli_main
from gaterpc.bench.echo import build_parser

ROOT = Path(__file__).resolve().parent.parent
N = 2000
RUN_FIELDS = (
    "impl", "ok", "layout", "transport", "mode", "n", "window", "calls_per_s", "time_send_all_s",
    "time_total_s", "latency_p50_ms", "latency_p99_ms", "latency_p999_ms", "completed", "errors",
    "mismatches", "cpu_s_total", "cpu_us_per_call", "processes",
)
PROCESS_FIELDS = ("role", "pid", "cpu_s", "wait_s", "peak_rss_mib", "loop")
#: the kernel keeps per-thread run-queue statistics (``wait_s`` is None without them)
HAS_SCHEDSTAT = Path(f"/proc/self/task/{os.getpid()}/schedstat").exists()
EXPECTED_ROLES = {
    "3proc": ["broker", "worker", "client"],
    "2proc": ["broker+worker", "client"],
    "inproc": ["broker+worker+client"],
}


def run_bench(tmp_path: Path, *args: str, timeout: float = 150.0, preexec_fn=None):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "gaterpc", "bench", *args, "--json", str(out), "--timeout", "90"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn,
    )
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, report


def check_report(proc, report, impl: str, layout: str, n: int = N):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert report is not None and report["ok"] is True
    assert report["config"]["n"] == n and report["config"]["layout"] == layout
    (res,) = [r for r in report["results"] if r["impl"] == impl]
    for field in RUN_FIELDS:
        assert field in res, field
    assert res["ok"] is True
    # Every call came back, and the client role compared each reply with what it sent.
    assert res["completed"] == n
    assert res["errors"] == 0
    assert res["mismatches"] == 0
    assert res["calls_per_s"] > 0
    assert 0 < res["latency_p50_ms"] <= res["latency_p99_ms"] <= res["latency_p999_ms"]
    assert res["time_send_all_s"] <= res["time_total_s"]
    assert [p["role"] for p in res["processes"]] == EXPECTED_ROLES[layout]
    for p in res["processes"]:
        for field in PROCESS_FIELDS:
            assert field in p, field
        assert p["peak_rss_mib"] > 0
        assert p["cpu_s"] is not None and p["cpu_s"] >= 0
        if HAS_SCHEDSTAT:
            assert isinstance(p["wait_s"], float) and p["wait_s"] >= 0
        else:
            assert p["wait_s"] is None
    assert impl in proc.stdout  # the table
    assert "waited s" in proc.stdout
    return res


def test_parser_defaults():
    opts = build_parser().parse_args([])
    assert opts.n is None and opts.window == 1000 and opts.layout == "3proc"
    assert opts.transport == "ipc" and opts.mode == "throughput" and opts.impl == "ours"


def test_cli_usage(capsys):
    assert cli_main(["--help"]) == 0
    assert "bench" in capsys.readouterr().out
    assert cli_main(["no-such-command"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["inproc", "3proc"])
def test_bench_ours(tmp_path, layout):
    proc, report = run_bench(tmp_path, "-n", str(N), "--layout", layout)
    res = check_report(proc, report, "ours", layout)
    assert all(p["impl"] == "ours" for p in res["processes"])


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["inproc", "3proc"])
def test_bench_raw(tmp_path, layout):
    proc, report = run_bench(tmp_path, "-n", str(N), "--layout", layout, "--impl", "raw")
    check_report(proc, report, "raw", layout)


@pytest.mark.slow
def test_bench_raw_stream_and_latency(tmp_path):
    proc, report = run_bench(tmp_path, "-n", str(N), "--impl", "raw", "--mode", "stream", "--payload", "64")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (res,) = report["results"]
    assert res["completed"] == N and res["mismatches"] == 0 and res["errors"] == 0
    proc, report = run_bench(tmp_path, "-n", "300", "--impl", "raw", "--mode", "latency", "--layout", "2proc")
    check_report(proc, report, "raw", "2proc", n=300)
    assert report["results"][0]["window"] == 1


@pytest.mark.slow
def test_bench_fails_on_a_wrong_reply(tmp_path):
    proc, report = run_bench(tmp_path, "-n", "500", "--impl", "raw", "--inject-mismatch", "7")
    assert proc.returncode != 0
    (res,) = report["results"]
    assert res["ok"] is False and res["mismatches"] == 1
    assert "FAILED" in proc.stdout


@pytest.mark.slow
@pytest.mark.interop
def test_bench_original(tmp_path):
    from gaterpc.bench.origenv import OriginalEnvError, ensure_original_env
    try:
        ensure_original_env()
    except OriginalEnvError as exc:  # no package index reachable: nothing to compare with
        pytest.skip(str(exc))
    proc, report = run_bench(tmp_path, "-n", str(N), "--impl", "original")
    res = check_report(proc, report, "original", "3proc")
    assert all(p["impl"] == "original" for p in res["processes"])


@pytest.mark.slow
def test_bench_loops_like_for_like_and_limit_row(tmp_path):
    proc, report = run_bench(tmp_path, "-n", "3000", "--vs-raw", "--vs-limit", "--loop", "both",
                             "--repeat", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    keys = {(r["impl"], r["loop"]) for r in report["results"]}
    assert keys == {("ours", "asyncio"), ("ours", "uvloop"), ("raw", "asyncio"), ("raw", "uvloop"),
                    ("limit", None)}
    for res in report["results"]:
        assert res["ok"] and res["completed"] == 3000 and res["repeat"] == 2
        assert len(res["calls_per_s_all"]) == 2
        loops = {p["loop"] for p in res["processes"]}
        if res["impl"] == "limit":
            assert [p["role"] for p in res["processes"]] == ["broker", "worker", "client"]
            assert loops == {"none (libzmq loops)"}
        elif res["loop"] == "uvloop":
            assert loops == {"uvloop.Loop"}, loops
        else:
            assert all(lp.startswith("asyncio.") for lp in loops), loops
    ratios = report["ratios"]
    # Ratios only between runs on the same loop; the limit row as a share.
    assert set(ratios) == {
        "ours / raw on asyncio (calls/s)", "ours / raw on uvloop (calls/s)",
        "ours on asyncio as % of the limit (calls/s)", "ours on uvloop as % of the limit (calls/s)",
    }
    by = {(r["impl"], r["loop"]): r for r in report["results"]}
    expected = by[("ours", "uvloop")]["calls_per_s"] / by[("raw", "uvloop")]["calls_per_s"]
    assert ratios["ours / raw on uvloop (calls/s)"] == pytest.approx(expected)
    # Progress is visible when the output is piped: one line per 10% of each run.
    assert proc.stderr.count("100%") >= 5, proc.stderr


@pytest.mark.parametrize("flag", ["--vs-limit", "--vs-floor"])
def test_limit_and_floor_rows_reject_stream_mode(tmp_path, flag):
    proc, report = run_bench(tmp_path, "-n", "10", flag, "--mode", "stream", timeout=60)
    assert proc.returncode == 2 and report is None
    assert "limit and floor rows need" in proc.stderr


def test_floor_row_rejects_the_gate_layout(tmp_path):
    proc, report = run_bench(tmp_path, "-n", "10", "--vs-floor", "--layout", "gate", timeout=60)
    assert proc.returncode == 2 and report is None
    assert "--layout gate runs our roles only" in proc.stderr


def test_limit_frames_needs_a_limit_or_floor_row(tmp_path):
    proc, report = run_bench(tmp_path, "-n", "10", "--limit-frames", "protocol", timeout=60)
    assert proc.returncode == 2 and report is None
    assert "--limit-frames goes with the limit or floor row" in proc.stderr


def test_limit_and_floor_rows_with_the_protocols_frames(tmp_path):
    proc, report = run_bench(tmp_path, "-n", "2000", "--impl", "limit", "--vs-floor", "--limit-frames",
                             "protocol")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["config"]["limit_frames"] == "protocol" and "limit-frames=protocol" in proc.stdout
    by = {r["impl"]: r for r in report["results"]}
    assert set(by) == {"limit", "floor"}
    # a reply counts only when it comes back with all 7 frames and its counter
    assert all(r["ok"] and r["completed"] == 2000 and r["errors"] == 0 for r in by.values())
    assert report["ratios"]["floor as % of the limit (calls/s)"] == pytest.approx(
        by["floor"]["calls_per_s"] / by["limit"]["calls_per_s"])


def test_limit_frames_both_runs_each_row_with_either_message(tmp_path):
    proc, report = run_bench(tmp_path, "-n", "2000", "--vs-limit", "--vs-floor", "--limit-frames", "both",
                             "--loop", "asyncio")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by = {r["impl"]: r for r in report["results"]}
    assert set(by) == {"ours", "limit", "limit:7f", "floor", "floor:7f"}
    assert all(r["ok"] and r["completed"] == 2000 for r in by.values())
    assert [p["role"] for p in by["floor:7f"]["processes"]] == ["broker", "worker", "client"]
    ratios = report["ratios"]
    assert ratios["floor:7f as % of the limit:7f (calls/s)"] == pytest.approx(
        by["floor:7f"]["calls_per_s"] / by["limit:7f"]["calls_per_s"])
    assert ratios["ours on asyncio as % of the limit:7f (calls/s)"] == pytest.approx(
        by["ours"]["calls_per_s"] / by["limit:7f"]["calls_per_s"])
    assert {"floor as % of the limit (calls/s)", "ours on asyncio as % of the limit (calls/s)",
            "ours on asyncio as % of the floor (calls/s)",
            "ours on asyncio as % of the floor:7f (calls/s)"} <= set(ratios)


@pytest.mark.slow
def test_bench_floor_row_beside_the_limit_with_fan_out(tmp_path):
    # 20,000 calls: the limit and floor rows' 1x1 runs then last long enough to show CPU time
    # in clock ticks (10 ms each); with 3,000 they take about 10 ms and may show none
    n = 20000
    proc, report = run_bench(tmp_path, "-n", str(n), "--vs-limit", "--vs-floor", "--clients", "2",
                             "--workers", "2", "--vs-1x1", "--loop", "asyncio")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by = {(r["impl"], r["loop"]): r for r in report["results"]}
    assert set(by) == {("ours", "asyncio"), ("ours@1x1", "asyncio"), ("limit", None), ("limit@1x1", None),
                       ("floor", None), ("floor@1x1", None)}
    for (impl, _), res in by.items():
        assert res["ok"] and res["completed"] == n, res
        roles = [p["role"] for p in res["processes"]]
        wide = not impl.endswith("@1x1")
        assert roles == (["broker", "worker1", "worker2", "client1", "client2"] if wide
                         else ["broker", "worker", "client"])
        if impl.startswith("floor"):
            # the broker and the worker are Python loops: they spend CPU on every message
            assert {p["loop"] for p in res["processes"]} == {"none (Python loops)"}
            assert all(p["impl"] == "floor" for p in res["processes"])
    ratios = report["ratios"]
    floor, limit, ours = by[("floor", None)], by[("limit", None)], by[("ours", "asyncio")]
    assert ratios["floor as % of the limit (calls/s)"] == pytest.approx(
        floor["calls_per_s"] / limit["calls_per_s"])
    assert ratios["ours on asyncio as % of the floor (calls/s)"] == pytest.approx(
        ours["calls_per_s"] / floor["calls_per_s"])
    from gaterpc.bench.echo import usable_cores
    share = ratios[f"floor 2x2 as % of what its 1x1 CPU cost allows on {usable_cores()} cores"]
    assert share == pytest.approx(floor["calls_per_s"] * by[("floor@1x1", None)]["cpu_us_per_call"]
                                  / (usable_cores() * 1e6))
    assert "floor " in proc.stdout and "none (Python loops)" in proc.stdout


@pytest.mark.slow
def test_bench_several_clients_report_fairness(tmp_path):
    proc, report = run_bench(tmp_path, "-n", "3000", "--clients", "3", "--workers", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (res,) = report["results"]
    assert res["completed"] == 3000 and res["errors"] == 0 and res["mismatches"] == 0
    assert [p["role"] for p in res["processes"]] == ["broker", "worker1", "worker2", "client1", "client2",
                                                     "client3"]
    assert len(res["client_rates"]) == 3 and all(r > 0 for r in res["client_rates"])
    assert res["fairness"] == pytest.approx(min(res["client_rates"]) / max(res["client_rates"]))
    assert "fairness" in proc.stdout


@pytest.mark.slow
def test_bench_fan_out_against_one_by_one_in_the_same_run(tmp_path):
    proc, report = run_bench(tmp_path, "-n", "5000", "--clients", "2", "--workers", "2", "--vs-1x1",
                             "--loop", "asyncio")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by = {r["impl"]: r for r in report["results"]}
    assert set(by) == {"ours", "ours@1x1"}
    assert [p["role"] for p in by["ours"]["processes"]] == ["broker", "worker1", "worker2", "client1",
                                                           "client2"]
    assert [p["role"] for p in by["ours@1x1"]["processes"]] == ["broker", "worker", "client"]
    for res in by.values():
        assert res["ok"] and res["completed"] == 5000 and res["errors"] == 0 and res["mismatches"] == 0
    wide, one = by["ours"], by["ours@1x1"]
    ratios = report["ratios"]
    from gaterpc.bench.echo import usable_cores
    cores = usable_cores()
    assert ratios["ours 2x2 / 1x1 on asyncio (calls/s)"] == pytest.approx(
        wide["calls_per_s"] / one["calls_per_s"])
    assert ratios["ours 2x2 / 1x1 on asyncio (CPU us per call)"] == pytest.approx(
        wide["cpu_us_per_call"] / one["cpu_us_per_call"])
    share = ratios[f"ours 2x2 on asyncio as % of what its 1x1 CPU cost allows on {cores} cores"]
    assert share == pytest.approx(wide["calls_per_s"] * one["cpu_us_per_call"] / (cores * 1e6))
    busy = ratios[f"ours 2x2 on asyncio: cores kept busy, as % of {cores}"]
    assert busy == pytest.approx(wide["calls_per_s"] * wide["cpu_us_per_call"] / (cores * 1e6))
    assert "what its 1x1 CPU cost allows" in proc.stdout


def test_scale_ratios_name_a_1x1_run_too_short_for_its_cpu_time():
    """A 1x1 run whose CPU time stayed under one clock tick: its calls/s ratio is given, the
    CPU-based share is "n/a" with the reason (not "a run failed"), and nothing divides by zero."""
    import argparse
    from gaterpc.bench.echo import _scale_ratios, usable_cores
    cores = usable_cores()
    run = {"ok": True, "calls_per_s": 100000.0, "cpu_us_per_call": 8.0}
    by_key = {("limit", None): dict(run, calls_per_s=150000.0),
              ("limit@1x1", None): dict(run, cpu_us_per_call=None),
              ("ours", "asyncio"): dict(run, calls_per_s=60000.0, cpu_us_per_call=30.0),
              ("ours@1x1", "asyncio"): dict(run, calls_per_s=50000.0, cpu_us_per_call=20.0)}
    out = _scale_ratios(by_key, argparse.Namespace(clients=2, workers=2))
    assert out["limit 2x2 / 1x1 (calls/s)"] == pytest.approx(1.5)
    share = out[f"limit 2x2 as % of what its 1x1 CPU cost allows on {cores} cores"]
    assert isinstance(share, str) and "clock tick" in share and "raise -n" in share
    assert "limit 2x2 / 1x1 (CPU us per call)" not in out
    assert out[f"ours 2x2 on asyncio as % of what its 1x1 CPU cost allows on {cores} cores"] == \
        pytest.approx(60000.0 * 20.0 / (cores * 1e6))
    by_key[("ours@1x1", "asyncio")]["ok"] = False
    assert _scale_ratios(by_key, argparse.Namespace(clients=2, workers=2))[
        "ours 2x2 / 1x1 on asyncio"] == "n/a (a run failed)"


@pytest.mark.parametrize("args", [("--vs-1x1",), ("--vs-1x1", "--clients", "2", "--mode", "latency"),
                                  ("--vs-1x1", "--workers", "2", "--layout", "2proc")])
def test_one_by_one_needs_a_fan_out(tmp_path, args):
    proc, _ = run_bench(tmp_path, "-n", "10", *args, timeout=60)
    assert proc.returncode == 2 and "--vs-1x1" in proc.stderr


@pytest.mark.slow
def test_bench_queue_mode_reports_broker_memory(tmp_path):
    proc, report = run_bench(tmp_path, "-n", "3000", "--mode", "queue")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (res,) = report["results"]
    q = res["queued"]
    assert res["completed"] == 3000
    assert q["broker_rss_queued_mib"] >= q["broker_rss_before_mib"] > 0
    assert q["bytes_per_queued_request"] is not None
    assert "bytes per queued request" in proc.stdout


def test_queue_mode_is_ours_only(tmp_path):
    proc, _ = run_bench(tmp_path, "-n", "10", "--mode", "queue", "--vs-raw", timeout=60)
    assert proc.returncode == 2 and "queue" in proc.stderr


@pytest.mark.slow
def test_bench_hol_mode_reports_both_latencies(tmp_path):
    proc, report = run_bench(tmp_path, "-n", "400", "--mode", "hol")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (res,) = report["results"]
    h = res["hol"]
    assert res["completed"] == 400 and res["errors"] == 0
    assert h["queued_slow_calls"] == 1000
    assert h["p50_unloaded"] > 0 and h["p50_loaded"] > 0
    assert h["ratio"] == pytest.approx(h["p50_loaded"] / h["p50_unloaded"])


@pytest.mark.slow
def test_bench_gate_layout_against_direct(tmp_path):
    proc, report = run_bench(tmp_path, "-n", "2000", "--layout", "gate", "--vs-direct")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by = {r["impl"]: r for r in report["results"]}
    assert [p["role"] for p in by["ours"]["processes"]] == ["gate-b", "gate-a", "worker", "client"]
    assert by["ours"]["layout"] == "gate" and by["direct"]["layout"] == "3proc"
    for res in by.values():
        assert res["completed"] == 2000 and res["errors"] == 0 and res["mismatches"] == 0
    assert report["ratios"]["ours / direct on uvloop (calls/s)"] == pytest.approx(
        by["ours"]["calls_per_s"] / by["direct"]["calls_per_s"])


def test_bench_subcommands_are_reachable():
    for sub, word in (("soak", "--client-churns"), ("fuzz", "--cases"), ("hugedata", "--vs-original"),
                      ("codec", "--twins"), ("speedups", "--quick")):
        proc = subprocess.run([sys.executable, "-m", "gaterpc", "bench", sub, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert word in proc.stdout


@pytest.mark.slow
def test_soak_entry_runs_with_churn():
    """The soak benchmark end to end on a small run: every call answered, churn done, RSS reported."""
    backend = "pure" if os.environ.get("GATERPC_NO_EXTENSIONS") else "compiled"
    proc = subprocess.run(
        [sys.executable, "-m", "gaterpc.bench.soak", "--calls", "300", "--window", "50", "--client-churns", "2",
         "--worker-churns", "1", "--workers", "2", "--worker-hosts", "1", "--heartbeat", "300",
         "--timeout", "90", "--backend", backend],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "100%  calls 300" in proc.stdout
    assert "done: 300 calls" in proc.stdout and "worker churns 1" in proc.stdout
    assert "broker RSS after warm-up" in proc.stdout


@pytest.mark.slow
def test_bench_latency_vs_raw_adds_the_raw_sync_row(tmp_path):
    """--mode latency --vs-raw: a raw synchronous pyzmq row (no event loop) next to the asyncio ones."""
    proc, report = run_bench(tmp_path, "-n", "300", "--mode", "latency", "--vs-raw", "--loop", "asyncio")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    keys = {(r["impl"], r["loop"]) for r in report["results"]}
    assert keys == {("ours", "asyncio"), ("raw", "asyncio"), ("raw-sync", None)}
    res = check_report(proc, report, "raw-sync", "3proc", n=300)
    assert res["window"] == 1 and res["mode"] == "latency"
    assert 0 < res["latency_p50_ms"] < 1000  # one call at a time: milliseconds, not seconds
    assert {p["loop"] for p in res["processes"]} == {"sync (zmq.Poller)"}
    assert {p["impl"] for p in res["processes"]} == {"raw-sync"}
    # CPU per role is reported (table and JSON) like for every other row
    assert all(p["cpu_s"] is not None for p in res["processes"])
    for role in ("broker", "worker", "client"):
        assert any(line.split()[:2] == ["raw-sync", role] for line in proc.stdout.splitlines()), role
    by = {(r["impl"], r["loop"]): r for r in report["results"]}
    name = "ours on asyncio / raw-sync (p50 latency)"
    assert report["ratios"][name] == pytest.approx(
        by[("ours", "asyncio")]["latency_p50_ms"] / res["latency_p50_ms"])
    assert name in proc.stdout


@pytest.mark.slow
def test_bench_raw_sync_one_process_and_wrong_reply(tmp_path):
    """raw-sync alone: in one process (client waits in the shared poll loop) and its reply checks."""
    proc, report = run_bench(tmp_path, "-n", "500", "--impl", "raw-sync", "--layout", "inproc")
    res = check_report(proc, report, "raw-sync", "inproc", n=500)
    assert res["loop"] is None
    proc, report = run_bench(tmp_path, "-n", "300", "--impl", "raw-sync", "--mode", "latency",
                             "--inject-mismatch", "7")
    assert proc.returncode != 0
    (res,) = report["results"]
    assert res["ok"] is False and res["mismatches"] == 1 and res["completed"] == 300


def test_raw_sync_is_an_impl_choice():
    """``--impl raw-sync`` measures the synchronous row alone."""
    from gaterpc.bench.report import IMPLS
    assert "raw-sync" in IMPLS
    opts = build_parser().parse_args(["--impl", "raw-sync", "--mode", "latency"])
    assert opts.impl == "raw-sync"


@pytest.mark.parametrize("bad", ["abc", "1000,-5", "1e3", "0", ","])
def test_hugedata_bench_refuses_a_bad_blksize(bad):
    proc = subprocess.run([sys.executable, "-m", "gaterpc", "bench", "hugedata", "--blksize", bad],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--blksize" in proc.stderr and "Traceback" not in proc.stderr


def run_hugedata_bench(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, list]:
    """``gaterpc bench hugedata --sizes 1 --timeout 60 ARGS --json FILE``: the process and the rows."""
    out = tmp_path / "huge.json"
    proc = subprocess.run(
        [sys.executable, "-m", "gaterpc", "bench", "hugedata", "--sizes", "1", "--timeout", "60", *args,
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=200,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(out.read_text())


def check_role_figures(r: dict) -> None:
    """Each role's peak RSS, CPU time and page faults are there and make sense."""
    for role in ("broker", "worker", "client"):
        # peak vs an earlier current RSS: the kernel counts RSS per thread, so allow a few pages
        assert r[f"rss_{role}"] >= r[f"base_{role}"] - 1.0 and r[f"base_{role}"] > 0
        assert r[f"cpu_{role}"] is not None and r[f"cpu_{role}"] >= 0
        assert isinstance(r[f"faults_{role}"], int) and r[f"faults_{role}"] >= 0


@pytest.mark.slow
def test_hugedata_bench_reports_rate_cpu_and_rss(tmp_path):
    """``gaterpc bench hugedata``: one small transfer per codec and blksize, MB/s, CPU and RSS per role."""
    proc, rows = run_hugedata_bench(tmp_path, "--modules", "lz4,gzip", "--blksize", "default,262144")
    assert [(r["module"], r["blksize"]) for r in rows] == [
        ("lz4", "default"), ("lz4", 262144), ("gzip", "default"), ("gzip", 262144)]
    for r in rows:
        assert r["ok"] is True and r["impl"] == "ours" and r["size_mib"] == 1.0 and r["runs"] == 1
        assert r["mb_s"] == pytest.approx(1.0 / r["elapsed"])
        check_role_figures(r)
        # the client's result is fresh memory: its first touches are page faults
        assert r["faults_client"] > 0
        # every role did its part (the broker's and the worker's CPU time are taken
        # between a mark before the call and one after it)
        assert r["cpu_worker"] > 0 and r["cpu_client"] > 0 and r["cpu_broker"] > 0
        assert r["max_growth_ratio"] == pytest.approx(max(r[f"rss_{x}"] - r[f"base_{x}"]
                                                          for x in ("broker", "worker", "client")))
    table = proc.stdout.splitlines()
    assert "CPU ms broker" in table[0] and "growth/size" in table[0] and "faults k b/w/c" in table[0]
    assert sum(1 for line in table if line.startswith("ours") and line.rstrip().endswith("ok")) == 4


@pytest.mark.slow
def test_hugedata_bench_several_transfers_per_set_of_processes(tmp_path):
    """--per-process 3: three transfers in turn in one set of processes, each timed and checked."""
    proc, (r,) = run_hugedata_bench(tmp_path, "--modules", "lz4", "--per-process", "3")
    # every transfer came back whole (the client checks size and SHA-256 of each payload)
    assert r["ok"] is True and r["per_process"] == 3 and r["runs"] == 3
    assert len(r["mb_s_runs"]) == 3 and all(x and x > 0 for x in r["mb_s_runs"])
    assert len(r["mb_s_first"]) == 1 and r["mb_s_first"][0] in r["mb_s_runs"]
    assert r["transfer"] in (0, 1, 2) and r["mb_s"] == sorted(r["mb_s_runs"])[1]
    check_role_figures(r)
    assert r["cpu_broker"] > 0 and r["cpu_worker"] > 0 and r["cpu_client"] > 0
    # every transfer in the order run: the first in fresh processes, each with the client's
    # RSS before it and its peak after it
    assert [t["transfer"] for t in r["transfers"]] == [0, 1, 2]
    assert sorted(t["mb_s"] for t in r["transfers"]) == sorted(r["mb_s_runs"])
    for t in r["transfers"]:
        assert t["ok"] is True and t["faults_client"] >= 0
        assert 0 < t["rss_client_before"] <= t["peak_client_so_far"] + 1.0
    assert r["transfers"][0]["rss_client_before"] == pytest.approx(r["base_client"])
    assert "makes 3 transfers in turn" in proc.stdout


@pytest.mark.slow
def test_hugedata_bench_flow_control_off_and_on_with_a_busy_client(tmp_path):
    """--window 0,1048576 --client-stall: a row per window, each transfer whole despite the stall."""
    proc, rows = run_hugedata_bench(tmp_path, "--modules", "lz4", "--window", "0,1048576",
                                    "--client-stall", "0.2")
    assert [r["window"] for r in rows] == [0, 1048576]
    for r in rows:
        assert r["ok"] is True
        check_role_figures(r)
        assert r["elapsed"] >= 0.2  # the client's loop was blocked for 0.2 s inside the call
    lines = [line.split() for line in proc.stdout.splitlines() if line.startswith("ours")]
    assert [line[4] for line in lines] == ["off", "1048576"]


@pytest.mark.parametrize("bad", ["-1", "1000", "x", ""])
def test_hugedata_bench_refuses_a_bad_window(bad):
    proc = subprocess.run([sys.executable, "-m", "gaterpc", "bench", "hugedata", "--window", bad],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--window" in proc.stderr and "Traceback" not in proc.stderr


def test_hugedata_bench_refuses_a_bad_per_process():
    proc = subprocess.run([sys.executable, "-m", "gaterpc", "bench", "hugedata", "--per-process", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--per-process" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bench_vs_metrics_runs_both_rows(tmp_path):
    """--vs-metrics: the same run with every role serving metrics, scraped by another process."""
    proc, report = run_bench(tmp_path, "-n", "3000", "--vs-metrics", "--metrics", "0.2", "--loop", "asyncio")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {r["impl"] for r in report["results"]} == {"ours", "metrics"}
    for impl in ("ours", "metrics"):
        res = check_report(proc, report, impl, "3proc", n=3000)
        assert res["calls_per_s"] > 0
    assert "ours / metrics on asyncio (calls/s)" in report["ratios"]


# --------------------------------------------------------------------------- --sched

needs_batch = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux only")


@pytest.mark.slow
@needs_batch
def test_bench_sched_batch_every_process(tmp_path):
    proc, report = run_bench(tmp_path, "-n", "400", "--sched", "batch", "--clients", "2", "--workers", "2",
                             "--vs-limit", "--loop", "asyncio")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["config"]["sched"] == "batch" and "sched=batch" in proc.stdout
    assert {r["impl"] for r in report["results"]} == {"ours", "limit"}
    for res in report["results"]:
        assert res["ok"] and res["completed"] == 400
        assert res["sched"] == "batch" and res["sched_verified"] is True
        # what the harness read from every thread of every role while it ran
        assert [p["sched"] for p in res["processes"]] == ["batch"] * len(res["processes"])
        assert len(res["processes"]) == 5  # broker, 2 workers, 2 clients


@pytest.mark.slow
@needs_batch
def test_bench_sched_both_sets_each_policy_and_adds_ratios(tmp_path):
    from gaterpc.sched import set_policy

    # The harness itself runs under batch: the normal rows show it sets normal, not inherits it.
    # (ZeroMQ's I/O threads of ours kept under the system's policy: "auto" may move them to batch)
    proc, report = run_bench(tmp_path, "-n", "300", "--sched", "both", "--mode", "latency", "--vs-raw",
                             "--loop", "asyncio", "--io-threads", "normal", preexec_fn=lambda: set_policy("batch"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    keys = {(r["impl"], r["loop"], r["sched"]) for r in report["results"]}
    assert keys == {(impl, loop, sched) for impl, loop in (("ours", "asyncio"), ("raw", "asyncio"),
                                                          ("raw-sync", None)) for sched in ("normal", "batch")}
    for res in report["results"]:
        assert res["ok"] and res["completed"] == 300
        assert {p["sched"] for p in res["processes"]} == {res["sched"]}
    ratios = report["ratios"]
    by = {(r["impl"], r["sched"]): r for r in report["results"]}
    assert ratios["ours on asyncio: batch / normal (calls/s)"] == pytest.approx(
        by[("ours", "batch")]["calls_per_s"] / by[("ours", "normal")]["calls_per_s"])
    assert ratios["raw-sync: batch / normal (p50 latency)"] == pytest.approx(
        by[("raw-sync", "batch")]["latency_p50_ms"] / by[("raw-sync", "normal")]["latency_p50_ms"])
    # the like-for-like ratios, once per policy
    assert "normal: ours / raw on asyncio (calls/s)" in ratios and "batch: ours / raw on asyncio (calls/s)" in ratios


@needs_batch
def test_harness_fails_a_role_whose_threads_left_the_policy(tmp_path):
    import time

    from gaterpc.bench.procs import BenchError, Child, stop_all

    # A role that starts a thread, then moves its main thread back to normal (as a library might).
    code = ("import os, sys, threading, time\n"
            "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "if sys.argv[1] == 'drift': os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))\n"
            "print('{\"ready\": 1}', flush=True)\n"
            "sys.stdin.readline()\n")
    children = []
    try:
        for how in ("stay", "drift"):
            children.append(Child(how, [sys.executable, "-c", code, how], dict(os.environ), str(tmp_path),
                                  tmp_path / f"{how}.log", sched="batch"))
        for c in children:
            c.expect("ready", time.monotonic() + 30)
        stay, drift = children
        stay.check_sched()
        assert stay.sched_seen == {"batch"}
        with pytest.raises(BenchError, match=r"batch scheduling policy, but thread \d+: normal"):
            drift.check_sched()
        assert drift.sched_seen == {"batch", "normal"}  # its other thread kept batch
    finally:
        stop_all(children)


def test_sched_is_checked_at_parse_time(tmp_path):
    proc, _ = run_bench(tmp_path, "-n", "10", "--sched", "fifo", timeout=60)
    assert proc.returncode == 2 and "--sched" in proc.stderr


@pytest.mark.skipif(not HAS_SCHEDSTAT, reason="this kernel keeps no per-thread run-queue statistics")
def test_proc_wait_grows_while_busy_processes_outnumber_the_cores():
    from gaterpc.bench.echo import usable_cores
    from gaterpc.bench.procs import _proc_wait

    # One more busy process than there are cores (3 s each): together they must wait for one.
    # Each prints when its loop is over, then stays alive until its stdin closes.
    spin = "import sys, time\nend = time.monotonic() + 3\nwhile time.monotonic() < end:\n    pass\n" \
           "sys.stdout.write('done')\nsys.stdout.flush()\nsys.stdin.readline()\n"
    hogs = [subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            for _ in range(usable_cores() + 1)]
    try:
        before = [_proc_wait(h.pid) for h in hogs]
        assert all(isinstance(w, float) and w >= 0 for w in before)
        for h in hogs:
            assert h.stdout.read(4) == b"done"
        after = [_proc_wait(h.pid) for h in hogs]
        assert all(isinstance(a, float) for a in after)
        assert sum(a - b for a, b in zip(after, before)) > 0
    finally:
        for h in hogs:  # ended by pid
            if h.poll() is None:
                h.kill()
            h.wait(timeout=10)
            h.stdin.close()
            h.stdout.close()
    # a process that is gone gives no figure rather than a wrong one
    assert all(_proc_wait(h.pid) is None for h in hogs)
