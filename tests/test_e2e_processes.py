"""End-to-end with broker, worker and client in separate processes (ipc and tcp)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gaterpc.core import Client, Context
from gaterpc.exceptions import RemoteException

ROLES = Path(__file__).resolve().parent / "procs" / "roles.py"
REPO = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(ROLES), *args], stdout=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", f"{args[0]} did not start: {line!r}"
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc):
    """End ``proc`` by its pid (SIGTERM, SIGKILL after a grace period) and close its pipe."""
    try:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
    finally:
        proc.stdout.close()


@pytest.fixture(params=["ipc", "tcp"])
def addresses(request, tmp_path):
    if request.param == "ipc":
        return f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b"
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


async def test_three_processes(addresses):
    front, back = addresses
    procs = [start("broker", front, back)]
    ctx = cli = None
    try:
        procs.append(start("worker", back))
        ctx = Context()
        cli = Client(front, context=ctx)
        for _ in range(100):
            await cli.connect() if cli._recv_task is None else None
            if "Echo" in await cli.Gate.get_services():
                break
            await asyncio.sleep(0.05)
        assert await cli.Echo.echo("hello", 42, flag=True) == [["hello", 42], {"flag": True}]
        assert [i async for i in await cli.Echo.count(1000)] == list(range(1000))
        with pytest.raises(RemoteException, match="boom!"):
            await cli.Echo.boom()
        for n in (1000, 2_000_000):
            assert await cli.Echo.huge(n) == b"z" * n
        results = await asyncio.gather(*(cli.Echo.echo(i) for i in range(1000)))
        assert results == [[[i], {}] for i in range(1000)]
    finally:
        if cli is not None:
            cli.close()
            await asyncio.sleep(0.05)
        if ctx is not None:
            ctx.destroy(linger=0)
        for p in procs:
            stop(p)
