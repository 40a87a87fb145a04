"""A Client learns promptly that its broker is gone, and the same Client serves again.

The broker (with its worker) runs in its own process and is SIGKILLed or
SIGSTOPped; heartbeats are 300 ms everywhere, so ``heartbeat x liveness`` is
0.9 s while the reply timeout stays at 60 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gaterpc.core import AMajordomo, Client, Context, Service, Worker
from gaterpc.exceptions import BrokerUnavailableError
from gaterpc.global_settings import Settings
from gaterpc.utils import HugeData, interface, msg_pack

ROLES = Path(__file__).resolve().parent / "procs" / "recovery_roles.py"
REPO = Path(__file__).resolve().parents[1]
HEARTBEAT = 300
SPAN = HEARTBEAT / 1000 * 3          # heartbeat x liveness
BOUND = SPAN + 2.5                   # generous slack for a loaded machine; reply timeout is 60 s


@pytest.fixture(autouse=True)
def _short_heartbeat():
    Settings.MDP_HEARTBEAT_INTERVAL = HEARTBEAT
    assert Settings.MDP_HEARTBEAT_LIVENESS == 3
    assert Settings.REPLY_TIMEOUT >= 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid):
    """The pids of every process below ``pid`` (Linux ``/proc``; empty elsewhere)."""
    found, todo = [], [pid]
    while todo and len(found) < 1000:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as fh:
                    kids = [int(x) for x in fh.read().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


class Brokers:
    """Broker processes of one test; every one is SIGKILLed by pid at the end."""

    def __init__(self, base):
        self.procs = []
        self.base = base

    def start(self, frontend, python=None):
        """Our broker, or the original's when ``python`` is the original's interpreter."""
        if python is None:
            env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            cmd = [sys.executable, str(ROLES)]
        else:
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
            cmd = [str(python), "-s", str(ROLES)]
        base = self.base / f"broker-{len(self.procs)}"
        base.mkdir()
        proc = subprocess.Popen([*cmd, frontend, str(HEARTBEAT), str(base)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL if python else None, env=env, text=True,
                                cwd=str(base))
        self.procs.append(proc)
        line = proc.stdout.readline()
        assert line.strip() == "READY", f"broker did not start: {line!r}"
        return proc

    def kill(self, proc):
        """SIGKILL the broker and, by pid, the processes it started (the original's
        broker runs a process pool whose workers would outlive it)."""
        try:
            if proc.poll() is None:
                children = _descendants(proc.pid)
                os.kill(proc.pid, signal.SIGKILL)
                for pid in children:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            proc.wait(10)
        finally:
            proc.stdout.close()

    def close(self):
        for proc in self.procs:
            if proc.returncode is None or not proc.stdout.closed:
                self.kill(proc)


@pytest.fixture
def brokers(tmp_path):
    b = Brokers(tmp_path)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(params=["tcp", "ipc"])
def frontend(request, tmp_path):
    if request.param == "tcp":
        return f"tcp://127.0.0.1:{free_port()}"
    return f"ipc://{tmp_path}/front"


@pytest.fixture
async def ctx():
    c = Context()
    try:
        yield c
    finally:
        c.destroy(linger=0)


async def _next_item(stream):
    return await stream.__anext__()


async def _in_flight(cli, n=10):
    """``n`` slow calls and an open stream whose first item arrived."""
    calls = [asyncio.ensure_future(cli.Slow.sleep(30, tag=i)) for i in range(n)]
    stream = await cli.Slow.trickle(100_000, 0.05)
    assert await asyncio.wait_for(_next_item(stream), 10) == 0
    await asyncio.sleep(0.3)  # the calls reached the worker
    assert not any(c.done() for c in calls)
    return calls, stream


async def _drain_stream(stream):
    while True:
        await stream.__anext__()


def _check(exc, address):
    assert isinstance(exc, BrokerUnavailableError), repr(exc)
    assert isinstance(exc, TimeoutError) and isinstance(exc, asyncio.TimeoutError)
    assert isinstance(exc, ConnectionError)
    assert exc.address == address
    assert address in str(exc)


async def test_killed_broker_fails_calls_and_stream_promptly(frontend, brokers, ctx):
    proc = brokers.start(frontend)
    cli = Client(frontend, context=ctx)
    try:
        assert await cli.Slow.echo("x") == "x"
        calls, stream = await _in_flight(cli)
        t0 = time.monotonic()
        brokers.kill(proc)
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND + 5)
        with pytest.raises(BrokerUnavailableError) as stream_exc:
            await asyncio.wait_for(_drain_stream(stream), BOUND + 5)
        elapsed = time.monotonic() - t0
        assert elapsed < BOUND, f"the failure took {elapsed:.2f} s"
        for exc in [*results, stream_exc.value]:
            _check(exc, frontend)
            # tcp/ipc: the connection monitor reports the loss, no need to wait for liveness
            assert "lost (peer disconnected)" in str(exc)
        assert "calls failed" in str(results[0])
        assert not cli.replies

        # A new broker on the same address: the same Client object serves again.
        brokers.start(frontend)
        assert await asyncio.wait_for(cli.Slow.echo("again"), BOUND + 5) == "again"
        assert await cli.Slow.sleep(0.01, tag="ok") == "ok"
    finally:
        cli.close()


async def test_hung_broker_fails_calls_by_liveness(brokers, ctx):
    """A broker that stops answering but keeps the connection (SIGSTOP): liveness probing."""
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = brokers.start(address)
    cli = Client(address, context=ctx)
    try:
        assert await cli.Slow.echo(1) == 1
        calls, stream = await _in_flight(cli, 5)
        # keep sending: liveness keys on what is received, not on what is sent
        sender = asyncio.ensure_future(_keep_sending(cli))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGSTOP)
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND + 5)
        elapsed = time.monotonic() - t0
        with pytest.raises(BrokerUnavailableError) as stream_exc:
            await asyncio.wait_for(_drain_stream(stream), 5)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        assert elapsed < BOUND, f"the failure took {elapsed:.2f} s"
        for exc in [*results, stream_exc.value]:
            _check(exc, address)
            assert "no reply from broker" in str(exc) and " within " in str(exc)
            assert exc.waited >= SPAN
        brokers.kill(proc)
        brokers.start(address)
        # A reconnection begun while the stopped broker was still there fails when it is
        # killed; the same client serves as soon as one attempt reaches the new broker.
        assert await _eventually(lambda: cli.Slow.echo(2), BOUND + 5) == 2
    finally:
        cli.close()


async def _eventually(call, bound):
    deadline = time.monotonic() + bound
    for _ in range(10):
        try:
            return await asyncio.wait_for(call(), max(0.1, deadline - time.monotonic()))
        except BrokerUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("no attempt reached the new broker")


async def _keep_sending(cli):
    for _ in range(200):
        task = asyncio.ensure_future(cli.Slow.sleep(30))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.sleep(0.05)


async def test_unreachable_broker_at_connect(tmp_path, ctx):
    for address in (f"tcp://127.0.0.1:{free_port()}", f"ipc://{tmp_path}/nobody"):
        cli = Client(address, context=ctx)
        try:
            t0 = time.monotonic()
            with pytest.raises(BrokerUnavailableError) as info:
                await asyncio.wait_for(cli.connect(), BOUND + 5)
            assert time.monotonic() - t0 < BOUND
            _check(info.value, address)
            assert f"no reply from broker {address} within" in str(info.value)
            assert SPAN * 0.9 <= info.value.waited < BOUND

            # a first call (auto-connect) and concurrent calls waiting for that connect
            t0 = time.monotonic()
            results = await asyncio.wait_for(
                asyncio.gather(*(cli.Slow.echo(i) for i in range(3)), return_exceptions=True), BOUND + 5)
            assert time.monotonic() - t0 < BOUND
            for exc in results:
                _check(exc, address)
            with pytest.raises(TimeoutError):  # user code written for the original
                await cli.Slow.echo(0)
        finally:
            cli.close()


class Slow(Worker):
    @interface
    async def sleep(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    @interface
    async def blob(self, n):
        return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG,
                        data=msg_pack({"blob": b"b" * n}))


async def _inproc_broker(ctx, frontend, backend):
    md = AMajordomo(context=ctx)
    md.bind_frontend(frontend)
    md.bind_backend(backend)
    md.run()
    w = Service(name="Slow").create_worker(Slow, backend, context=ctx)
    w.run()
    for _ in range(300):
        if "Slow" in md.services and md.services["Slow"].workers:
            break
        await asyncio.sleep(0.01)
    return md, w


async def test_inproc_broker_that_stops_answering(ctx):
    frontend = f"inproc://recovery-front-{id(ctx)}"
    md, w = await _inproc_broker(ctx, frontend, f"inproc://recovery-back-{id(ctx)}")
    md2 = w2 = None
    cli = Client(frontend, context=ctx)
    try:
        assert await cli.Slow.sleep(0) == 0
        calls = [asyncio.ensure_future(cli.Slow.sleep(30)) for _ in range(10)]
        await asyncio.sleep(0.2)
        # The broker's frontend goes away without a word (inproc has no connection events).
        t0 = time.monotonic()
        md._lfront.close()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND + 5)
        elapsed = time.monotonic() - t0
        assert elapsed < BOUND, f"the failure took {elapsed:.2f} s"
        for exc in results:
            _check(exc, frontend)
            assert "no reply from broker" in str(exc)
            assert exc.waited >= SPAN
        w.stop()
        md.stop()
        await asyncio.sleep(0.05)
        md2, w2 = await _inproc_broker(ctx, frontend, f"inproc://recovery-back2-{id(ctx)}")
        assert await asyncio.wait_for(cli.Slow.sleep(0.01), BOUND + 5) == 0.01
    finally:
        cli.close()
        for role in (w, md, w2, md2):
            if role is not None:
                role.stop()
        await asyncio.sleep(0.05)


async def test_busy_client_with_long_calls_is_not_declared_lost(ctx):
    """Sending all the time while no reply is due: the client still probes, and the broker answers."""
    frontend = f"inproc://recovery-busy-{id(ctx)}"
    md, w = await _inproc_broker(ctx, frontend, f"inproc://recovery-busy-back-{id(ctx)}")
    cli = Client(frontend, context=ctx)
    try:
        await cli.connect()
        calls = []
        for _ in range(40):  # 2 s of sends, each call lasting longer than heartbeat x liveness
            calls.append(asyncio.ensure_future(cli.Slow.sleep(SPAN * 1.5)))
            await asyncio.sleep(0.05)
        assert await asyncio.wait_for(asyncio.gather(*calls), 30) == [SPAN * 1.5] * 40
    finally:
        cli.close()
        w.stop()
        md.stop()
        await asyncio.sleep(0.05)


async def test_large_hugedata_result_is_decoded_off_the_loop(ctx, monkeypatch):
    """The result is decoded as the chunks come: beyond the first INLINE_DECODE_MAX bytes in the
    receiver's thread, and finished in a thread too; a small result stays on the loop."""
    import gaterpc.client_replies as client_mod
    import gaterpc.hugedata as hugedata_mod

    added = []  # (thread, bytes) of every decoded piece
    finished = []  # the thread that gave each result
    real_add, real_result = hugedata_mod.StreamDecoder.add, hugedata_mod.StreamDecoder.result

    def add(self, piece):
        added.append((threading.current_thread(), len(piece)))
        return real_add(self, piece)

    def result(self):
        finished.append(threading.current_thread())
        return real_result(self)

    monkeypatch.setattr(hugedata_mod.StreamDecoder, "add", add)
    monkeypatch.setattr(hugedata_mod.StreamDecoder, "result", result)
    frontend = f"inproc://recovery-huge-{id(ctx)}"
    md, w = await _inproc_broker(ctx, frontend, f"inproc://recovery-huge-back-{id(ctx)}")
    cli = Client(frontend, context=ctx)
    try:
        assert await cli.Slow.blob(1000) == {"blob": b"b" * 1000}
        assert finished == [threading.main_thread()]
        assert {t for t, _ in added} == {threading.main_thread()}
        added.clear()
        finished.clear()
        big = 3 * 1024 * 1024
        assert await cli.Slow.blob(big) == {"blob": b"b" * big}
        on_loop = sum(n for t, n in added if t is threading.main_thread())
        off_loop = sum(n for t, n in added if t is not threading.main_thread())
        assert on_loop < client_mod.INLINE_DECODE_MAX + 1024 * 1024 and off_loop >= big - on_loop
        assert len(finished) == 1 and finished[0] is not threading.main_thread()
        assert not cli.replies
    finally:
        cli.close()
        w.stop()
        md.stop()
        await asyncio.sleep(0.05)


