"""Helpers shared by the gate tests: free ports, gate processes ended by pid, network namespaces."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROLE = Path(__file__).resolve().parent / "gate_node.py"


def _package_root():
    """The directory holding the ``gaterpc`` package under test."""
    import gaterpc

    return Path(gaterpc.__file__).parent.parent


def free_port(host="127.0.0.1"):
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def name_id(name):
    """The 16-byte identity of a gate created with ``identity=name``."""
    return uuid.uuid5(uuid.NAMESPACE_DNS, name).bytes


class GateProcess:
    """A ``gate_node.py`` process; ended by pid (SIGTERM, SIGKILL after a grace period)."""

    def __init__(self, name, popen, log):
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.log = log
        self.info = {}
        self._buf = b""

    def log_tail(self, n=30):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"gate {self.name} not ready; stderr:\n{self.log_tail()}")
                if sel.select(min(left, 0.5)):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        raise AssertionError(f"gate {self.name} exited; stderr:\n{self.log_tail()}")
                    self._buf += chunk
                elif self.popen.poll() is not None:
                    raise AssertionError(f"gate {self.name} exited; stderr:\n{self.log_tail()}")
        line, _, self._buf = self._buf.partition(b"\n")
        self.info = json.loads(line)
        return self.info

    def kill(self):
        """SIGKILL, no goodbye (the peers must expire it)."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, grace=5.0):
        p = self.popen
        if p.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        if p.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(grace)
        if p.stdout and not p.stdout.closed:
            p.stdout.close()


def start_gate(workdir, name, *args, python=None, netns=None, impl_path=True):
    """Start ``gate_node.py --name NAME *args`` (inside ``netns`` if given)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    if python is None:
        python = sys.executable
        env["PYTHONPATH"] = str(_package_root())
        cmd = [str(python), str(ROLE)]
    else:
        cmd = [str(python), "-s", str(ROLE)]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    log = Path(workdir) / f"gate-{name}.log"
    with open(log, "wb") as err:
        popen = subprocess.Popen([*cmd, "--name", name, *args], stdout=subprocess.PIPE, stderr=err,
                                 stdin=subprocess.DEVNULL, env=env, cwd=str(workdir))
    return GateProcess(name, popen, log)


# -- network namespaces --------------------------------------------------------------------

def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


def netns_available():
    """``None`` when namespaces can be made here, else the reason why not."""
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"gtprobe{os.getpid() % 100000}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class NetnsLab:
    """Namespaces made by one test; all deleted by :meth:`close` (also on failure).

    ``single(name)``: one namespace with only ``lo``, multicast routed on it.
    ``hosts(n)``: ``n`` host namespaces, each joined by a veth pair to a bridge
    in a separate bridge namespace (10.77.<k>.x/24), multicast routed only
    over that veth.
    """

    def __init__(self):
        self.tag = f"{os.getpid() % 10000}{uuid.uuid4().hex[:4]}"
        self.namespaces = []

    def _add(self, name):
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def single(self, label="solo"):
        ns = self._add(f"gt{label}{self.tag}")
        _ip("-n", ns, "link", "set", "lo", "multicast", "on")
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "lo")
        return ns

    def hosts(self, n, subnet=77):
        bridge_ns = self._add(f"gtbr{self.tag}")
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        hosts = []
        for i in range(n):
            ns = self._add(f"gth{i}{self.tag}")
            host_if, br_if = f"gv{i}{self.tag}"[:15], f"gb{i}{self.tag}"[:15]
            _ip("link", "add", host_if, "type", "veth", "peer", "name", br_if)
            _ip("link", "set", host_if, "netns", ns)
            _ip("link", "set", br_if, "netns", bridge_ns)
            _ip("-n", ns, "link", "set", host_if, "name", "eth0")
            addr = f"10.{subnet}.0.{i + 1}"
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "eth0", "multicast", "on")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
            _ip("-n", bridge_ns, "link", "set", br_if, "master", "br0")
            _ip("-n", bridge_ns, "link", "set", br_if, "up")
            hosts.append((ns, addr))
        return hosts

    def close(self):
        for ns in reversed(self.namespaces):
            _ip("netns", "del", ns, check=False)
        self.namespaces.clear()


# -- fixtures and helpers shared by the namespace tests ----------------------

import asyncio as _asyncio  # noqa: E402
import shutil as _shutil  # noqa: E402
import tempfile as _tempfile  # noqa: E402
import time as _time  # noqa: E402

import pytest as _pytest  # noqa: E402


async def until_async(predicate, timeout=10.0, interval=0.05):
    """Wait until ``await predicate()`` is true (bounded); fail otherwise."""
    deadline = _time.monotonic() + timeout
    while _time.monotonic() < deadline:
        if await predicate():
            return
        await _asyncio.sleep(interval)
    assert await predicate(), "condition not reached in time"


@_pytest.fixture
def lab():
    """A NetnsLab (namespaces deleted afterwards); skips where namespaces cannot be made."""
    reason = netns_available()
    if reason:
        _pytest.skip(reason)
    lab = NetnsLab()
    try:
        yield lab
    finally:
        lab.close()


@_pytest.fixture
def ipc_dir():
    """A short temporary directory for ipc endpoints (namespaces share the filesystem)."""
    path = _tempfile.mkdtemp(prefix="gtn-", dir="/tmp")
    yield path
    _shutil.rmtree(path, ignore_errors=True)


@_pytest.fixture
def procs(tmp_path):
    """``start(...)`` gate processes; every one is stopped afterwards."""
    started = []

    def start(*args, **kwargs):
        p = start_gate(tmp_path, *args, **kwargs)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
