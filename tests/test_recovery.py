"""Recovery from broker restarts and worker deaths.

Process-level tests (real processes, SIGKILL) run the roles of
``tests/procs/worker_recovery_roles.py`` with a 300 ms heartbeat: workers come back
by themselves after a broker restart (and stop, as the original, with
``_reconnect = False``); callers of a killed worker get an error within two
heartbeats, also mid-stream and mid-HugeData; a second worker keeps serving.
In-process tests cover the broker's answers to unknown workers, refused
READYs, capacity waiters and callers of messages that made the broker fail.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from gaterpc.core import AMajordomo, Client, Context, Service, Worker
from gaterpc.counters import drops_snapshot
from gaterpc.exceptions import BusyWorkerError, RemoteException
from gaterpc.global_settings import Settings
from gaterpc.utils import interface
from gaterpc.worker import RemoteWorker

ROLES = Path(__file__).resolve().parent / "procs" / "worker_recovery_roles.py"
REPO = Path(__file__).resolve().parents[1]
HB = 0.3  # the roles' heartbeat, seconds
SLACK = 3.0  # a loaded machine


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """Role processes of one test; every one is ended by its pid at teardown."""

    def __init__(self):
        self.all = []

    def start(self, *args):
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, str(ROLES), *args], stdout=subprocess.PIPE, env=env,
                                text=True)
        self.all.append(proc)
        line = proc.stdout.readline()
        assert line.strip() == "READY", f"{args[0]} did not start: {line!r}"
        return proc

    @staticmethod
    def kill(proc):
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)

    def close(self):
        for proc in self.all:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
            proc.stdout.close()


async def readline(proc, timeout):
    """The next stdout line of ``proc`` ('' at EOF), waiting at most ``timeout`` s."""
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), timeout)


@pytest.fixture
def procs():
    p = Procs()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(params=["ipc", "tcp"])
def addresses(request, tmp_path):
    if request.param == "ipc":
        return f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b"
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
async def ctx():
    c = Context()
    try:
        yield c
    finally:
        await asyncio.sleep(0.05)
        c.destroy(linger=0)


async def fresh_client(ctx, front, *, service="Echo", within=10.0):
    """A new client, once ``service`` is registered at the broker (else fail after ``within`` s)."""
    cli = Client(front, context=ctx, reply_timeout=30)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            if cli._recv_task is None:
                await asyncio.wait_for(cli.connect(), 2)
            if service in await asyncio.wait_for(cli.Gate.get_services(), 2):
                return cli
        except (asyncio.TimeoutError, TimeoutError):
            pass
        if loop.time() > deadline:
            cli.close()
            raise AssertionError(f"{service} not served within {within} s")
        await asyncio.sleep(0.05)


def assert_worker_lost(exc_info):
    err = exc_info.value
    assert err.remote_type == "ServiceUnAvailableError", err
    assert "was lost before replying" in str(err)
    assert "Echo" in str(err)


# -- broker restart -------------------------------------------------------------------


async def test_worker_comes_back_after_broker_restart(addresses, procs, ctx):
    front, back = addresses
    broker = procs.start("broker", front, back)
    worker = procs.start("worker", back)
    cli = await fresh_client(ctx, front)
    pid = await cli.Echo.pid()
    assert pid == worker.pid
    cli.close()

    procs.kill(broker)
    procs.start("broker", front, back)
    loop = asyncio.get_running_loop()
    started = loop.time()
    cli = await fresh_client(ctx, front, within=6 * HB + SLACK)
    # the same worker process, re-registered with no user code
    assert await cli.Echo.pid() == worker.pid
    assert await cli.Echo.echo("again") == [["again"], {}]
    assert loop.time() - started < 6 * HB + SLACK
    assert worker.poll() is None
    cli.close()


async def test_worker_without_reconnect_stops_after_broker_restart(addresses, procs, ctx):
    front, back = addresses
    broker = procs.start("broker", front, back)
    worker = procs.start("worker", back, "--no-reconnect")
    cli = await fresh_client(ctx, front)
    cli.close()

    procs.kill(broker)
    procs.start("broker", front, back)
    # the original's behaviour: a silent broker (or its "I do not know you") stops the worker
    assert (await readline(worker, 3 * HB * 3 + SLACK)).strip() == "STOPPED"
    assert worker.wait(5) == 3
    cli = Client(front, context=ctx, reply_timeout=5)
    await cli.connect()
    await asyncio.sleep(4 * HB)
    assert "Echo" not in await cli.Gate.get_services()
    cli.close()


# -- worker death ---------------------------------------------------------------------


async def test_worker_killed_mid_stream(procs, ctx, tmp_path):
    front, back = f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b"
    procs.start("broker", front, back)
    worker = procs.start("worker", back)
    cli = await fresh_client(ctx, front)
    stream = await cli.Echo.slow_stream(1000, 0.05)
    got = []
    loop = asyncio.get_running_loop()
    killed_at = None

    async def consume():
        nonlocal killed_at
        async for item in stream:
            got.append(item)
            if len(got) == 5:
                procs.kill(worker)
                killed_at = loop.time()
            assert len(got) < 1000, "a stream that lost its worker must not run to its end"

    with pytest.raises(RemoteException) as info:
        await asyncio.wait_for(consume(), 10 + 2 * HB + SLACK)
    # never ends normally, and the error arrives within two heartbeats (+ slack)
    assert loop.time() - killed_at < 2 * HB + SLACK
    assert_worker_lost(info)
    assert got == list(range(len(got)))
    assert not cli.replies
    cli.close()


async def test_worker_killed_mid_hugedata(procs, ctx, tmp_path):
    front, back = f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b"
    procs.start("broker", front, back)
    worker = procs.start("worker", back)
    cli = await fresh_client(ctx, front)
    call = asyncio.ensure_future(cli.Echo.slow_huge(1000, 0.05))
    assert (await readline(worker, 10)).strip() == "HUGE-SENDING"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not any(r.processed for r in cli._huge.values()):  # chunks reached the client
        assert loop.time() < deadline, "no HugeData chunk reached the client"
        await asyncio.sleep(0.01)
    assert not call.done()
    procs.kill(worker)
    killed_at = loop.time()
    with pytest.raises(RemoteException) as info:
        await asyncio.wait_for(call, 2 * HB + SLACK)
    assert loop.time() - killed_at < 2 * HB + SLACK
    assert_worker_lost(info)
    assert not cli.replies
    cli.close()


async def test_second_worker_keeps_serving(procs, ctx, tmp_path):
    front, back = f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b"
    procs.start("broker", front, back)
    first = procs.start("worker", back)
    second = procs.start("worker", back)
    cli = await fresh_client(ctx, front)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    pids = set()
    while pids != {first.pid, second.pid}:
        pids.add(await cli.Echo.pid())
        assert loop.time() < deadline, "both workers should serve"
    pending = asyncio.ensure_future(cli.Echo.sleep(30))  # lands on one of them
    await asyncio.sleep(0.1)
    procs.kill(first)
    killed_at = loop.time()
    # calls made around the kill either succeed on the second worker or fail at once
    # (dispatched to the dead one); from two heartbeats on, every call succeeds
    while loop.time() - killed_at < 2 * HB + 0.5:
        try:
            assert await asyncio.wait_for(cli.Echo.pid(), 2 * HB + SLACK) == second.pid
        except RemoteException as exc:
            assert exc.remote_type == "ServiceUnAvailableError"
        await asyncio.sleep(0.02)
    results = await asyncio.gather(*(cli.Echo.pid() for _ in range(50)))
    assert set(results) == {second.pid}
    # the call that was running on the killed worker (if it was that one) failed promptly
    if not pending.done():
        await asyncio.sleep(2 * HB + SLACK)
    if pending.done() and pending.exception() is not None:
        assert pending.exception().remote_type == "ServiceUnAvailableError"
    else:
        assert not pending.done()  # it runs on the second worker
        pending.cancel()
    cli.close()


async def test_vanished_worker_removed_on_first_heartbeat(procs, ctx, tmp_path, caplog):
    """The broker (in this process, 1 s heartbeat) notices a SIGKILLed worker by the failed send."""
    Settings.configure("MDP_HEARTBEAT_INTERVAL", 1000)
    front, back = f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b"
    broker = AMajordomo(context=ctx)
    broker.bind_frontend(front)
    broker.bind_backend(back)
    broker.run()
    try:
        worker = procs.start("worker", back)
        cli = await fresh_client(ctx, front)
        call = asyncio.ensure_future(cli.Echo.sleep(30))
        await asyncio.sleep(0.2)
        assert len(broker.workers) == 1
        caplog.set_level(logging.WARNING, logger="gaterpc.majordomo")
        procs.kill(worker)
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        with pytest.raises(RemoteException) as info:
            await asyncio.wait_for(call, 10)
        assert_worker_lost(info)
        assert not broker.workers
        # removed at the first heartbeat after the death, not by expiry (3 heartbeats)
        assert "vanished" in caplog.text and "expired" not in caplog.text
        assert loop.time() - killed_at < 2.9
        cli.close()
    finally:
        broker.stop()


# -- in-process: the broker's side -----------------------------------------------------


class Calc(Worker):
    @interface
    async def add(self, a, b):
        return a + b

    @interface
    async def sleep(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    @interface
    async def count(self, n):
        for i in range(n):
            yield i


async def wait_for(predicate, timeout):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def lab(tmp_path, ctx):
    Settings.configure("MDP_HEARTBEAT_INTERVAL", 300)
    front, back = f"ipc://{tmp_path}/front", f"ipc://{tmp_path}/back"
    made = []

    def broker():
        b = AMajordomo(context=ctx)
        b.bind_frontend(front)
        b.bind_backend(back)
        b.run()
        made.append(b)
        return b

    def worker(cls=Calc, service=None, **kwargs):
        w = (service or Service(name="Calc")).create_worker(cls, back, context=ctx, **kwargs)
        made.append(w)
        return w

    raw = zmq.asyncio.Context()
    try:
        yield broker, worker, front, back, raw
    finally:
        for obj in reversed(made):
            obj.stop()
        await asyncio.sleep(0.05)
        raw.destroy(linger=0)


async def test_broker_stop_and_new_broker_in_process(lab, ctx):
    broker, worker, front, back, raw = lab
    b1 = broker()
    w = worker()
    w.run()
    await wait_for(lambda: b1.workers, 5)
    task = w._recv_task
    b1.stop()  # plain DISCONNECT to every worker
    await asyncio.sleep(0.1)
    assert not task.done(), "the worker waits to reconnect"
    b2 = broker()
    await wait_for(lambda: b2.workers, 6 * HB + SLACK)
    assert w.identity in b2.workers
    cli = Client(front, context=ctx, reply_timeout=5)
    assert await cli.Calc.add(1, 2) == 3
    cli.close()
    assert w._recv_task is task  # the same task went on; stop() still ends it for good
    w.stop()
    await asyncio.sleep(0.1)
    assert task.done()
    await wait_for(lambda: not b2.workers, 2)


async def test_disconnect_with_reason_stops_the_worker(lab, caplog):
    broker, worker, front, back, raw = lab
    b = broker()
    # a ':' in the description makes the READY malformed: refused with a reason
    w = worker(service=Service(name="Calc", description="bad:description"))
    caplog.set_level(logging.WARNING)
    w.run()
    await wait_for(lambda: w._recv_task.done(), 3)
    assert not b.workers
    assert "malformed READY body" in caplog.text
    await asyncio.sleep(3 * HB)
    assert not b.workers, "no reconnection after a refusal"


async def test_unknown_worker_gets_disconnect_rate_limited(lab):
    broker, worker, front, back, raw = lab
    Settings.configure("MDP_HEARTBEAT_INTERVAL", 2000)
    b = broker()
    rogue = raw.socket(zmq.DEALER)
    rogue.linger = 0
    rogue.connect(back)
    before = drops_snapshot().get("unknown_worker", 0)
    for _ in range(500):
        await rogue.send_multipart([b"", b"MDPW01", b"\x04"])
    await rogue.send_multipart([b"", b"MDPW01", b"\x03", b"c" * 16, b"", b"r" * 16, b"\x81"])
    got = []
    while await rogue.poll(500):
        got.append(await rogue.recv_multipart())
    assert got, "an unknown worker is told DISCONNECT"
    assert all(m == [b"", b"MDPW01", b"\x05"] for m in got), got
    assert len(got) <= 2, "one DISCONNECT per id per heartbeat interval"
    assert drops_snapshot().get("unknown_worker", 0) - before == 501
    assert not b.workers
    rogue.close()


async def test_worker_registers_again_after_unknown_disconnect(lab, ctx):
    broker, worker, front, back, raw = lab
    b = broker()
    w = worker()
    w.run()
    await wait_for(lambda: b.workers, 5)
    # the broker forgets the worker (as after a restart): the worker's next
    # message gets DISCONNECT and it registers again by itself
    rw = b.workers.pop(w.identity)
    rw.service.remove_worker(rw)
    await wait_for(lambda: w.identity in b.workers, 4 * HB + SLACK)
    cli = Client(front, context=ctx, reply_timeout=5)
    assert await cli.Calc.add(2, 2) == 4
    cli.close()


async def test_failed_message_answers_its_caller(lab, ctx):
    broker, worker, front, back, raw = lab
    b = broker()
    w = worker()
    w.run()
    await wait_for(lambda: b.workers, 5)
    cli = Client(front, context=ctx, reply_timeout=20)
    assert await cli.Calc.add(1, 1) == 2
    before = drops_snapshot().get("broker_error", 0)

    def broken_route(msg, service_b):
        raise ValueError("route bug")

    # a request the fast path hands to the Python routing (here: a service without workers)
    b.register_service("Idle", "no workers")
    await cli._get_services()  # the client learns it before the routing breaks
    b._route_request = broken_route
    with pytest.raises(RemoteException) as info:
        await asyncio.wait_for(cli.Idle.add(1, 2), 3)
    assert info.value.remote_type == "RuntimeError"
    del b._route_request

    # a single reply that makes the fast path fail (its service record is broken)
    svc = b.services["Calc"]
    served = svc.stat_served
    svc.stat_served = None  # None + 1 raises
    try:
        with pytest.raises(RemoteException) as info:
            await asyncio.wait_for(cli.Calc.add(1, 3), 3)
    finally:
        svc.stat_served = served
    assert info.value.remote_type == "RuntimeError"

    rw = b.workers[w.identity]

    class BrokenPartial(dict):
        """The worker's record of replies in progress fails once (the rest of the stream is then dropped)."""
        failed = False

        def __setitem__(self, key, value):
            if not BrokenPartial.failed:
                BrokenPartial.failed = True
                raise ValueError("partial bug")
            dict.__setitem__(self, key, value)

    # a stream item that makes the fast path fail
    async def consume():
        return [i async for i in await cli.Calc.count(3)]

    partial = rw._partial
    rw._partial = BrokenPartial(partial)
    try:
        with pytest.raises(RemoteException) as info:
            await asyncio.wait_for(consume(), 3)
    finally:
        rw._partial = partial
    assert BrokenPartial.failed
    assert info.value.remote_type == "RuntimeError"
    assert drops_snapshot().get("broker_error", 0) - before == 3
    # the capacity of the failed reply came back: the worker still serves everything
    assert not rw._inflight
    assert await asyncio.gather(*(cli.Calc.add(i, 0) for i in range(20))) == list(range(20))
    cli.close()


async def test_capacity_waiters_cleaned_after_timeout():
    Settings.configure("TIMEOUT", 0.1)
    svc = Service(name="S")
    rw = RemoteWorker(b"w1", 300, 1, None, "MDPW01", svc)
    svc.add_worker(rw)
    assert svc.idle_workers.qsize() == 0, "idle_workers is no longer filled"
    taken = await svc.acquire_idle_worker()
    assert taken is rw
    for _ in range(3):
        with pytest.raises(BusyWorkerError):
            await svc.acquire_idle_worker()
    assert not svc._capacity_waiters
    # a waiter is woken when the capacity comes back
    waiter = asyncio.ensure_future(svc.acquire_idle_worker())
    await asyncio.sleep(0.01)
    await svc.release_worker(rw)
    assert await waiter is rw
    assert not svc._capacity_waiters
    # the last worker leaving wakes the waiters: they fail at once
    Settings.configure("TIMEOUT", 30)
    waiter = asyncio.ensure_future(svc.acquire_idle_worker())
    await asyncio.sleep(0.01)
    svc.remove_worker(rw)
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(waiter, 1)
    assert type(info.value).__name__ == "ServiceUnAvailableError"
    assert not svc._capacity_waiters
