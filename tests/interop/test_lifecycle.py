"""Role processes start, serve and shut down cleanly on SIGTERM, on either implementation."""

from __future__ import annotations

import json
import signal
import time

import pytest

from .conftest import IMPLS, free_tcp_port


def terminate(proc, grace=8.0):
    proc.popen.send_signal(signal.SIGTERM)
    start = time.monotonic()
    try:
        rc = proc.popen.wait(grace)
    except Exception:
        rc = None
    return rc, time.monotonic() - start


@pytest.mark.parametrize("impl", IMPLS)
def test_roles_exit_cleanly_on_sigterm(runner, tmp_path, impl):
    front, back = f"tcp://127.0.0.1:{free_tcp_port()}", f"ipc://{tmp_path}/back"
    broker = runner.start("broker", impl, "--front", front, "--back", back)
    worker = runner.start("worker", impl, "--back", back, "--service", "Life")
    calls = [{"id": "w", "service": "Life", "method": "whoami"}]
    client = runner.start("client", impl, "--front", front, "--wait-service", "Life",
                          "--reply-timeout", "5", "--calls", json.dumps(calls))
    r, = client.results(timeout=20)
    assert r["ok"] and r["value"]["impl"] == impl, r
    assert client.popen.wait(10) == 0, client.describe()
    for proc in (worker, broker):
        rc, took = terminate(proc)
        assert rc == 0, f"exit status {rc} after {took:.1f}s: {proc.describe()}"
