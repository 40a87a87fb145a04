"""Helpers of the command line tests: start ``gaterpc`` processes, end them by pid."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

CALC_MODULE = '''
import asyncio
import pathlib

from gaterpc.core import Worker
from gaterpc.utils import interface


class Calc(Worker):
    @interface
    async def add(self, a, b):
        return a + b

    @interface
    def echo(self, *args, **kwargs):
        return [args, kwargs]

    @interface
    def count(self, n):
        yield from range(n)

    @interface
    def blob(self):
        return b"\\x00\\x01\\xff"

    @interface
    def fail(self):
        raise ValueError("bad thing")

    @interface
    async def slow(self, seconds, marker=None):
        if marker:
            pathlib.Path(marker).write_text("started")
        await asyncio.sleep(seconds)
        return "done"
'''

HEARTBEAT = "300"


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (where outgoing connections get theirs)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host="127.0.0.1"):
    """A TCP port free on ``host`` right now, below the ephemeral range when it can.

    The caller binds it a little later, often in a child process; meanwhile a
    port of the ephemeral range may become the local end of any outgoing
    connection on the machine (the suite's other tests make many), while a
    port below it is only taken by an explicit bind.  At most 200 tries, then
    any free port.
    """
    low, high = 20000, min(32000, _ephemeral_low())
    rnd = random.SystemRandom()
    for _ in range(200 if high > low else 0):
        port = rnd.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def gaterpc_cmd(*args):
    return [sys.executable, "-m", "gaterpc", *args]


class Procs:
    """Processes started by a test; :meth:`close` SIGKILLs the ones still alive (by pid)."""

    def __init__(self, cwd):
        self.cwd = cwd
        self.procs = []

    def start(self, args, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        kw.setdefault("cwd", self.cwd)
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def run(self, args, timeout=60, **kw):
        """Run to completion (bounded); returns the CompletedProcess-like Popen with out/err."""
        p = self.start(args, **kw)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            raise AssertionError(f"{args} did not finish within {timeout} s; stderr: {err[-2000:]}")
        p.out, p.err = out, err
        return p

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.communicate(timeout=10)
            except Exception:  # noqa: BLE001 - best effort
                pass
            finally:
                for f in (p.stdin, p.stdout, p.stderr):
                    if f is not None and not f.closed:
                        f.close()


def stop(p, sig=signal.SIGTERM, timeout=20):
    """Send ``sig`` to ``p`` (by pid) and return (returncode, stdout, stderr)."""
    os.kill(p.pid, sig)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"pid {p.pid} did not exit within {timeout} s after {sig!r}; stderr: {err[-3000:]}")
    return p.returncode, out, err


def wait_service(procs, addr, service, deadline=30.0, extra=()):
    """Poll ``gaterpc info --json`` until ``service`` is listed (bounded)."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        p = procs.run(gaterpc_cmd("info", addr, "--json", "--timeout", "3", *extra), timeout=30)
        last = p
        if p.returncode == 0:
            data = json.loads(p.out)
            if service in data["services"]:
                return data
        time.sleep(0.2)
    raise AssertionError(f"{service} never appeared at {addr}: rc={last and last.returncode} "
                         f"out={last and last.out!r} err={last and last.err[-2000:]!r}")


@pytest.fixture
def short_tmp():
    """A short temporary directory (ipc paths must stay under ~100 characters)."""
    d = tempfile.mkdtemp(prefix="gcli-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def procs(short_tmp):
    ps = Procs(short_tmp)
    try:
        yield ps
    finally:
        ps.close()
