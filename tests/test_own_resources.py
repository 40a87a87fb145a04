"""What a role creates, it closes: its own zmq Context, and an event loop the library made.

* A Client, Worker, AMajordomo (and Gate) or AsyncZAPService built without
  ``context=`` terminates the Context it made when it is closed/stopped; a
  Context the user passed stays open.
* A role built where no loop is running, in a thread without a loop, gets a
  loop made by the library: that loop is closed once the last role using it
  is closed and it is not running; a loop the user made is never closed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from gaterpc import base
from gaterpc.core import AMajordomo, AsyncZAPService, Client, Context, Gate, Service, Worker
from gaterpc.utils import interface

from gate_roles.harness import free_port

pytestmark = pytest.mark.timeout(60)


class Calc(Worker):
    @interface
    async def add(self, a, b):
        return a + b


async def until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    assert predicate(), "condition not reached in time"


def in_thread(fn):
    """Run ``fn`` in a fresh thread (no event loop set there) and return its result."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised in the test
            out["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(30)
    assert not t.is_alive(), "the thread did not finish"
    if "error" in out:
        raise out["error"]
    return out["value"]


# -- contexts ---------------------------------------------------------------------------


async def test_own_contexts_are_terminated(tmp_path):
    front, back, zap_addr = f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", f"ipc://{tmp_path}/z"
    zap = AsyncZAPService(addr=zap_addr)
    broker = AMajordomo()
    worker = client = None
    try:
        zap.start()
        broker.bind_frontend(front)
        broker.bind_backend(back)
        broker.run()
        worker = Service(name="Calc").create_worker(Calc, back)
        worker.run()
        await until(lambda: "Calc" in broker.services and broker.services["Calc"].workers)
        client = Client(front, reply_timeout=5)
        await client.connect()
        assert await client.Calc.add(1, 2) == 3
        contexts = [zap.context, broker.ctx, worker._ctx, client.ctx]
        assert len({id(c) for c in contexts}) == 4 and not any(c.closed for c in contexts)

        client.close()
        assert client.ctx.closed
        worker.stop()
        await until(lambda: worker._ctx.closed)
        broker.stop()
        assert broker.ctx.closed
        zap.stop()
        assert zap.context.closed
    finally:
        for role in (client, worker, broker):
            if role is not None:
                (role.close if role is client else role.stop)()
        zap.stop()


async def test_a_closed_client_connects_again(tmp_path):
    ctx = Context()
    front, back = f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b"
    broker = AMajordomo(context=ctx)
    worker = Service(name="Calc").create_worker(Calc, back, context=ctx)
    client = Client(front, reply_timeout=5)
    try:
        broker.bind_frontend(front)
        broker.bind_backend(back)
        broker.run()
        worker.run()
        await until(lambda: "Calc" in broker.services and broker.services["Calc"].workers)
        await client.connect()
        first = client.ctx
        client.close()
        assert first.closed
        await client.connect()  # a new context of its own
        assert client.ctx is not first and not client.ctx.closed
        assert await client.Calc.add(2, 2) == 4
        client.close()
        assert client.ctx.closed
    finally:
        client.close()
        worker.stop()
        broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)


async def test_passed_contexts_stay_open(tmp_path):
    ctx = Context()
    front, back = f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b"
    zap = AsyncZAPService(addr=f"ipc://{tmp_path}/z", context=ctx)
    broker = AMajordomo(context=ctx)
    worker = Service(name="Calc").create_worker(Calc, back, context=ctx)
    client = Client(front, context=ctx, reply_timeout=5)
    try:
        zap.start()
        broker.bind_frontend(front)
        broker.bind_backend(back)
        broker.run()
        worker.run()
        await until(lambda: "Calc" in broker.services and broker.services["Calc"].workers)
        await client.connect()
        assert await client.Calc.add(2, 3) == 5
        client.close()
        worker.stop()
        broker.stop()
        zap.stop()
        await asyncio.sleep(0.2)
        assert not ctx.closed
        sock = ctx.socket(0)  # still usable
        sock.close(linger=0)
    finally:
        client.close()
        worker.stop()
        broker.stop()
        zap.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)