def test_client_built_outside_a_running_loop(brokers):
    """Module-level construction, then ``asyncio.run`` (twice, with the same client)."""
    address = f"tcp://127.0.0.1:{free_port()}"
    brokers.start(address)
    cli = Client(address)

    async def use(value):
        try:
            return await asyncio.wait_for(cli.Slow.echo(value), 20)
        finally:
            cli.close()

    assert asyncio.run(use("first")) == "first"
    assert asyncio.run(use("second")) == "second"
    cli.ctx.destroy(linger=0)


@pytest.mark.interop
async def test_original_broker_answers_probes_and_loss_is_prompt(brokers, ctx):
    """Our client against the original 0.2.11 broker: it answers the keepalive probes of an
    idle client, its death fails the calls promptly, and the same client serves its successor."""
    from gaterpc.bench.origenv import OriginalEnvError, ensure_original_env

    try:
        original = ensure_original_env()
    except OriginalEnvError as exc:
        pytest.skip(f"original gaterpc environment cannot be built: {exc}")
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = brokers.start(address, python=original)
    cli = Client(address, context=ctx)
    try:
        await cli.connect()
        sock = cli.socket
        # idle for 3 x heartbeat x liveness: only the replies to the probes keep the connection
        await asyncio.sleep(SPAN * 3)
        assert cli.socket is sock and cli._is_ready
        assert await cli.Slow.echo("alive") == "alive"

        calls = [asyncio.ensure_future(cli.Slow.sleep(30, tag=i)) for i in range(5)]
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        brokers.kill(proc)
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND + 5)
        assert time.monotonic() - t0 < BOUND
        for exc in results:
            _check(exc, address)
        brokers.start(address, python=original)
        assert await asyncio.wait_for(cli.Slow.echo("back"), BOUND + 5) == "back"
    finally:
        cli.close()


def test_exception_is_exported_and_picklable():
    import pickle

    import gaterpc.exceptions as exc_mod

    assert "BrokerUnavailableError" in exc_mod.__all__
    e = BrokerUnavailableError("ipc:///x", 1.5)
    assert str(e) == "no reply from broker ipc:///x within 1.5 s"
    e = BrokerUnavailableError("tcp://127.0.0.1:5555", 0.2, "peer disconnected", 3)
    assert str(e) == "connection to broker tcp://127.0.0.1:5555 lost (peer disconnected); 3 calls failed"
    back = pickle.loads(pickle.dumps(e))
    assert (type(back), str(back), back.address, back.waited) == (type(e), str(e), e.address, e.waited)
