"""Eager first step of ``async def`` interfaces (``gaterpc.execute.Runner``).

A coroutine interface runs synchronously up to its first suspension: when
it finishes without suspending, the reply is sent before ``Runner.run``
returns and nothing is left tracked; when it suspends, a task continues it
from there.  The calls are made from a loop callback, as the worker's
receive path makes them.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import uuid

import pytest

from gaterpc.core import AMajordomo, Client, Context, Service, Worker
from gaterpc.exceptions import RemoteException
from gaterpc.execute import KIND_CORO, Runner
from gaterpc.global_settings import Settings
from gaterpc.hugedata import HugeData
from gaterpc.protocol import STREAM_END, STREAM_TAG
from gaterpc.serialization import msg_pack, msg_unpack
from gaterpc.utils import interface

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


class Owner:
    thread_executor = None
    process_executor = None


class Harness:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sent: list[tuple[bytes, tuple[bytes, ...]]] = []
        self.tasks: set[asyncio.Future[object]] = set()
        self.runner = Runner(Owner(), self.loop, self._send, lambda: None, self.tasks)
        self.sent_during_run: list[int] = []

    def _send(self, client_id: bytes, request_id: bytes, body: tuple[bytes, ...]) -> None:
        self.sent.append((request_id, tuple(body)))

    def _run(self, rid: bytes, fn, args) -> None:
        self.runner.run(b"client", rid, fn, KIND_CORO, args, {})
        self.sent_during_run.append(len(self.sent))

    async def call(self, rid: bytes, fn, *args) -> None:
        """Run from a plain loop callback (no current task), as the worker does."""
        done = self.loop.create_future()
        self.loop.call_soon(lambda: (self._run(rid, fn, args), done.set_result(None)))
        await done

    def replies(self, rid: bytes) -> list[tuple[bytes, ...]]:
        return [body for r, body in self.sent if r == rid]

    async def wait_reply(self, rid: bytes, n: int = 1) -> list[tuple[bytes, ...]]:
        for _ in range(500):
            if len(self.replies(rid)) >= n:
                return self.replies(rid)
            await asyncio.sleep(0.01)
        raise AssertionError(f"no reply for {rid!r}")


def single(body: tuple[bytes, ...]) -> dict:
    assert len(body) == 1
    return msg_unpack(body[0])


async def test_immediate_return_replies_before_run_returns_and_tracks_nothing():
    h = Harness()

    async def add(a, b):
        return a + b

    await h.call(b"r1", add, 2, 3)
    assert h.sent_during_run == [1]  # sent from run() itself
    assert single(h.replies(b"r1")[0]) == {"result": 5, "exception": None}
    assert not h.tasks and not h.runner.active
    await asyncio.sleep(0.05)
    assert len(h.sent) == 1  # nothing more once the finished task has run


async def test_exception_in_the_first_step_is_answered_at_once():
    h = Harness()

    async def boom():
        raise KeyError("nope")

    await h.call(b"r1", boom)
    assert h.sent_during_run == [1]
    reply = single(h.replies(b"r1")[0])
    assert reply["result"] is None and reply["exception"][0] == "KeyError"
    assert not h.tasks
    await asyncio.sleep(0.05)
    assert len(h.sent) == 1


async def test_exception_after_suspending_is_answered():
    h = Harness()

    async def late_boom():
        await asyncio.sleep(0.01)
        raise ValueError("late")

    await h.call(b"r1", late_boom)
    assert h.sent_during_run == [0]
    reply = single((await h.wait_reply(b"r1"))[0])
    assert reply["exception"][0] == "ValueError"
    assert not h.tasks and not h.runner.active


async def test_sleep_suspends_and_a_task_finishes_the_call():
    h = Harness()
    steps = []

    async def slow(x):
        steps.append("first")
        await asyncio.sleep(0.02)
        steps.append("second")
        await asyncio.sleep(0)
        return x * 2

    await h.call(b"r1", slow, 21)
    assert steps == ["first"]  # the first step ran synchronously
    assert h.sent_during_run == [0]
    assert len(h.tasks) == 1 and (b"client", b"r1") in h.runner.active
    assert single((await h.wait_reply(b"r1"))[0])["result"] == 42
    assert steps == ["first", "second"]
    assert not h.tasks and not h.runner.active


async def test_awaiting_a_future_and_another_task():
    h = Harness()
    fut = asyncio.get_running_loop().create_future()

    async def helper():
        await asyncio.sleep(0.01)
        return "from task"

    async def waits():
        a = await fut
        b = await asyncio.create_task(helper())
        return [a, b]

    await h.call(b"r1", waits)
    assert h.sent_during_run == [0]
    await asyncio.sleep(0.02)
    assert not h.sent  # still waiting for the future
    fut.set_result("from future")
    assert single((await h.wait_reply(b"r1"))[0])["result"] == ["from future", "from task"]


async def test_future_already_done_when_the_task_takes_over():
    h = Harness()
    fut = asyncio.get_running_loop().create_future()

    async def waits():
        return await fut

    await h.call(b"r1", waits)
    fut.set_result(7)  # resolved before the continuing task ever ran
    assert single((await h.wait_reply(b"r1"))[0])["result"] == 7


async def test_cancel_of_a_suspended_call_sends_nothing_and_reaches_the_coroutine():
    h = Harness()
    seen = []

    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("finally")

    await h.call(b"r1", forever)
    assert h.runner.cancel(b"client", b"r1")
    await asyncio.sleep(0.05)
    assert seen == ["cancelled", "finally"]
    assert not h.sent and not h.tasks and not h.runner.active


async def test_cancel_before_the_continuing_task_first_runs():
    h = Harness()
    seen = []

    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    def run_and_cancel():
        h._run(b"r1", forever, ())
        h.runner.cancel(b"client", b"r1")  # same callback: the task has not stepped yet

    h.loop.call_soon(run_and_cancel)
    await asyncio.sleep(0.05)
    assert seen == ["cancelled"]
    assert not h.sent and not h.tasks


async def test_the_first_step_sees_the_task_that_continues_it():
    h = Harness()
    seen = []

    async def who():
        first = asyncio.current_task()
        await asyncio.sleep(0.01)
        seen.append((first, asyncio.current_task()))
        return first is asyncio.current_task()

    await h.call(b"r1", who)
    assert single((await h.wait_reply(b"r1"))[0])["result"] is True
    assert seen[0][0] is not None
    # outside the call the loop callback has no current task again
    assert asyncio.current_task() is not seen[0][0]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
async def test_timeout_entered_in_the_first_step_cancels_the_call():
    h = Harness()

    async def bounded():
        async with asyncio.timeout(0.05):
            await asyncio.sleep(3600)
        return "not reached"

    async def unbounded():
        async with asyncio.timeout(5):
            await asyncio.sleep(0.01)
        return "in time"

    await h.call(b"r1", bounded)
    await h.call(b"r2", unbounded)
    assert single((await h.wait_reply(b"r1"))[0])["exception"][0] == "TimeoutError"
    assert single((await h.wait_reply(b"r2"))[0])["result"] == "in time"


async def test_contextvars_of_the_first_step_stay_with_the_call():
    h = Harness()
    VAR.set("caller")

    async def setter(value):
        before = VAR.get()
        VAR.set(value)
        await asyncio.sleep(0.01)
        return [before, VAR.get()]

    # The first step runs in a copy of the caller's context, kept by the task.
    await h.call(b"r1", setter, "a")
    await h.call(b"r2", setter, "b")
    assert VAR.get() == "caller"  # nothing leaked into the caller's context
    assert single((await h.wait_reply(b"r1"))[0])["result"] == ["caller", "a"]
    assert single((await h.wait_reply(b"r2"))[0])["result"] == ["caller", "b"]

    async def immediate():
        VAR.set("inside")
        return VAR.get()

    await h.call(b"r3", immediate)
    assert single(h.replies(b"r3")[0])["result"] == "inside"
    assert VAR.get() == "caller"


async def test_run_from_inside_a_task_restores_that_task():
    h = Harness()
    outer = asyncio.current_task()
    seen = []

    async def who():
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        return 1

    h.runner.run(b"client", b"r1", who, KIND_CORO, (), {})
    assert asyncio.current_task() is outer
    assert seen[0] is not outer and seen[0] is not None
    assert single((await h.wait_reply(b"r1"))[0])["result"] == 1


async def test_async_def_returning_a_generator_streams():
    h = Harness()

    async def stream(n):
        def gen():
            yield from range(n)
        return gen()

    await h.call(b"r1", stream, 3)
    bodies = await h.wait_reply(b"r1", 4)
    assert bodies[:3] == [(STREAM_TAG, msg_pack(i)) for i in range(3)]
    assert bodies[3] == (STREAM_TAG, STREAM_END)


async def test_async_def_returning_an_async_generator_streams_after_suspending():
    h = Harness()

    async def stream(n):
        await asyncio.sleep(0.01)

        async def agen():
            for i in range(n):
                await asyncio.sleep(0)
                yield i
        return agen()

    await h.call(b"r1", stream, 2)
    bodies = await h.wait_reply(b"r1", 3)
    assert bodies == [(STREAM_TAG, msg_pack(0)), (STREAM_TAG, msg_pack(1)), (STREAM_TAG, STREAM_END)]


async def test_calls_that_do_not_suspend_leave_no_task_behind():
    h = Harness()

    async def echo(x):
        return x

    await h.call(b"r0", echo, 0)
    before = len(asyncio.all_tasks())
    for i in range(1, 50):
        await h.call(b"r%d" % i, echo, i)
    assert [single(h.replies(b"r%d" % i)[0])["result"] for i in range(50)] == list(range(50))
    # Before 3.12 at most the one idle standby task exists, whatever the number of calls.
    assert len(asyncio.all_tasks()) <= before
    assert not h.tasks and not h.runner.active
    h.runner.close()


async def test_a_task_kept_by_a_first_step_finishes_and_is_not_reused():
    h = Harness()
    kept = []

    async def keep():
        kept.append(asyncio.current_task())
        return 1

    async def who():
        return id(asyncio.current_task())

    await h.call(b"r1", keep)
    await h.call(b"r2", who)
    assert single(h.replies(b"r1")[0])["result"] == 1
    assert kept[0] is not None
    assert single(h.replies(b"r2")[0])["result"] != id(kept[0])
    await asyncio.wait_for(kept[0], 5)  # it ends, as the task of a finished call does
    assert kept[0].done() and not kept[0].cancelled()
    h.runner.close()


async def test_a_first_step_that_cancels_its_own_task_does_not_cancel_the_next_call():
    """As with an eager task (3.12+) on every version: a call that cancels its own task
    and returns ends cancelled, and its caller gets that error at once (no time-out)."""
    h = Harness()

    async def self_cancel():
        asyncio.current_task().cancel()
        return "returned"

    async def later(x):
        await asyncio.sleep(0.01)
        return x

    await h.call(b"r1", self_cancel)
    await h.call(b"r2", later, 7)
    reply = single((await h.wait_reply(b"r1"))[0])
    assert reply["result"] is None and reply["exception"][0] == "CancelledError"
    assert single((await h.wait_reply(b"r2"))[0])["result"] == 7
    h.runner.close()


@pytest.mark.parametrize("where", ["first step", "after suspending"])
async def test_a_call_that_raises_cancelled_error_gets_an_error_reply(where):
    """CancelledError raised by the call itself (not a CANCEL from the broker) is
    answered like any other error, on every Python version."""
    h = Harness()

    async def cancels():
        if where == "after suspending":
            await asyncio.sleep(0.01)
        raise asyncio.CancelledError("from the call")

    await h.call(b"r1", cancels)
    reply = single((await h.wait_reply(b"r1"))[0])
    assert reply["result"] is None and reply["exception"][0] == "CancelledError"
    assert not h.runner.active
    h.runner.close()


async def test_cancel_and_cancel_all_send_no_reply():
    h = Harness()

    async def slow(x):
        await asyncio.sleep(5)
        return x

    for rid in (b"r1", b"r2", b"r3"):
        await h.call(rid, slow, 1)
    assert len(h.runner.active) == 3
    assert h.runner.cancel(b"client", b"r1")
    h.runner.cancel_all()
    await asyncio.sleep(0.05)
    assert not h.runner.active and not h.tasks
    assert all(not h.replies(rid) for rid in (b"r1", b"r2", b"r3"))
    h.runner.close()


async def test_a_call_made_from_inside_a_first_step_runs_as_another_task():
    h = Harness()
    seen = []

    async def inner():
        seen.append(("inner", asyncio.current_task()))
        await asyncio.sleep(0.01)
        return "inner"

    async def outer():
        seen.append(("outer", asyncio.current_task()))
        h.runner.run(b"client", b"r2", inner, KIND_CORO, (), {})
        assert asyncio.current_task() is seen[0][1]  # back to its own task after the nested call
        await asyncio.sleep(0.01)
        return "outer"

    await h.call(b"r1", outer)
    assert single((await h.wait_reply(b"r1"))[0])["result"] == "outer"
    assert single((await h.wait_reply(b"r2"))[0])["result"] == "inner"
    assert seen[0][1] is not seen[1][1]
    h.runner.close()


async def test_runner_close_ends_the_idle_standby_task():
    h = Harness()

    async def echo(x):
        return x

    before = set(asyncio.all_tasks())
    await h.call(b"r1", echo, 1)
    extra = set(asyncio.all_tasks()) - before
    h.runner.close()
    if extra:  # before 3.12: the standby task
        await asyncio.wait_for(asyncio.gather(*extra), 5)
    assert set(asyncio.all_tasks()) <= before
    await h.call(b"r2", echo, 2)  # a later call makes a new one
    assert single(h.replies(b"r2")[0])["result"] == 2
    h.runner.close()


# -- through a real worker ---------------------------------------------------------


class Eager(Worker):
    @interface
    async def now(self, x):
        return x

    @interface
    async def later(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    @interface
    async def huge(self, n):
        return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG, data=msg_pack(b"z" * n))


@pytest.fixture
async def lab():
    ctx = Context()
    name = uuid.uuid4().hex
    front, back = f"inproc://{name}-f", f"inproc://{name}-b"
    broker = AMajordomo(context=ctx, heartbeat=300)
    broker.bind_frontend(front)
    broker.bind_backend(back)
    worker = Service(name="Eager").create_worker(Eager, back, workers_heartbeat=300, context=ctx)
    client = Client(front, context=ctx, reply_timeout=20)
    try:
        broker.run()
        worker.run()
        for _ in range(200):
            svc = broker.services.get("Eager")
            if svc is not None and svc.workers:
                break
            await asyncio.sleep(0.02)
        await client.connect()
        yield broker, worker, client
    finally:
        client.close()
        worker.stop()
        broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)


async def test_worker_answers_immediate_suspended_and_hugedata_calls(lab):
    broker, worker, client = lab
    results = await asyncio.wait_for(asyncio.gather(
        *(client.Eager.now(i) for i in range(50)), client.Eager.later(0.05)), 10)
    assert results == list(range(50)) + [0.05]
    assert await asyncio.wait_for(client.Eager.huge(200_000), 10) == b"z" * 200_000
    assert not worker.requests


async def test_interleaved_immediate_and_suspending_calls_all_answered(lab):
    broker, worker, client = lab
    calls = [client.Eager.now(i) if i % 3 else client.Eager.later(0) for i in range(600)]
    results = await asyncio.wait_for(asyncio.gather(*calls), 30)
    assert results == [i if i % 3 else 0 for i in range(600)]
    assert await until_empty(worker)
    # Before 3.12 at most one idle standby task is left in the worker's runner.
    sb = worker._runner._standby
    assert sb is None or not sb.task.done()


async def until_empty(worker):
    for _ in range(200):
        if not worker.requests and not worker._runner.active:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_shutdown_grace_cancels_a_suspended_call(lab):
    broker, worker, client = lab
    call = asyncio.create_task(client.Eager.later(30))
    for _ in range(100):
        if worker.requests:
            break
        await asyncio.sleep(0.02)
    assert len(worker.requests) == 1
    left = await asyncio.wait_for(worker.shutdown(grace=0.2), 10)
    assert left == 1
    with pytest.raises(RemoteException) as info:
        await asyncio.wait_for(call, 5)
    assert info.value.remote_type == "ServiceUnAvailableError"
