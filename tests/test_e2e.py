"""End-to-end: broker, worker and client in one process (inproc and ipc)."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from gaterpc.core import AMajordomo, Client, Context, Service, SimpleClient, Worker
from gaterpc.exceptions import RemoteException
from gaterpc.global_settings import Settings
from gaterpc.utils import HugeData, StreamReply, interface, msg_pack


def cpu_bound(n):
    """Module-level, so it can run in a process pool."""
    return sum(range(n)), os.getpid()


class Calc(Worker):
    @interface
    async def add(self, a, b):
        return a + b

    @interface
    def mul(self, a, b):
        return a * b

    @interface("thread")
    def pair(self, x):
        return (x, x), threading.current_thread().name

    @interface("process")
    def crunch(self, n):
        return cpu_bound(n)

    @interface
    def count(self, n):
        yield from range(n)

    @interface
    async def acount(self, n):
        for i in range(n):
            yield i

    @interface
    def odd_items(self):
        yield None
        yield b"GateStreamEnd"
        yield "last"

    @interface
    async def fail(self):
        raise KeyError("missing")

    @interface
    async def fail_later(self, n):
        for i in range(n):
            yield i
        raise ValueError("stream broke")

    @interface
    def unencodable(self):
        return {1, 2, 3}

    @interface
    async def dump(self, n):
        return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG,
                        data=msg_pack({"blob": b"x" * n}))

    @interface
    async def sleep(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    @interface
    def echo(self, *args, **kwargs):
        return [args, kwargs]

    def not_exposed(self):
        return "secret"


class Cluster:
    def __init__(self, ctx, broker, worker, client, frontend, backend):
        self.ctx, self.broker, self.worker, self.client = ctx, broker, worker, client
        self.frontend, self.backend = frontend, backend

    async def stop(self):
        self.client.close()
        self.worker.stop()
        self.broker.stop()
        await asyncio.sleep(0.05)
        self.ctx.destroy(linger=0)


async def start_cluster(transport, tmp_path, heartbeat=None, reply_timeout=None, worker_heartbeat=None):
    ctx = Context()
    if transport == "inproc":
        frontend, backend = f"inproc://front-{id(ctx)}", f"inproc://back-{id(ctx)}"
    else:
        frontend, backend = f"ipc://{tmp_path}/front", f"ipc://{tmp_path}/back"
    broker = AMajordomo(context=ctx, heartbeat=heartbeat)
    broker.bind_frontend(frontend)
    broker.bind_backend(backend)
    broker.run()
    worker = Service(name="Calc").create_worker(Calc, backend, context=ctx,
                                                workers_heartbeat=worker_heartbeat or heartbeat)
    worker.run()
    for _ in range(200):
        if "Calc" in broker.services and broker.services["Calc"].workers:
            break
        await asyncio.sleep(0.01)
    client = Client(frontend, context=ctx, reply_timeout=reply_timeout)
    await client.connect()
    return Cluster(ctx, broker, worker, client, frontend, backend)


@pytest.fixture(params=["inproc", "ipc"])
async def cluster(request, tmp_path):
    c = await start_cluster(request.param, tmp_path)
    yield c
    await c.stop()


async def test_calls_of_every_kind(cluster):
    cli = cluster.client
    assert await cli.Calc.add(2, 3) == 5
    assert await cli.Calc.mul(4, 5) == 20
    value, thread = await cli.Calc.pair(7)
    assert value == [7, 7] and thread != "MainThread"
    total, pid = await cli.Calc.crunch(1000)
    assert total == sum(range(1000)) and pid != os.getpid()
    assert [i async for i in await cli.Calc.count(5)] == [0, 1, 2, 3, 4]
    assert [i async for i in await cli.Calc.acount(3)] == [0, 1, 2]
    assert await cli.Calc.echo(1, (2, 3), b"\xff", "ü", x={"k": [1]}) == [[1, [2, 3], b"\xff", "ü"], {"x": {"k": [1]}}]
    assert len(cli.replies) == 0


async def test_internal_service(cluster):
    cli = cluster.client
    assert await cli.Gate.get_services() == ["Calc", "Gate"]
    assert await cli.Gate.query_service("Calc") == "gate-rpc service"
    assert await cli.Gate.query_service("Nope") is None
    info = await cli.Gate.info()
    assert info == {"my_id": cluster.broker.identity, "services": ["Calc"]}
    assert await cli.Gate.keepalive(b"heartbeat") == b"200"
    assert await cli.Gate.keepalive("heartbeat") == b"400"
    interfaces = await cli.Calc.get_interfaces()
    assert "not_exposed" not in interfaces
    assert interfaces["add"] == {"doc": None, "signature": "(a, b)"}
    assert interfaces["get_interfaces"] == {"doc": None, "signature": "()"}


async def test_default_service_and_kwargs_named_like_knock(cluster):
    cli = cluster.client
    cli.default_service = "Calc"
    assert await cli.add(1, 2) == 3
    # C2: user keyword arguments named like knock()'s parameters pass through
    assert await cli.Calc.echo(service_name=1, func_name=2) == [[], {"service_name": 1, "func_name": 2}]


async def test_remote_errors_arrive_promptly(cluster):
    cli = cluster.client
    loop = asyncio.get_running_loop()
    with pytest.raises(RemoteException) as info:
        await cli.Calc.fail()
    assert str(info.value).startswith("\n  RemoteTraceback (KeyError):\n  KeyError('missing')\n  ")
    assert info.value.remote_type == "KeyError"
    calls = (lambda: cli.Calc.nope(), lambda: cli.Calc.not_exposed(), lambda: cli.knock("Calc", "_private"),
             lambda: cli.Calc.echo(__x=1), lambda: cli.Calc.unencodable(), lambda: cli.Calc.add(1))
    for call in calls:
        start = loop.time()
        with pytest.raises(RemoteException):
            await call()
        assert loop.time() - start < 1.0
    with pytest.raises(AttributeError, match='The remote service named "Nope" was not found.'):
        await cli.Nope.x()
    assert len(cli.replies) == 0


async def test_unencodable_result_names_the_error(cluster):
    with pytest.raises(RemoteException) as info:
        await cluster.client.Calc.unencodable()
    assert info.value.remote_type == "MsgPackError"


async def test_stream_errors_and_bookkeeping(cluster):
    cli = cluster.client
    stream = await cli.Calc.fail_later(2)
    assert isinstance(stream, StreamReply)
    items = []
    with pytest.raises(RemoteException, match="stream broke"):
        async for i in stream:
            items.append(i)
    assert items == [0, 1]
    assert len(cli.replies) == 0, "an errored stream leaves client.replies"
    # None items and an item equal to the end tag are delivered (the original lost them)
    assert [i async for i in await cli.Calc.odd_items()] == [None, b"GateStreamEnd", "last"]
    # an abandoned stream (aclose) is forgotten
    stream = await cli.Calc.count(100000)
    assert await stream.__anext__() == 0
    await stream.aclose()
    assert stream.is_exit()
    await asyncio.sleep(0.05)
    assert len(cli.replies) == 0


async def test_long_stream_is_complete_and_ordered(cluster):
    got = [i async for i in await cluster.client.Calc.count(3000)]
    assert got == list(range(3000))
    # a consumer that yields to the loop on every item still gets everything
    got = []
    async for i in await cluster.client.Calc.count(20000):
        got.append(i)
        await asyncio.sleep(0)
    assert got == list(range(20000))


async def test_hugedata_repeatedly(cluster):
    cli = cluster.client
    for n in (10, 100_000, 3_000_000):
        assert await cli.Calc.dump(n) == {"blob": b"x" * n}
    assert len(cli.replies) == 0


async def test_many_concurrent_calls(cluster):
    cli = cluster.client
    results = await asyncio.gather(*(cli.Calc.add(i, i) for i in range(2000)))
    assert results == [2 * i for i in range(2000)]
    assert len(cli.replies) == 0


async def test_concurrent_calls_before_connect(tmp_path):
    c = await start_cluster("ipc", tmp_path)
    try:
        cli = Client(c.frontend, context=c.ctx)
        results = await asyncio.gather(*(cli.Calc.add(i, 1) for i in range(50)))
        assert results == [i + 1 for i in range(50)]
        cli.close()
    finally:
        await c.stop()


async def test_reply_timeout_is_builtin_timeout_error(tmp_path):
    c = await start_cluster("inproc", tmp_path, reply_timeout=0.2)
    try:
        with pytest.raises(TimeoutError, match="Timeout while requesting the Majordomo service."):
            await c.client.Calc.sleep(2)
        assert len(c.client.replies) == 0
    finally:
        await c.stop()


async def test_worker_death_fails_inflight_calls(tmp_path):
    c = await start_cluster("ipc", tmp_path, heartbeat=100)
    try:
        call = asyncio.ensure_future(c.client.Calc.sleep(30))
        await asyncio.sleep(0.2)
        # The worker vanishes without a word (socket closed, no DISCONNECT).
        c.worker._lsock.close()
        c.worker._recv_task.cancel()
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RemoteException) as info:
            await asyncio.wait_for(call, 5)
        assert info.value.remote_type == "ServiceUnAvailableError"
        assert loop.time() - start < 1.5  # liveness window: 3 x 100 ms (+ tick)
    finally:
        await c.stop()


async def test_worker_stop_is_seen_at_once(tmp_path):
    c = await start_cluster("ipc", tmp_path)
    try:
        call = asyncio.ensure_future(c.client.Calc.sleep(30))
        await asyncio.sleep(0.1)
        c.worker.stop()
        with pytest.raises(RemoteException) as info:
            await asyncio.wait_for(call, 2)
        assert info.value.remote_type == "ServiceUnAvailableError"
        with pytest.raises(RemoteException):
            await asyncio.wait_for(c.client.Calc.add(1, 2), 2)
    finally:
        await c.stop()


async def test_client_reconnects_after_close(cluster):
    cli = cluster.client
    assert await cli.Calc.add(1, 1) == 2
    cli.close()
    assert cli.ready is None
    assert await cli.Calc.add(2, 2) == 4


async def test_simple_client(cluster):
    def blocking():
        sc = SimpleClient(cluster.frontend.replace("inproc", "inproc"), reply_timeout=2)
        try:
            return sc.Calc.add(1, 2), sc.Gate.get_services(), sc.Calc.fail()
        finally:
            sc._close()

    if cluster.frontend.startswith("inproc"):
        pytest.skip("SimpleClient has its own zmq.Context: inproc cannot reach the broker")
    ok, services, err = await asyncio.to_thread(blocking)
    assert ok == {"result": 3, "exception": None}
    assert services == {"result": ["Calc", "Gate"], "exception": None}
    assert err["result"] is None and err["exception"][0] == "KeyError"


async def test_example_12_1_runs_unchanged(tmp_path):
    """The original's broker/worker/client example, with our addresses."""
    Settings.setup()
    ctx = Context()
    broker = AMajordomo(context=ctx)
    broker.bind_backend("inproc://calc-backend")
    broker.bind_frontend(f"ipc://{tmp_path}/calc")
    broker.run()
    worker = Service(name="Calc").create_worker(Calc, "inproc://calc-backend", context=ctx)
    worker.run()
    await asyncio.sleep(0.2)
    client = Client(f"ipc://{tmp_path}/calc")
    await client.connect()
    assert await client.Calc.add(2, 3) == 5
    assert [i async for i in await client.Calc.count(3)] == [0, 1, 2]
    assert await client.Gate.get_services() == ["Calc", "Gate"]
    client.close()
    worker.stop()
    broker.stop()
    await asyncio.sleep(0.1)
    client.ctx.destroy(linger=0)
    ctx.destroy(linger=0)


