"""Worker reconnection against the original broker.

Our worker sends a HEARTBEAT of its own when its broker is late, and
registers again after losing its broker.  The original broker must tolerate
both: the unsolicited heartbeats of a registered worker, and those of a
worker it does not know (after a restart).  The original worker stays as it
was (it just stops); that is covered by the lifecycle tests.
"""

from __future__ import annotations

import json
import os
import signal

from .conftest import free_tcp_port

HEARTBEAT_MS = 500


def whoami(runner, front, impl="ours", wait=15.0):
    calls = [{"id": "w", "service": "Life", "method": "whoami"}]
    client = runner.start("client", impl, "--front", front, "--wait-service", "Life",
                          "--wait-limit", str(wait), "--reply-timeout", "5", "--calls", json.dumps(calls))
    r, = client.results(timeout=wait + 15)
    assert client.popen.wait(10) == 0, client.describe()
    return r


def test_our_worker_comes_back_after_original_broker_restart(runner, tmp_path):
    front, back = f"tcp://127.0.0.1:{free_tcp_port()}", f"ipc://{tmp_path}/back"
    hb = str(HEARTBEAT_MS)
    broker = runner.start("broker", "orig", "--front", front, "--back", back, "--heartbeat", hb)
    worker = runner.start("worker", "ours", "--back", back, "--service", "Life", "--heartbeat", hb)
    r = whoami(runner, front, "orig")
    assert r["ok"] and r["value"]["pid"] == worker.pid, r
    # serving over many heartbeats: any heartbeat of our worker's own is accepted
    r = whoami(runner, front, "orig")
    assert r["ok"] and r["value"]["pid"] == worker.pid, r

    os.kill(broker.pid, signal.SIGKILL)
    broker.popen.wait(10)
    runner.start("broker", "orig", "--front", front, "--back", back, "--heartbeat", hb)
    # no user code: the same worker process registers with the new original broker
    r = whoami(runner, front, "orig", wait=20.0)
    assert r["ok"] and r["value"]["pid"] == worker.pid and r["value"]["impl"] == "ours", r
    assert worker.popen.poll() is None, worker.describe()
