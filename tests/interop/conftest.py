"""Fixtures of the interoperability suite.

Every role (broker, worker, client) runs as its own process, started with a
chosen implementation:

* ``"orig"``: the original gaterpc's interpreter (``ensure_original_env()``),
  ``-s`` and ``PYTHONPATH`` = the roles directory only, so our repository is
  never importable there;
* ``"ours"``: ``sys.executable`` with ``PYTHONPATH`` = repository root + the
  roles directory.

Each role prints a JSON readiness line naming the implementation it actually
imported; the runner checks it, so a topology can never silently run the
wrong side.  Processes are started in their own session and always ended by
pid (SIGTERM, then SIGKILL of their process group after a grace period) in
fixture finalizers.
"""

from __future__ import annotations

import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .roles import common

ROLES_DIR = Path(__file__).resolve().parent / "roles"
REPO = Path(__file__).resolve().parents[2]
IMPLS = ("orig", "ours")
# GATERPC_INTEROP_TAP=1 puts a recording relay (roles/tap.py) in front of each
# broker socket; the wire logs are named in failure messages.
TAP = os.environ.get("GATERPC_INTEROP_TAP", "") not in ("", "0")

# Service names registered by the long-lived workers, per worker implementation.
SERVICE = {"orig": "OrigSvc", "ours": "OursSvc"}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(here):
            item.add_marker(pytest.mark.interop)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def original_python() -> Path:
    """Interpreter of the environment with the original gaterpc.

    Skips (with the reason) only when that environment cannot be built.
    """
    from gaterpc.bench.origenv import OriginalEnvError, ensure_original_env
    try:
        return ensure_original_env()
    except OriginalEnvError as exc:
        pytest.skip(f"original gaterpc environment cannot be built: {exc}")


class RoleError(AssertionError):
    pass


class RoleProcess:
    """One running role; stdout carries the readiness line and JSON results."""

    def __init__(self, name: str, role: str, impl: str, popen: subprocess.Popen, log: Path):
        self.name, self.role, self.impl = name, role, impl
        self.popen, self.log = popen, log
        self.pid = popen.pid
        self.info: dict = {}
        self._buf = b""

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def describe(self) -> str:
        return (f"{self.name} ({self.role}, {self.impl}, pid {self.pid}, "
                f"returncode {self.popen.poll()}); stderr tail:\n{self.log_tail()}")

    def readline(self, timeout: float) -> str:
        """One stdout line within ``timeout`` seconds (raises RoleError otherwise)."""
        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RoleError(f"no line from {self.describe()}")
                if sel.select(min(left, 0.5)):
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        raise RoleError(f"stdout closed: {self.describe()}")
                    self._buf += chunk
                elif self.popen.poll() is not None:
                    raise RoleError(f"exited: {self.describe()}")
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def wait_ready(self, timeout: float) -> dict:
        line = self.readline(timeout)
        try:
            info = json.loads(line)
        except ValueError:
            raise RoleError(f"bad readiness line {line!r} from {self.describe()}") from None
        if info.get("ready") != self.role or info.get("impl") != self.impl:
            raise RoleError(f"expected {self.role}/{self.impl}, got {info} from {self.describe()}")
        self.info = info
        return info

    def results(self, timeout: float) -> list:
        line = self.readline(timeout)
        try:
            return json.loads(line)
        except ValueError:
            raise RoleError(f"bad result line {line[:500]!r} from {self.describe()}") from None

    def request(self, calls: list, timeout: float = 60.0) -> list:
        """Serve-mode client: send a list of calls, return the list of results."""
        self.popen.stdin.write((common.dumps(calls) + "\n").encode())
        self.popen.stdin.flush()
        return self.results(timeout)

    def stop(self, grace: float = 5.0) -> None:
        p = self.popen
        if p.poll() is None:
            try:
                if p.stdin and not p.stdin.closed:
                    p.stdin.close()
            except OSError:
                pass
            p.terminate()
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # The role's own children (process pools) share its process group.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        for f in (p.stdin, p.stdout):
            try:
                if f and not f.closed:
                    f.close()
            except OSError:
                pass


class ProcessRunner:
    """Starts roles with a chosen implementation and ends them by pid."""

    _ids = itertools.count()

    def __init__(self, original_python: Path, workdir: Path):
        self.original_python = Path(original_python)
        self.workdir = workdir
        self.procs: list[RoleProcess] = []

    def command(self, impl: str, script: Path) -> tuple[list[str], dict]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")}
        if impl == "orig":
            env["PYTHONPATH"] = str(ROLES_DIR)
            return [str(self.original_python), "-s", str(script)], env
        if impl == "ours":
            env["PYTHONPATH"] = os.pathsep.join((str(REPO), str(ROLES_DIR)))
            return [sys.executable, str(script)], env
        if impl == "tap":   # pure pyzmq, no gaterpc at all
            env["PYTHONPATH"] = str(ROLES_DIR)
            return [sys.executable, "-s", str(script)], env
        raise ValueError(impl)

    def start(self, role: str, impl: str, *args: str, ready_timeout: float = 30.0,
              wait_ready: bool = True) -> RoleProcess:
        n = next(self._ids)
        name = f"{role}-{impl}-{n}"
        base = self.workdir / name
        base.mkdir(parents=True, exist_ok=True)
        cmd, env = self.command(impl, ROLES_DIR / f"{role}.py")
        cmd += [*args, "--base-path", str(base / "base")]
        log = base / "stderr.log"
        with open(log, "wb") as err:
            popen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=err, env=env, cwd=str(base),
                                     start_new_session=True)
        proc = RoleProcess(name, role, impl, popen, log)
        self.procs.append(proc)
        if wait_ready:
            try:
                proc.wait_ready(ready_timeout)
            except RoleError:
                proc.stop()
                raise
        return proc

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop()