async def test_gate_own_context_is_terminated():
    port = free_port()
    gate = Gate(port, heartbeat=300, multicast=False, gate_bind="127.0.0.1")
    try:
        gate.bind_frontend(f"inproc://gate-own-{port}")
        gate.run()
        await asyncio.sleep(0.05)
        assert not gate.ctx.closed
    finally:
        gate.stop()
    assert gate.ctx.closed


# -- loops ------------------------------------------------------------------------------


def test_a_loop_the_library_made_is_closed_after_its_last_role():
    def scenario():
        ctx = Context()
        try:
            a = AMajordomo(context=ctx)
            loop = a._loop
            assert loop in base._OWN_LOOPS
            w = Service(name="Calc").create_worker(Calc, "inproc://nowhere", context=ctx)
            assert w._loop is loop  # roles share the one loop of the thread
            b = AMajordomo(context=ctx)
            assert b._loop is loop
            a.stop()
            w.stop()
            assert not loop.is_closed(), "other roles still use it"
            b.stop()
            assert loop.is_closed()
            assert loop not in base._OWN_LOOPS
            # the thread's next role gets a new loop
            c = AMajordomo(context=ctx)
            assert c._loop is not loop and not c._loop.is_closed()
            c.stop()
            return c._loop.is_closed()
        finally:
            ctx.destroy(linger=0)

    assert in_thread(scenario) is True


def test_a_loop_the_user_made_is_never_closed():
    def scenario():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        ctx = Context()
        try:
            broker = AMajordomo(context=ctx)
            zap = AsyncZAPService(addr="inproc://user-loop-zap", context=ctx)
            assert broker._loop is loop and loop not in base._OWN_LOOPS
            broker.stop()
            zap.stop()
            return loop.is_closed()
        finally:
            ctx.destroy(linger=0)
            asyncio.set_event_loop(None)
            loop.close()

    assert in_thread(scenario) is False


def test_a_running_loop_is_closed_only_once_it_stops():
    def scenario():
        ctx = Context()
        try:
            broker = AMajordomo(context=ctx)  # built outside the loop: the library's loop
            loop = broker._loop

            async def main():
                broker.bind_frontend("inproc://running-loop")
                broker.run()
                await asyncio.sleep(0.05)
                broker.stop()  # the loop runs: it stays open
                await asyncio.sleep(0.05)
                return loop.is_closed()

            closed_while_running = loop.run_until_complete(main())
            # the next release after it stopped closes it (here: a role made and closed)
            other = AMajordomo(context=ctx)
            assert other._loop is loop
            other.stop()
            return closed_while_running, loop.is_closed()
        finally:
            ctx.destroy(linger=0)

    assert in_thread(scenario) == (False, True)


