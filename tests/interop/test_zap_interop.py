"""ZAP (PLAIN) across implementations.

* our broker + our ``AsyncZAPService`` with the original's worker and client;
* the original's broker + ``AsyncZAPService`` with our worker and client.

Role scripts live in ``zaproles/`` (public API only, so one script serves
both implementations); they reuse ``roles/common.py`` and the suite's
``runner`` fixture, which ends every process by pid.  Addresses are ``ipc://``
in a tmp dir.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .conftest import ProcessRunner, RoleProcess
from .roles import common

pytestmark = pytest.mark.timeout(120)

ZAPROLES = Path(__file__).resolve().parent / "zaproles"
USER = "zap-user"
PASSWORD = "zap-Pa55-\u54d4\u54d4"


def start(runner: ProcessRunner, role: str, impl: str, *args: str) -> RoleProcess:
    n = next(ProcessRunner._ids)
    name = f"{role}-{impl}-{n}"
    base = runner.workdir / name
    base.mkdir(parents=True, exist_ok=True)
    cmd, env = runner.command(impl, ZAPROLES / f"{role}.py")
    cmd += [*args, "--base-path", str(base / "base")]
    log = base / "stderr.log"
    import subprocess
    with open(log, "wb") as err:
        popen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                 env=env, cwd=str(base), start_new_session=True)
    proc = RoleProcess(name, role, impl, popen, log)
    runner.procs.append(proc)
    proc.wait_ready(30)
    return proc


class Deployment:
    def __init__(self, runner, ipc_dir, broker_impl):
        self.runner = runner
        self.front = f"ipc://{ipc_dir}/front"
        self.back = f"ipc://{ipc_dir}/back"
        self.zap = f"ipc://{ipc_dir}/zap"
        self.broker = start(runner, "zap_broker", broker_impl, "--front", self.front, "--back", self.back,
                            "--zap", self.zap, "--user", USER, "--password", PASSWORD)

    def worker(self, impl, service, password=PASSWORD):
        return start(self.runner, "zap_worker", impl, "--back", self.back, "--service", service,
                     "--user", USER, "--password", password)

    def client(self, impl, service, calls, password=PASSWORD, reply_timeout=3.0):
        proc = start(self.runner, "zap_client", impl, "--front", self.front, "--service", service,
                     "--calls", calls, "--user", USER, "--password", password,
                     "--reply-timeout", str(reply_timeout))
        results = proc.results(60)
        proc.stop()
        return results

    def wait_service(self, impl, service, tries=6):
        """Run ``count`` with good credentials until the worker answers; return its value."""
        last = None
        for _ in range(tries):
            last = self.client(impl, service, "count")
            if all(r["ok"] for r in last):
                return common.decode(last[1]["value"])
            time.sleep(0.3)
        raise AssertionError(f"{service} never answered: {last}")


def assert_no_secret(*texts):
    for t in texts:
        assert PASSWORD not in t


def test_our_broker_and_zap_with_original_worker_and_client(runner, tmp_path):
    d = Deployment(runner, tmp_path, "ours")
    worker = d.worker("orig", "OrigZap")
    assert d.wait_service("orig", "OrigZap") == 0

    good = d.client("orig", "OrigZap", "echo:hello,echo:again")
    assert [r["ok"] for r in good] == [True, True, True], good
    assert [common.decode(r["value"]) for r in good[1:]] == [["hello"], ["again"]]

    bad = d.client("orig", "OrigZap", "echo:intruder", password="wrong", reply_timeout=5)
    assert not bad[0]["ok"], bad
    assert bad[0]["elapsed"] < 1.0, bad  # answered at once, not after the reply timeout
    assert "PermissionError" in bad[0]["error"] and "authentication failed" in bad[0]["error"]
    assert not bad[1]["ok"], bad
    assert d.wait_service("orig", "OrigZap") == 2  # no call of the bad client reached the worker

    # an original worker with a wrong password is not registered and is told so
    bad_worker = d.worker("orig", "OrigBad", password="wrong")
    time.sleep(0.5)
    probe = d.client("orig", "OrigBad", "echo:x")
    assert not probe[1]["ok"], probe
    assert "disconnected" in bad_worker.log_tail(), bad_worker.describe()
    assert_no_secret(d.broker.log_tail(200), worker.log_tail(200), bad_worker.log_tail(200))


def test_original_broker_and_zap_with_our_worker_and_client(runner, tmp_path):
    d = Deployment(runner, tmp_path, "orig")
    worker = d.worker("ours", "OursZap")
    assert d.wait_service("ours", "OursZap") == 0

    good = d.client("ours", "OursZap", "echo:hello,echo:again")
    assert [r["ok"] for r in good] == [True, True, True], good
    assert [common.decode(r["value"]) for r in good[1:]] == [["hello"], ["again"]]

    # the original broker drops refused requests silently: our client times out
    bad = d.client("ours", "OursZap", "echo:intruder", password="wrong", reply_timeout=1.0)
    assert not bad[0]["ok"] and "Timeout" in bad[0]["error"], bad
    assert d.wait_service("ours", "OursZap") == 2
    assert_no_secret(worker.log_tail(200))