@pytest.fixture(scope="session")
def session_runner(original_python, tmp_path_factory):
    runner = ProcessRunner(original_python, tmp_path_factory.mktemp("interop-session"))
    yield runner
    runner.stop_all()


@pytest.fixture
def runner(original_python, tmp_path_factory):
    """Function-scoped runner: its processes end with the test."""
    runner = ProcessRunner(original_python, tmp_path_factory.mktemp("interop-fn"))
    yield runner
    runner.stop_all()


class Fleet:
    """Long-lived roles shared by the whole suite, started on first use.

    * ``broker(impl)``: the original broker listens on ipc://, ours on tcp://;
    * ``worker(impl, broker)``: registers ``SERVICE[impl]`` at that broker;
    * ``client(impl, broker, worker)``: serve-mode client that waited until
      the broker listed that worker's service.

    Failures to start are remembered, so one broken role fails its tests
    quickly instead of being retried by every test.
    """

    def __init__(self, runner: ProcessRunner, ipc_dir: Path):
        self.runner = runner
        self.ipc_dir = ipc_dir
        self._procs: dict[tuple, RoleProcess] = {}
        self._failed: dict[tuple, str] = {}

    def _get(self, key, factory):
        if key in self._failed:
            raise RoleError(f"{key} failed to start earlier:\n{self._failed[key]}")
        proc = self._procs.get(key)
        if proc is not None and proc.popen.poll() is not None:
            raise RoleError(f"{key} died: {proc.describe()}")
        if proc is None:
            try:
                proc = self._procs[key] = factory()
            except RoleError as exc:
                self._failed[key] = str(exc)
                raise
        return proc

    def broker_addrs(self, impl: str) -> tuple[str, str]:
        if impl == "orig":
            return f"ipc://{self.ipc_dir}/orig-front", f"ipc://{self.ipc_dir}/orig-back"
        return f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"

    def broker(self, impl: str) -> RoleProcess:
        def start():
            front, back = self.broker_addrs(impl)
            proc = self.runner.start("broker", impl, "--front", front, "--back", back)
            proc.front, proc.back, proc.taps = front, back, []
            if TAP:
                # Clients and workers talk to the broker through recording relays.
                for side in ("front", "back"):
                    listen = f"ipc://{self.ipc_dir}/tap-{impl}-{side}"
                    log = self.runner.workdir / f"wire-{impl}-broker-{side}.jsonl"
                    self.runner.start("tap", "tap", "--listen", listen,
                                      "--upstream", getattr(proc, side), "--log", str(log))
                    setattr(proc, side, listen)
                    proc.taps.append(log)
            return proc
        return self._get(("broker", impl), start)

    def worker(self, impl: str, broker: str) -> RoleProcess:
        b = self.broker(broker)
        return self._get(("worker", impl, broker), lambda: self.runner.start(
            "worker", impl, "--back", b.back, "--service", SERVICE[impl]))

    def client(self, impl: str, broker: str, worker: str) -> RoleProcess:
        b = self.broker(broker)
        self.worker(worker, broker)
        return self._get(("client", impl, broker, worker), lambda: self.runner.start(
            "client", impl, "--front", b.front, "--wait-service", SERVICE[worker],
            "--reply-timeout", "10", "--serve"))


@pytest.fixture(scope="session")
def fleet(session_runner, tmp_path_factory):
    return Fleet(session_runner, tmp_path_factory.mktemp("ipc"))


class Topology:
    """client impl -> broker impl -> worker impl, with helpers to run calls."""

    def __init__(self, fleet: Fleet, client: str, broker: str, worker: str):
        self.fleet = fleet
        self.client_impl, self.broker_impl, self.worker_impl = client, broker, worker
        self.service = SERVICE[worker]

    def __repr__(self):
        return f"client={self.client_impl} broker={self.broker_impl} worker={self.worker_impl}"

    def run(self, calls: list[dict], timeout: float = 60.0) -> list[dict]:
        for i, c in enumerate(calls):
            c.setdefault("id", str(i))
            c.setdefault("service", self.service)
        proc = self.fleet.client(self.client_impl, self.broker_impl, self.worker_impl)
        results = proc.request(calls, timeout)
        assert [r["id"] for r in results] == [c["id"] for c in calls], results
        return results

    def call(self, method: str, *args, mode: str = "call", **spec) -> dict:
        spec.update(method=method, mode=mode, args=common.encode(list(args)))
        if "kwargs" in spec:
            spec["kwargs"] = common.encode(spec["kwargs"])
        return self.run([spec])[0]

    def value(self, method: str, *args, **spec):
        """Call and return the decoded value, failing the test with the error otherwise."""
        r = self.call(method, *args, **spec)
        assert r["ok"], f"{self}: {method} failed: {r}{self.wire_hint()}"
        return common.decode(r["value"])

    def wire_hint(self) -> str:
        taps = getattr(self.fleet._procs.get(("broker", self.broker_impl)), "taps", None)
        if taps:
            return "\nwire logs: " + ", ".join(map(str, taps))
        return "\n(run with GATERPC_INTEROP_TAP=1 to record the frames)"


def make_topology(fleet, client, broker, worker):
    return Topology(fleet, client, broker, worker)


def topology_id(t: tuple) -> str:
    return f"c-{t[0]}_b-{t[1]}_w-{t[2]}"