def test_no_resource_warning_in_a_program_of_the_original(tmp_path):
    """Roles built outside a loop, without context=, run by hand: nothing is left unclosed."""
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, gc
        from gaterpc.core import AMajordomo, AsyncZAPService, Client, Service, Worker
        from gaterpc.utils import interface

        class Calc(Worker):
            @interface
            async def add(self, a, b):
                return a + b

        front, back, zap_addr = "ipc://{tmp_path}/f", "ipc://{tmp_path}/b", "ipc://{tmp_path}/z"
        zap = AsyncZAPService(addr=zap_addr)
        broker = AMajordomo()
        broker.bind_frontend(front)
        broker.bind_backend(back)
        worker = Service(name="Calc").create_worker(Calc, back)

        async def main():
            zap.start()
            broker.run()
            worker.run()
            for _ in range(200):
                if "Calc" in broker.services and broker.services["Calc"].workers:
                    break
                await asyncio.sleep(0.01)
            client = Client(front, reply_timeout=5)
            await client.connect()
            assert await client.Calc.add(1, 1) == 2
            client.close()
            worker.stop()
            await asyncio.sleep(0.1)

        loop = broker._loop
        loop.run_until_complete(main())
        broker.stop()
        zap.stop()
        assert loop.is_closed(), "the library's loop is closed after the last role"
        gc.collect()
        print("done")
    """))
    proc = subprocess.run([sys.executable, "-X", "dev", "-W", "error::ResourceWarning", str(script)],
                          capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    assert "ResourceWarning" not in proc.stderr and "nclosed" not in proc.stderr, proc.stderr


# -- a vanished broker --------------------------------------------------------------------

ROLES = Path(__file__).resolve().parent / "procs" / "roles.py"


async def test_own_contexts_are_terminated_after_the_broker_was_killed(tmp_path):
    """The broker process is SIGKILLed: a worker and a client without context= still close theirs."""
    front, back = f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b"
    env = dict(os.environ, PYTHONPATH=str(Path(base.__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, str(ROLES), "broker", front, back], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    worker = client = None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line.strip() == b"READY"
        worker = Service(name="Calc").create_worker(Calc, back, workers_heartbeat=300)
        worker.run()
        client = Client(front, reply_timeout=5, heartbeat=300)
        deadline = time.monotonic() + 10
        while True:  # the worker registers asynchronously: retry until the broker knows the service
            try:
                await client.connect()
                assert await client.Calc.add(2, 5) == 7
                break
            except Exception:
                client.close()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        await asyncio.sleep(0.3)
        worker.stop()  # its DISCONNECT cannot be delivered: the linger bounds the wait
        client.close()
        assert client.ctx.closed
        await until(lambda: worker._ctx.closed, timeout=5)
    finally:
        if client is not None:
            client.close()
        if worker is not None:
            worker.stop()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        proc.stdout.close()


async def test_a_worker_run_again_keeps_its_context(tmp_path):
    """stop() then run() at once: the first receive task ending does not close what the second uses."""
    ctx = Context()
    back = f"ipc://{tmp_path}/b"
    broker = AMajordomo(context=ctx)
    worker = Service(name="Calc").create_worker(Calc, back, workers_heartbeat=300)
    try:
        broker.bind_backend(back)
        broker.run()
        worker.run()
        await until(lambda: worker.identity in broker.workers)
        worker.stop()
        worker.run()  # before the first task has processed its cancellation
        await asyncio.sleep(0.3)
        assert not worker._ctx.closed
        await until(lambda: worker.identity in broker.workers and worker.ready)
        worker.stop()
        await until(lambda: worker._ctx.closed)
    finally:
        worker.stop()
        broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)


def test_a_gate_that_cannot_bind_leaves_nothing_open():
    """The constructor fails (port taken): the context and loop it made are closed, nothing leaks."""
    import gc

    import zmq

    def scenario():
        port = free_port()
        first = Gate(port, multicast=False, gate_bind="127.0.0.1")
        loop = first._loop
        try:
            with pytest.raises(zmq.ZMQError):
                Gate(port, multicast=False, gate_bind="127.0.0.1")
            gc.collect()  # an unclosed context would warn here (an error under the test settings)
            assert base._OWN_LOOPS.get(loop) == 1, "only the first gate uses the loop"
        finally:
            first.stop()
        return loop.is_closed()

    assert in_thread(scenario) is True


def test_bad_arguments_leave_nothing_open():
    """A constructor refusing its arguments makes no context (an unclosed one would warn at collection)."""
    import gc

    from gaterpc.helpers import SocketAddressError

    def scenario():
        with pytest.raises(ValueError):
            Client("inproc://x", zap_mechanism="PLAIN", zap_credentials=("only-user",))
        with pytest.raises(SocketAddressError):
            AsyncZAPService(addr="nowhere")
        with pytest.raises(ValueError):
            Service(name="Calc").create_worker(Calc, "inproc://x", zap_mechanism="BAD")
        gc.collect()
        return [loop for loop, users in base._OWN_LOOPS.items() if users]

    assert in_thread(scenario) == []
