"""Clients that vanish (SIGKILL) and slow readers, with real processes.

Broker, worker and client each run in their own process (this file, run as a
script, plays the roles), over ipc:// in a temporary directory.  The broker
and the worker answer ``status`` lines on stdin with their tables and RSS.

* a client killed mid-stream, mid-HugeData, or with calls queued for a busy
  service: the broker's backlog for it, the service's waiting queue, the
  worker's in-flight map (capacity back to its exact value) and the worker's
  request tasks are empty within two heartbeats (for queued calls, the
  broker's per-heartbeat probe of clients with calls pending finds it gone);
* a 50,000-item stream read slowly keeps the broker's and the worker's RSS
  within 64 MiB of their baseline.

Every process is ended by its pid in a fixture finalizer.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HB = 300            # heartbeat of every role, ms
CAPACITY = 4
WAIT_TIMEOUT = 120.0  # the broker's Settings.TIMEOUT (requests waiting for capacity)
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ roles

def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _serve_status(status):
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        if line.strip() == "status":
            _emit(status())


async def _role(role, args):
    from gaterpc.core import AMajordomo, Client, Context, Service, Worker
    from gaterpc.global_settings import Settings
    from gaterpc.utils import HugeData, interface, msg_pack

    Settings.TIMEOUT = WAIT_TIMEOUT
    ctx = Context()
    if role == "broker":
        front, back, budget = args[0], args[1], int(args[2])
        Settings.BACKLOG_MAX_BYTES = budget
        broker = AMajordomo(context=ctx, heartbeat=HB)
        broker.bind_frontend(front)
        broker.bind_backend(back)
        broker.run()

        def status():
            lf = broker._lfront
            return {
                "backlog": lf.backlog_size() if lf else -1,
                "waiting": sum(len(s._waiting) for s in broker.services.values()),
                "inflight": sum(len(w._inflight) for w in broker.workers.values()),
                "capacity": sum(w.max_allowed_request for w in broker.workers.values()),
                "workers": len(broker.workers),
                "rss": _rss_kib(),
            }
        _emit({"ready": role})
        await _serve_status(status)
        broker.stop()
    elif role == "worker":
        back = args[0]

        class Busy(Worker):
            @interface
            def endless(self, size):
                blob = b"e" * size
                i = 0
                while True:
                    yield i, blob
                    i += 1

            @interface
            def count(self, n, size):
                blob = b"c" * size
                for i in range(n):
                    yield i, blob

            @interface
            async def slow(self, seconds):
                await asyncio.sleep(seconds)
                return seconds

            @interface
            async def huge(self, nbytes):
                hd = HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG,
                              compress_module="gzip", timeout=None)

                async def feed():  # pipe mode: a payload that keeps coming
                    # one msgpack list of 64 KiB items: the client decodes it as it comes
                    piece = msg_pack(os.urandom(64 * 1024))
                    hd.add_data(b"\xdd" + (nbytes // len(piece)).to_bytes(4, "big"))
                    for _ in range(nbytes // len(piece)):
                        try:
                            hd.add_data(piece)
                        except RuntimeError:  # destroyed: the transfer was cancelled
                            return
                        await asyncio.sleep(0.002)
                    hd.flush()
                asyncio.ensure_future(feed())
                return hd

        worker = Service(name="Busy").create_worker(Busy, back, context=ctx, workers_heartbeat=HB,
                                                    max_allowed_request=CAPACITY)
        worker.run()

        def status():
            return {"active": len(worker._runner.active), "requests": len(worker.requests),
                    "rss": _rss_kib()}
        _emit({"ready": role})
        await _serve_status(status)
        worker.stop()
    else:
        front, mode = args[0], args[1]
        cli = Client(front, context=ctx, heartbeat=HB, reply_timeout=600)
        await cli.connect()
        if mode == "stream":
            stream = await cli.Busy.endless(100)
            n = 0
            async for _ in stream:
                n += 1
                if n == 200:
                    _emit({"ready": role, "items": n})
                if n % 64 == 0:
                    await asyncio.sleep(0.01)  # keeps reading, slowly
        elif mode == "huge":
            fut = asyncio.ensure_future(cli.Busy.huge(512 * 1024 * 1024))
            _emit({"ready": role})
            await fut
        elif mode == "queued":
            calls = [asyncio.ensure_future(cli.Busy.slow(600)) for _ in range(CAPACITY + 20)]
            _emit({"ready": role})
            await asyncio.gather(*calls, return_exceptions=True)
        elif mode == "slowread":
            n_items, size = int(args[2]), int(args[3])
            stream = await cli.Busy.count(n_items, size)
            _emit({"ready": role})
            got, error = 0, None
            try:
                async for item in stream:
                    if item[0] != got:
                        error = f"item {got} is {item[0]}"
                        break
                    got += 1
                    if got % 500 == 0:
                        await asyncio.sleep(0.05)
            except Exception as exc:  # noqa: BLE001 - reported to the test
                error = f"{type(exc).__name__}: {exc}"
            _emit({"done": got, "error": error})
        await asyncio.sleep(3600)  # killed by the test
    ctx.destroy(linger=0)


# ------------------------------------------------------------------------------ harness

class Proc:
    def __init__(self, role, *args, tmp_path):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        self.role = role
        self.log = tmp_path / f"{role}-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as err:
            self.popen = subprocess.Popen([sys.executable, __file__, role, *map(str, args)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                          env=env, start_new_session=True)
        self.pid = self.popen.pid
        self._buf = b""

    def line(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line from {self.role}: {self.tail()}")
                if sel.select(min(left, 0.5)):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        raise AssertionError(f"{self.role} exited: {self.tail()}")
                    self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def status(self):
        self.popen.stdin.write(b"status\n")
        self.popen.stdin.flush()
        return self.line(10)

    def tail(self):
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def kill(self):
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.popen.stdin, self.popen.stdout):
            try:
                f.close()
            except OSError:
                pass


@pytest.fixture
def procs(tmp_path):
    started = []

    def start(role, *args):
        p = Proc(role, *args, tmp_path=tmp_path)
        started.append(p)
        return p
    try:
        yield start
    finally:
        for p in started:
            p.kill()


@pytest.fixture
def system(procs, tmp_path):
    def make(budget=256 * 1024 * 1024):
        front, back = f"ipc://{tmp_path}/front", f"ipc://{tmp_path}/back"
        broker = procs("broker", front, back, budget)
        assert broker.line(30)["ready"] == "broker"
        worker = procs("worker", back)
        assert worker.line(30)["ready"] == "worker"
        deadline = time.monotonic() + 20
        while broker.status()["workers"] < 1:
            assert time.monotonic() < deadline, broker.tail()
            time.sleep(0.05)
        return front, broker, worker
    return make


def poll(pred, timeout, step=0.05):
    """Poll ``pred()`` (bounded); the last value once true or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def idle(broker, worker):
    b, w = broker.status(), worker.status()
    ok = (b["backlog"] == 0 and b["waiting"] == 0 and b["inflight"] == 0 and b["capacity"] == CAPACITY
          and w["active"] == 0 and w["requests"] == 0)
    return ok and (b, w)