class StatsBroker(AMajordomo):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend_results = []

    @interface
    def stats(self, **kwargs):
        return {"workers": len(self.workers), "caller": kwargs["__client_id"],
                "rid_len": len(kwargs["__request_id"])}

    @interface
    def nokwargs(self):
        return 1

    @interface
    async def ask_worker(self, a, b, **kwargs):
        """Call a worker from the broker itself (the original's testMajordomo pattern)."""
        request_id = os.urandom(16)
        await self.request_backend("Calc", self.identity, request_id,
                                   (msg_pack("add"), msg_pack((a, b)), msg_pack({})))
        frames = await self.internal_requests[request_id]
        self.internal_requests.pop(request_id)  # tolerated after resolution
        return frames

    @interface
    def gen(self, n, **kwargs):
        yield from range(n)

    @interface
    def gen_fail(self, **kwargs):
        yield 1
        raise ValueError("internal stream broke")


async def test_broker_subclass_internal_methods(tmp_path):
    ctx = Context()
    broker = StatsBroker(context=ctx)
    broker.bind_frontend(f"ipc://{tmp_path}/f")
    broker.bind_backend(f"ipc://{tmp_path}/b")
    broker.run()
    worker = Service(name="Calc").create_worker(Calc, f"ipc://{tmp_path}/b", context=ctx)
    worker.run()
    await asyncio.sleep(0.2)
    cli = Client(f"ipc://{tmp_path}/f", context=ctx)
    try:
        await cli.connect()
        stats = await cli.Gate.stats()
        assert stats == {"workers": 1, "caller": cli.identity, "rid_len": 16}
        with pytest.raises(RemoteException, match="TypeError"):
            await cli.Gate.nokwargs()
        frames = await cli.Gate.ask_worker(20, 22)
        assert len(frames) == 1 and b"\xa6result*" in frames[0]
        assert [i async for i in await cli.Gate.gen(4)] == [0, 1, 2, 3]
        items = []
        with pytest.raises(RemoteException, match="internal stream broke"):
            async for i in await cli.Gate.gen_fail():
                items.append(i)
        assert items == [1]
        assert "stats" in broker.internal_func
    finally:
        cli.close()
        worker.stop()
        broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)


