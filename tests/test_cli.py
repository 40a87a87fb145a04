"""The ``gaterpc`` command line, with real processes (each ended by its pid)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import gaterpc
from tests.clitools import (  # noqa: F401 (fixtures)
    CALC_MODULE, HEARTBEAT, Procs, free_port, gaterpc_cmd, procs, short_tmp, stop, wait_service,
)


def start_cluster(procs, d, broker_extra=(), worker_extra=()):
    Path(d, "calcmod.py").write_text(CALC_MODULE)
    front = f"ipc://{d}/front"
    back = f"ipc://{d}/back"
    broker = procs.start(gaterpc_cmd("broker", "--frontend", front, "--backend", back,
                                     "--heartbeat", HEARTBEAT, *broker_extra))
    worker = procs.start(gaterpc_cmd("worker", "calcmod:Calc", "--backend", back, "--heartbeat", HEARTBEAT,
                                     *worker_extra))
    return front, broker, worker


@pytest.fixture(scope="module")
def cluster():
    d = tempfile.mkdtemp(prefix="gcli-", dir="/tmp")
    ps = Procs(d)
    try:
        front, broker, worker = start_cluster(ps, d)
        wait_service(ps, front, "Calc")
        yield ps, front
    finally:
        ps.close()
        shutil.rmtree(d, ignore_errors=True)


def call(cluster, *args, timeout=60):
    ps, front = cluster
    return ps.run(gaterpc_cmd("call", front, *args), timeout=timeout)


def test_version(procs):
    p = procs.run(gaterpc_cmd("--version"))
    assert p.returncode == 0
    assert p.out.strip() == f"gaterpc {gaterpc.__version__}"
    script = Path(sys.executable).parent / "gaterpc"   # the console script of this environment
    if script.exists():
        p = procs.run([str(script), "--version"])
        assert (p.returncode, p.out.strip()) == (0, f"gaterpc {gaterpc.__version__}")


def test_call_json_and_string_args(cluster):
    p = call(cluster, "Calc.add", "2", "3")
    assert (p.returncode, p.out) == (0, "5\n"), p.err
    p = call(cluster, "Calc.echo", "1", "abc", '{"x": [1, null]}', '"7"', "-k", "n=2", "-k", "s=hello")
    assert p.returncode == 0, p.err
    assert json.loads(p.out) == [[1, "abc", {"x": [1, None]}, "7"], {"n": 2, "s": "hello"}]


def test_call_bytes_result_is_base64(cluster):
    p = call(cluster, "Calc.blob")
    assert p.returncode == 0, p.err
    assert json.loads(p.out) == {"$bytes": "AAH/"}


def test_stream_prints_one_line_per_item(cluster):
    ps, front = cluster
    p = ps.start(gaterpc_cmd("call", front, "Calc.count", "4"))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out.splitlines() == ["0", "1", "2", "3"]


def test_remote_error_exits_1(cluster):
    p = call(cluster, "Calc.fail")
    assert p.returncode == 1
    assert "ValueError" in p.err and "bad thing" in p.err
    assert p.out == ""


def test_unknown_service_exits_1(cluster):
    p = call(cluster, "Nope.add", "1")
    assert p.returncode == 1
    assert "Nope" in p.err


@pytest.mark.parametrize("args, text", [
    (["call"], "required"),
    (["call", "ipc:///tmp/x", "nodot"], "SERVICE.METHOD"),
    (["call", "localhost:5555", "A.b"], "tcp://HOST:PORT"),
    (["call", "ipc:///tmp/x", "A.b", "-k", "novalue"], "NAME=VALUE"),
    (["call", "ipc:///tmp/x", "A.b", "--timeout", "soon"], "invalid float"),
    (["nosuchcommand"], "invalid choice"),
    (["worker", "calcmod", "--backend", "ipc:///tmp/x"], "MODULE:CLASS"),
    (["broker", "--frontend", "ipc:///tmp/f"], "--backend"),
    (["broker", "--frontend", "ipc:///tmp/f", "--backend", "ipc:///tmp/b", "--sched", "fast"], "invalid choice"),
    (["worker", "calcmod:Calc", "--backend", "ipc:///tmp/b", "--sched", "idle"], "invalid choice"),
])
def test_usage_errors_exit_2(procs, args, text):
    p = procs.run(gaterpc_cmd(*args))
    assert p.returncode == 2, (p.out, p.err)
    assert text in p.err


def test_unreachable_broker_exits_3_in_bounded_time(procs):
    addr = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    p = procs.run(gaterpc_cmd("call", addr, "Calc.add", "1", "2", "--timeout", "2"))
    elapsed = time.monotonic() - t0
    assert p.returncode == 3, p.err
    assert addr in p.err and "2 s" in p.err
    assert elapsed < 20  # 2 s of waiting plus interpreter start on a loaded machine


def test_info_json_shape(cluster):
    ps, front = cluster
    p = ps.run(gaterpc_cmd("info", front, "--json"))
    assert p.returncode == 0, p.err
    data = json.loads(p.out)
    assert set(data) >= {"services", "broker", "internal_service"}
    assert "Calc" in data["services"]
    calc = data["services"]["Calc"]
    # our broker reports its figures per service (the broker's internal "stats")
    assert calc["workers"] == 1
    for key in ("in_flight", "waiting", "requests", "served", "errors", "free_capacity"):
        assert isinstance(calc[key], int), key
    assert calc["description"]
    assert data["internal_service"] not in data["services"]
    assert data["broker"]["address"] == front and len(data["broker"]["id"]) == 32
    p = ps.run(gaterpc_cmd("info", front))
    assert p.returncode == 0 and "Calc" in p.out


def test_sigterm_worker_answers_call_in_flight_and_exits_0(procs, short_tmp):
    front, broker, worker = start_cluster(procs, short_tmp, worker_extra=("--grace", "20"))
    wait_service(procs, front, "Calc")
    marker = Path(short_tmp, "started")
    caller = procs.start(gaterpc_cmd("call", front, "Calc.slow", "1.5", str(marker), "--timeout", "30"))
    end = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < end and caller.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), caller.communicate(timeout=30)
    rc, _, werr = stop(worker)
    out, err = caller.communicate(timeout=30)
    assert (caller.returncode, out) == (0, '"done"\n'), err
    assert rc == 0, werr
    # the broker forgot the worker at once (DISCONNECT), then exits 0 on SIGTERM too
    p = procs.run(gaterpc_cmd("call", front, "Calc.add", "1", "2", "--timeout", "5"))
    assert p.returncode == 1, (p.out, p.err)
    rc, _, berr = stop(broker)
    assert rc == 0, berr


def test_sigterm_worker_refuses_new_calls_while_draining(procs, short_tmp):
    front, broker, worker = start_cluster(procs, short_tmp, worker_extra=("--grace", "20"))
    wait_service(procs, front, "Calc")
    marker = Path(short_tmp, "started")
    caller = procs.start(gaterpc_cmd("call", front, "Calc.slow", "3", str(marker), "--timeout", "30"))
    end = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < end and caller.poll() is None:
        time.sleep(0.05)
    assert marker.exists()
    os.kill(worker.pid, signal.SIGTERM)
    time.sleep(0.5)
    p = procs.run(gaterpc_cmd("call", front, "Calc.add", "1", "2", "--timeout", "10"))
    assert p.returncode == 1 and "shutting down" in p.err, (p.out, p.err)
    out, err = caller.communicate(timeout=30)
    assert (caller.returncode, out) == (0, '"done"\n'), err
    assert worker.wait(timeout=30) == 0
    assert stop(broker)[0] == 0


def test_broker_logs_json_lines_and_exits_0_on_sigterm(procs, short_tmp):
    front, back = f"ipc://{short_tmp}/f", f"ipc://{short_tmp}/b"
    broker = procs.start(gaterpc_cmd("broker", "--frontend", front, "--backend", back, "--log-format", "json"))
    p = procs.run(gaterpc_cmd("info", front, "--json", "--timeout", "20"))
    assert p.returncode == 0, p.err
    assert json.loads(p.out)["services"] == {}
    rc, out, err = stop(broker)
    assert rc == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any("serving" in rec["message"] for rec in lines)
    assert any("SIGTERM" in rec["message"] for rec in lines)
    assert all({"time", "level", "logger", "message"} <= set(rec) for rec in lines)


def test_zap_plain_right_and_wrong_credentials(procs, short_tmp):
    users = Path(short_tmp, "users.txt")
    users.write_text("# gaterpc PLAIN users\nalice:secret\n\nbob:hunter2\n")
    front, broker, worker = start_cluster(procs, short_tmp, broker_extra=("--zap-plain", str(users)),
                                          worker_extra=("--plain", "bob:hunter2"))
    wait_service(procs, front, "Calc", extra=("--plain", "alice:secret"))
    p = procs.run(gaterpc_cmd("call", front, "Calc.add", "20", "22", "--plain", "alice:secret"))
    assert (p.returncode, p.out) == (0, "42\n"), p.err
    p = procs.run(gaterpc_cmd("call", front, "Calc.add", "20", "22", "--plain", "alice:wrong", "--timeout", "10"))
    assert p.returncode == 1, (p.out, p.err)
    assert "PermissionError" in p.err or "authentication" in p.err
    assert p.out == ""
    assert stop(worker)[0] == 0
    assert stop(broker)[0] == 0


def test_zap_plain_bad_file_is_a_usage_error(procs, short_tmp):
    bad = Path(short_tmp, "users.txt")
    bad.write_text("alice\n")
    p = procs.run(gaterpc_cmd("broker", "--frontend", f"ipc://{short_tmp}/f", "--backend",
                              f"ipc://{short_tmp}/b", "--zap-plain", str(bad)))
    assert p.returncode == 2 and "user:password" in p.err


def test_bench_still_works(procs):
    p = procs.run(gaterpc_cmd("bench", "--help"))
    assert p.returncode == 0 and "usage: gaterpc bench" in p.out


def _scrape_until(url, needle, deadline=20.0):
    import urllib.error
    import urllib.request

    end = time.monotonic() + deadline
    text = ""
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode()
            if needle in text:
                return text
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not served at {url} within {deadline} s; last:\n{text[-2000:]}")


def test_metrics_endpoints_of_broker_and_worker(procs, short_tmp):
    bport, wport = free_port(), free_port()
    front, broker, worker = start_cluster(procs, short_tmp, broker_extra=("--metrics", f"127.0.0.1:{bport}"),
                                          worker_extra=("--metrics", f"127.0.0.1:{wport}"))
    wait_service(procs, front, "Calc")
    p = procs.run(gaterpc_cmd("call", front, "Calc.add", "1", "2"))
    assert p.returncode == 0 and p.out.strip() == "3", p.err
    text = _scrape_until(f"http://127.0.0.1:{bport}/metrics", 'gaterpc_workers{')
    assert "# TYPE gaterpc_workers gauge" in text
    assert 'service="Calc"' in text
    wtext = _scrape_until(f"http://127.0.0.1:{wport}/metrics", "gaterpc_connected{")
    assert 'role="worker"' in wtext
    assert stop(worker)[0] == 0 and stop(broker)[0] == 0


def test_metrics_address_is_checked(procs, short_tmp):
    p = procs.run(gaterpc_cmd("broker", "--frontend", f"ipc://{short_tmp}/f", "--backend",
                              f"ipc://{short_tmp}/b", "--metrics", "nowhere"), timeout=30)
    assert p.returncode == 2 and "HOST:PORT" in p.err


# --------------------------------------------------------------------------- --sched

def _as_policy(name):
    """A preexec_fn: start the child under ``name``, so that what it ends up with is its own doing."""
    from gaterpc.sched import set_policy

    return lambda: set_policy(name)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux only")
def test_sched_batch_broker_and_workers_really_run_under_it(procs, short_tmp):
    from gaterpc.sched import thread_policies

    Path(short_tmp, "calcmod.py").write_text(CALC_MODULE)
    front, back = f"ipc://{short_tmp}/f", f"ipc://{short_tmp}/b"
    broker = procs.start(gaterpc_cmd("broker", "--frontend", front, "--backend", back, "--heartbeat", HEARTBEAT,
                                     "--sched", "batch"), preexec_fn=_as_policy("normal"))
    worker = procs.start(gaterpc_cmd("worker", "calcmod:Calc", "--backend", back, "--heartbeat", HEARTBEAT,
                                     "--service", "Calc", "--sched", "batch"), preexec_fn=_as_policy("normal"))
    # started under batch, asked for normal: the option sets it either way
    other = procs.start(gaterpc_cmd("worker", "calcmod:Calc", "--backend", back, "--heartbeat", HEARTBEAT,
                                    "--service", "Other", "--sched", "normal"), preexec_fn=_as_policy("batch"))
    wait_service(procs, front, "Calc")
    wait_service(procs, front, "Other")
    p = procs.run(gaterpc_cmd("call", front, "Calc.add", "2", "3"))
    assert (p.returncode, p.out.strip()) == (0, "5"), p.err
    for proc, want in ((broker, "batch"), (worker, "batch"), (other, "normal")):
        seen = thread_policies(proc.pid)  # every thread, libzmq's I/O threads among them
        assert len(seen) >= 2, seen
        assert set(seen.values()) == {want}, (proc.args, seen)
    for proc in (other, worker, broker):
        rc, _, err = stop(proc)
        assert rc == 0, err
    assert "CPU scheduling policy: batch" in err


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux only")
def test_sched_normal_keeps_the_io_threads_under_the_default_policy(monkeypatch):
    """``--sched normal`` turns the adaptive I/O-thread policy off (it would move them to batch
    under contention); no ``--sched`` and ``--sched batch`` leave the setting as it is."""
    import argparse

    from gaterpc import cli
    from gaterpc.global_settings import Settings
    from gaterpc.sched import policy_of, set_policy

    before = policy_of(threading.get_native_id())
    monkeypatch.setattr(Settings, "ZMQ_IO_THREAD_BATCH", "auto")  # restored after the test
    cli._apply_sched(argparse.Namespace(sched=None))
    assert Settings.ZMQ_IO_THREAD_BATCH == "auto"
    try:
        cli._apply_sched(argparse.Namespace(sched="batch"))
        assert Settings.ZMQ_IO_THREAD_BATCH == "auto"  # batch threads are left alone by auto mode
        cli._apply_sched(argparse.Namespace(sched="normal"))
        assert Settings.ZMQ_IO_THREAD_BATCH is False
    finally:
        set_policy(before)


def test_sched_without_the_platform_support_is_a_one_line_usage_error(monkeypatch, capsys, short_tmp):
    from gaterpc.cli import main

    monkeypatch.delattr(os, "SCHED_BATCH", raising=False)
    rc = main(["broker", "--frontend", f"ipc://{short_tmp}/f", "--backend", f"ipc://{short_tmp}/b",
               "--sched", "batch"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "SCHED_BATCH" in err and "--sched batch" in err, err
    assert "Traceback" not in err
