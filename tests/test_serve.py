"""``gaterpc.serve.serve`` and ``Worker.shutdown``: graceful stop in order, in one process."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest

from gaterpc.core import AMajordomo, Client, Context, Service, Worker
from gaterpc.exceptions import RemoteException
from gaterpc.serve import serve
from gaterpc.utils import interface


class Slow(Worker):
    @interface
    async def slow(self, seconds):
        await asyncio.sleep(seconds)
        return "done"

    @interface
    def count(self, n):
        yield from range(n)

    @interface
    def add(self, a, b):
        return a + b


@pytest.fixture
async def lab():
    ctx = Context()
    name = uuid.uuid4().hex
    front, back = f"inproc://{name}-f", f"inproc://{name}-b"
    broker = AMajordomo(context=ctx, heartbeat=300)
    broker.bind_frontend(front)
    broker.bind_backend(back)
    worker = Service(name="Slow").create_worker(Slow, back, workers_heartbeat=300, context=ctx)
    client = Client(front, context=ctx, reply_timeout=20)
    try:
        yield ctx, broker, worker, client
    finally:
        client.close()
        worker.stop()
        broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)


async def wait_registered(broker, n=1):
    for _ in range(200):
        svc = broker.services.get("Slow")
        if svc is not None and len(svc.workers) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the worker never registered")


async def wait_running(worker, n):
    """Until ``n`` requests run at ``worker`` (else fail after 10 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(worker.requests) < n:
        assert loop.time() < deadline, f"{len(worker.requests)} of {n} calls reached the worker"
        await asyncio.sleep(0.01)


async def test_stop_event_drains_calls_then_stops_everything(lab):
    ctx, broker, worker, client = lab
    stop = asyncio.Event()
    served = asyncio.create_task(serve(broker, worker, grace=10, stop=stop))
    await wait_registered(broker)
    await client.connect()
    calls = [asyncio.create_task(client.Slow.slow(0.5)) for _ in range(3)]
    await wait_running(worker, 3)
    stop.set()
    await asyncio.sleep(0.05)
    # a call that arrives while the worker drains is refused at once, with the reason
    with pytest.raises(RemoteException, match="shutting down"):
        await asyncio.wait_for(client.Slow.add(1, 2), 5)
    assert await asyncio.wait_for(asyncio.gather(*calls), 10) == ["done"] * 3
    assert await asyncio.wait_for(served, 10) is None
    assert not worker.is_alive()
    assert broker._closed and not broker.workers


async def test_grace_expiry_cancels_and_the_caller_still_gets_an_answer(lab):
    ctx, broker, worker, client = lab
    broker.run()
    worker.run()
    await wait_registered(broker)
    await client.connect()
    call = asyncio.create_task(client.Slow.slow(30))
    await wait_running(worker, 1)
    left = await asyncio.wait_for(worker.shutdown(grace=0.3), 10)
    assert left == 1
    # DISCONNECT made the broker fail the call at once (not after 30 s)
    with pytest.raises(RemoteException) as info:
        await asyncio.wait_for(call, 5)
    assert info.value.remote_type == "ServiceUnAvailableError"
    assert "Slow" not in broker.services or not broker.services["Slow"].workers


async def test_shutdown_waits_for_a_stream_to_finish(lab):
    ctx, broker, worker, client = lab
    broker.run()
    worker.run()
    await wait_registered(broker)
    await client.connect()
    stream = await client.Slow.count(2000)
    shutting = asyncio.create_task(worker.shutdown(grace=10))
    items = [i async for i in stream]
    assert items == list(range(2000))
    assert await asyncio.wait_for(shutting, 10) == 0


async def test_signal_ends_serve_and_handlers_are_removed(lab):
    ctx, broker, worker, client = lab
    loop = asyncio.get_running_loop()
    served = asyncio.create_task(serve(broker, worker, grace=1, signals=(signal.SIGUSR1,)))
    await wait_registered(broker)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert await asyncio.wait_for(served, 10) == "SIGUSR1"
    # the handler is gone: installing our own works and receives the next one
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, got.set_result, True)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await asyncio.wait_for(got, 5) is True
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