async def test_stop_before_run_and_twice():
    ctx = Context()
    broker = AMajordomo(context=ctx)
    broker.stop()
    broker.stop()
    ctx.destroy(linger=0)


async def test_stream_buffer_is_bounded(tmp_path):
    from gaterpc.streams import OVERFLOW_FACTOR

    c = await start_cluster("inproc", tmp_path)
    try:
        c.client.stream_reply_maxsize = 10
        stream = await c.client.Calc.count(5000)
        await asyncio.sleep(0.5)  # let the producer run far ahead of the consumer
        got = []
        with pytest.raises(BufferError):
            async for i in stream:
                got.append(i)
        assert got == list(range(len(got))) and 1 <= len(got) <= 10 * OVERFLOW_FACTOR
        await asyncio.sleep(0.05)
        assert len(c.client.replies) == 0
        assert await c.client.Calc.add(1, 2) == 3
    finally:
        await c.stop()


async def test_client_pending_limit(tmp_path):
    c = await start_cluster("inproc", tmp_path)
    old = Settings.MESSAGE_MAX
    Settings.MESSAGE_MAX = 5
    try:
        calls = [asyncio.ensure_future(c.client.Calc.sleep(0.3)) for _ in range(5)]
        await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError, match="pending requests"):
            await c.client.Calc.add(1, 1)
        assert await asyncio.gather(*calls) == [0.3] * 5
    finally:
        Settings.MESSAGE_MAX = old
        await c.stop()