def busy(broker, worker, inflight=1, active=1):
    b, w = broker.status(), worker.status()
    return b["inflight"] >= inflight and w["active"] >= active and (b, w)


# A liveness deadline of two heartbeats, plus generous slack for a loaded machine.
TWO_HEARTBEATS = 2 * HB / 1000 + 3.0


def test_client_killed_mid_stream(system, procs):
    front, broker, worker = system()
    client = procs("client", front, "stream")
    assert client.line(30)["items"] == 200
    assert poll(lambda: busy(broker, worker), 10), (broker.status(), worker.status())
    client.kill()
    assert poll(lambda: idle(broker, worker), TWO_HEARTBEATS), (broker.status(), worker.status())


def test_client_killed_mid_hugedata(system, procs):
    front, broker, worker = system()
    client = procs("client", front, "huge")
    assert client.line(30)["ready"] == "client"
    assert poll(lambda: busy(broker, worker), 20), (broker.status(), worker.status())
    time.sleep(0.5)  # the transfer is under way
    assert busy(broker, worker)
    client.kill()
    assert poll(lambda: idle(broker, worker), TWO_HEARTBEATS), (broker.status(), worker.status())


def test_client_killed_with_calls_queued(system, procs):
    front, broker, worker = system()
    client = procs("client", front, "queued")
    assert client.line(30)["ready"] == "client"
    assert poll(lambda: (lambda b: b["inflight"] == CAPACITY and b["waiting"] == 20 and b)(broker.status()),
                10), broker.status()
    assert poll(lambda: worker.status()["active"] == CAPACITY, 10), worker.status()
    client.kill()
    # no reply goes to a client whose calls all wait: the broker's probe at the next
    # heartbeat finds it gone (long before the calls' wait timeout)
    assert poll(lambda: idle(broker, worker), TWO_HEARTBEATS), (broker.status(), worker.status())


@pytest.mark.slow
def test_slow_reader_of_a_long_stream_keeps_memory_bounded(system, procs):
    front, broker, worker = system(budget=32 * 1024 * 1024)
    base_b, base_w = broker.status()["rss"], worker.status()["rss"]
    client = procs("client", front, "slowread", 50_000, 1024)
    assert client.line(30)["ready"] == "client"
    peak_b, peak_w = base_b, base_w
    deadline = time.monotonic() + 240
    result = None
    while time.monotonic() < deadline:
        b, w = broker.status(), worker.status()
        peak_b, peak_w = max(peak_b, b["rss"]), max(peak_w, w["rss"])
        try:
            result = client.line(0.2)
            break
        except AssertionError:
            continue
    assert result is not None, "the stream did not finish in time"
    limit = 64 * 1024
    assert peak_b - base_b < limit, (base_b, peak_b)
    assert peak_w - base_w < limit, (base_w, peak_w)
    # every item in order: all of them, or (a reader that fell a whole budget behind)
    # the items before an error naming the budget -- never a silent gap
    if result["error"] is not None:
        assert "BACKLOG_MAX_BYTES" in result["error"], result
    else:
        assert result["done"] == 50_000, result
    assert poll(lambda: idle(broker, worker), TWO_HEARTBEATS), (broker.status(), worker.status())


if __name__ == "__main__":
    asyncio.run(_role(sys.argv[1], sys.argv[2:]))