async def test_busy_worker_error_after_timeout(tmp_path):
    old = Settings.TIMEOUT
    Settings.TIMEOUT = 0.3
    ctx = Context()
    broker = AMajordomo(context=ctx, heartbeat=200)
    broker.bind_frontend(f"ipc://{tmp_path}/f")
    broker.bind_backend(f"ipc://{tmp_path}/b")
    broker.run()
    worker = Service(name="Calc").create_worker(Calc, f"ipc://{tmp_path}/b", context=ctx,
                                                max_allowed_request=1)
    worker.run()
    await asyncio.sleep(0.2)
    cli = Client(f"ipc://{tmp_path}/f", context=ctx, reply_timeout=5)  # REPLY_TIMEOUT follows TIMEOUT
    try:
        await cli.connect()
        first = asyncio.ensure_future(cli.Calc.sleep(1.0))
        await asyncio.sleep(0.05)
        with pytest.raises(RemoteException, match="BusyWorkerError"):
            await cli.Calc.add(1, 1)
        assert await first == 1.0
        remote = next(iter(broker.workers.values()))
        # exactly one unit back: the refused call took none, the finished one gave back one
        assert remote.max_allowed_request == 1 and remote._inflight == {}
        assert await cli.Calc.add(1, 1) == 2  # capacity came back
        assert remote.max_allowed_request == 1 and remote._inflight == {}
        # a stream, a failing stream and an error each give back exactly one unit
        assert [i async for i in await cli.Calc.count(50)] == list(range(50))
        assert remote.max_allowed_request == 1
        with pytest.raises(RemoteException, match="stream broke"):
            [i async for i in await cli.Calc.fail_later(3)]
        assert remote.max_allowed_request == 1
        with pytest.raises(RemoteException, match="missing"):
            await cli.Calc.fail()
        assert remote.max_allowed_request == 1 and remote._inflight == {}
        # one unit: a second call while one runs still waits (no over-release)
        first = asyncio.ensure_future(cli.Calc.sleep(0.5))
        await asyncio.sleep(0.05)
        with pytest.raises(RemoteException, match="BusyWorkerError"):
            await cli.Calc.add(1, 1)
        assert await first == 0.5
    finally:
        Settings.TIMEOUT = old
        cli.close()
        worker.stop()
        broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)


async def test_undecodable_hugedata_payload_fails_the_call(cluster):
    # A payload whose msgpack bin exceeds the decoder's 32 MiB cap: the call
    # must fail with a clear error, not hang.
    with pytest.raises(ValueError, match="unpack failed"):
        await cluster.client.Calc.dump(33 * 1024 * 1024)
    assert len(cluster.client.replies) == 0
