"""Large frames received without a copy by every role (``ZERO_COPY_MIN``), and passed on uncopied.

The broker, the worker and the client receive frames of ``ZERO_COPY_MIN``
bytes or more as read-only views of libzmq's buffers; the broker forwards
such a frame whole (libzmq shares the received message), the worker and
the client decode it with msgpack straight from the view.  Runs on the
selected backend (``GATERPC_NO_EXTENSIONS=1`` for the pure one).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from gaterpc.core import AMajordomo, Client, Context, Service, Worker
from gaterpc.exceptions import RemoteException
from gaterpc.global_settings import Settings
from gaterpc.protocol import READY, REPLY, REQUEST, ZERO_COPY_MIN
from gaterpc.utils import interface

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_e2e_processes import start, stop  # noqa: E402  # the 3-process harness (ends processes by pid)

BIG = ZERO_COPY_MIN
MIB = 1024 * 1024


def blob(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that differ from one position to the next (a shifted copy would show)."""
    return (bytes(range(seed % 256, 256)) + bytes(range(0, seed % 256)) + os.urandom(97)) * (n // 353) \
        + os.urandom(n % 353)


class Echo(Worker):
    @interface
    def echo(self, data):
        return data

    @interface
    def sized(self, n):
        return b"r" * n

    @interface
    def kinds(self, *args):
        return [type(a).__name__ for a in args]


async def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    assert predicate(), "condition not reached in time"


class Cluster:
    """broker | worker | client of one process on ipc, stopped and its context destroyed at the end."""

    def __init__(self, tmp_path, broker_cls=AMajordomo, worker_cls=Echo):
        self.ctx = Context()
        self.front = f"ipc://{tmp_path}/front"
        self.back = f"ipc://{tmp_path}/back"
        self.broker = broker_cls(context=self.ctx)
        self.broker.bind_frontend(self.front)
        self.broker.bind_backend(self.back)
        self.broker.run()
        self.worker = Service(name="Big").create_worker(worker_cls, self.back, context=self.ctx,
                                                        workers_heartbeat=300)
        self.worker.run()
        self.client = Client(self.front, context=self.ctx)
        self.raws: list = []

    async def start(self):
        await _until(lambda: "Big" in self.broker.services and self.broker.services["Big"].workers)
        await self.client.connect()
        return self

    def raw(self, kind=zmq.DEALER, addr=None, identity=None):
        s = self.ctx.socket(kind)
        s.linger = 0
        if identity is not None:
            s.identity = identity
        s.connect(addr or self.front)
        self.raws.append(s)
        return s

    async def close(self):
        for s in self.raws:
            s.close(linger=0)
        self.client.close()
        self.worker.stop()
        self.broker.stop()
        await asyncio.sleep(0.05)
        self.ctx.destroy(linger=0)


@pytest.fixture
async def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield await c.start()
    finally:
        await c.close()


def _io(c: Cluster) -> dict:
    return {"client": c.client._lsock.io, "front": c.broker._lfront.io, "back": c.broker._lback.io,
            "worker": c.worker._lsock.io}


def _counts(socks: dict, key: str) -> dict:
    return {k: getattr(io, key) for k, io in socks.items()}


@pytest.mark.parametrize("size", [BIG + 1, MIB])
async def test_round_trip_is_exact_and_no_hop_copies_the_big_frame(cluster, size):
    """Argument and result equal byte for byte; each hop receives and forwards the big frame uncopied."""
    c = cluster
    socks = _io(c)
    rx0, tx0 = _counts(socks, "rx_nocopy_frames"), _counts(socks, "tx_nocopy_frames")
    calls = 3
    for i in range(calls):
        data = blob(size, i)
        result = await asyncio.wait_for(c.client.Big.echo(data), 20)
        assert type(result) is bytes and result == data
    rx = {k: v - rx0[k] for k, v in _counts(socks, "rx_nocopy_frames").items()}
    tx = {k: v - tx0[k] for k, v in _counts(socks, "tx_nocopy_frames").items()}
    # args: client -> front (view) -> back (shared) -> worker (view, decoded);
    # result: worker -> back (view) -> front (shared) -> client (view, decoded).
    assert rx == {"client": calls, "front": calls, "back": calls, "worker": calls}
    assert tx == {"client": calls, "front": calls, "back": calls, "worker": calls}
    # Nothing of the calls is kept: no view outlives its batch.
    assert not c.broker.workers[c.worker.identity]._inflight


async def test_small_frames_stay_bytes_and_values_keep_their_types(cluster):
    """Just under the threshold nothing is a view; a decoded value is never a view either way."""
    c = cluster
    socks = _io(c)
    rx0 = _counts(socks, "rx_nocopy_frames")
    small = blob(BIG - 64)
    assert await c.client.Big.echo(small) == small
    assert _counts(socks, "rx_nocopy_frames") == rx0
    assert await c.client.Big.kinds(b"x" * MIB, "s" * BIG, [b"y" * BIG]) == ["bytes", "str", "list"]
    assert await c.client.Big.sized(MIB) == b"r" * MIB


async def test_broker_stats_show_the_frames_received_without_a_copy(cluster):
    c = cluster
    await c.client.Big.echo(b"z" * MIB)
    stats = await c.client.Gate.stats()
    front = stats["sockets"]["frontend"]
    assert front["rx_nocopy_frames"] >= 1 and front["tx_nocopy_frames"] >= 1
    assert stats["sockets"]["backend"]["rx_nocopy_frames"] >= 1


async def test_big_ready_body_is_refused_or_registered_and_nothing_is_lost(cluster):
    """A READY body of 64 KiB+: malformed -> refused with a reason; well formed -> registered."""
    c = cluster
    sep = Settings.MDP_DESCRIPTION_SEP
    bad = c.raw(zmq.DEALER, c.back)
    await bad.send_multipart([b"", Settings.MDP_WORKER, READY, b"\xff" * (BIG + 5)])
    reply = await asyncio.wait_for(bad.recv_multipart(), 10)
    assert reply[2] == b"\x05" and b"malformed READY body" in reply[3]
    good = c.raw(zmq.DEALER, c.back)
    description = "d" * (BIG + 5)
    await good.send_multipart([b"", Settings.MDP_WORKER, READY, f"Long{sep}{description}{sep}2".encode()])
    await _until(lambda: "Long" in c.broker.services)
    assert c.broker.services["Long"].description == description
    assert await c.client.Gate.query_service("Long") == description
    # The broker still serves.
    assert await c.client.Big.echo(b"a" * MIB) == b"a" * MIB


async def test_malformed_big_requests_get_clear_errors(cluster):
    """Big frames in places no big frame belongs: each request gets its error, the broker goes on."""
    c = cluster
    raw = c.raw()
    header = Settings.MDP_CLIENT
    junk = b"\xc1" * (BIG + 3)  # 0xc1 is never valid msgpack
    packed = msgpack.packb

    async def ask(frames):
        await raw.send_multipart([b"", header, *frames])
        return await asyncio.wait_for(raw.recv_multipart(), 10)

    # 1. A huge service name: unavailable, named in the reply frame as sent.
    service = b"S" * (BIG + 1)
    reply = await ask([service, b"r1", packed("echo"), packed([1])])
    assert reply[2] == service and reply[3] == b"r1"
    assert "ServiceUnAvailableError" in str(msgpack.unpackb(reply[4])["exception"])
    # 2. A huge request id is given back exactly.
    rid = bytes(range(256)) * (BIG // 256 + 1)
    reply = await ask([b"Big", rid, packed("echo"), packed([b"ok"])])
    assert reply[3] == rid and msgpack.unpackb(reply[4]) == {"result": b"ok", "exception": None}
    # 3. Arguments that are not msgpack, to a worker and to the broker's own service.
    for service_b in (b"Big", Settings.MDP_INTERNAL_SERVICE.encode()):
        reply = await ask([service_b, b"r3", packed("echo"), junk])
        err = msgpack.unpackb(reply[4])["exception"]
        assert reply[3] == b"r3" and err and "Unpack" in err[0], err
    # 4. Arguments that decode but are not an array.
    reply = await ask([b"Big", b"r4", packed("echo"), packed(b"x" * BIG)])
    assert "not an array" in msgpack.unpackb(reply[4])["exception"][1]
    # Nothing was lost and the worker is free again.
    assert await c.client.Big.echo(b"b" * MIB) == b"b" * MIB
    w = c.broker.workers[c.worker.identity]
    await _until(lambda: not w._inflight)


async def test_big_frame_in_worker_reply_envelope_is_dropped_and_counted(cluster):
    """A worker reply whose request id frame is big but unknown: dropped (counted), nothing breaks."""
    from gaterpc.counters import drops_snapshot as drop_counts

    c = cluster
    before = drop_counts().get("unknown_worker", 0)
    stranger = c.raw(zmq.DEALER, c.back)
    await stranger.send_multipart([b"", Settings.MDP_WORKER, REPLY, b"client", b"", b"q" * BIG, b"x" * BIG])
    await _until(lambda: drop_counts().get("unknown_worker", 0) > before)
    assert await c.client.Big.echo(b"c" * MIB) == b"c" * MIB


class FrontHookBroker(AMajordomo):
    seen: list = []

    async def process_messages_from_frontend(self, request):
        FrontHookBroker.seen.append([type(f) for f in request])
        await super().process_messages_from_frontend(request)


class RequestHookWorker(Echo):
    seen: list = []

    async def process_request(self, messages):
        RequestHookWorker.seen.append([type(f) for f in messages])
        await super().process_request(messages)


async def test_overridden_hooks_get_bytes_as_before(tmp_path):
    """User code written for the original gets ``bytes`` frames in the hooks it overrides."""
    c = Cluster(tmp_path, broker_cls=FrontHookBroker, worker_cls=RequestHookWorker)
    try:
        await c.start()
        assert await c.client.Big.echo(b"h" * MIB) == b"h" * MIB
        big = [t for t in FrontHookBroker.seen if len(t) > 5]
        assert big and all(t == bytes for seen in big for t in seen)
        assert RequestHookWorker.seen and all(t == bytes for seen in RequestHookWorker.seen for t in seen)
        assert c.broker._lfront.io.rx_nocopy_frames == 0
        assert c.worker._lsock.io.rx_nocopy_frames == 0
    finally:
        await c.close()


async def test_three_processes_big_round_trip(tmp_path):
    """client | broker | worker in three processes: 64 KiB+1 and 1 MiB, both directions, exact."""
    front, back = f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b"
    procs = [start("broker", front, back)]
    ctx = cli = None
    try:
        procs.append(start("worker", back))
        ctx = Context()
        cli = Client(front, context=ctx)
        await cli.connect()
        for _ in range(200):
            if "Echo" in await cli.Gate.get_services():
                break
            await asyncio.sleep(0.05)
        for size in (BIG + 1, MIB):
            data = blob(size, size)
            assert await asyncio.wait_for(cli.Echo.echo(data), 20) == [[data], {}]
        stats = await cli.Gate.stats()
        assert stats["sockets"]["frontend"]["rx_nocopy_frames"] >= 2
        assert stats["sockets"]["backend"]["tx_nocopy_frames"] >= 2
        assert cli._lsock.io.rx_nocopy_frames >= 2
    finally:
        if cli is not None:
            cli.close()
            await asyncio.sleep(0.05)
        if ctx is not None:
            ctx.destroy(linger=0)
        for p in procs:
            stop(p)


async def test_one_mib_call_through_a_gate():
    """A 1 MiB argument and result cross a gate (forwarded to the peer gate's worker), exact."""
    from test_gate import Node, join

    a = b = None
    try:
        a, b = Node("nca-" + os.urandom(3).hex()), Node("ncb-" + os.urandom(3).hex())
        await b.add_worker()
        await join(a, b)
        client = await a.client()
        for size in (BIG + 1, MIB):
            data = blob(size, 7)
            result = await asyncio.wait_for(client.Echo.echo(data), 20)
            assert result == {"args": [data], "gate": b.name}
        assert b.gate._lback.io.rx_nocopy_frames >= 2
    finally:
        for node in (a, b):
            if node is not None:
                await node.stop()


@pytest.mark.parametrize("size", [BIG, BIG + 1, MIB, 3 * MIB + 7])
def test_large_bytes_reply_body_is_the_packed_body_byte_for_byte(size):
    """The one-copy body of a large ``bytes`` result is exactly what packing the reply gives."""
    from gaterpc.protocol import ok_body, ok_body_bytes
    from gaterpc.serialization import msg_pack

    value = blob(size, size)
    body = ok_body_bytes(value)
    assert body == ok_body(msg_pack, value) == msgpack.packb({"result": value, "exception": None})
    assert msgpack.unpackb(body) == {"result": value, "exception": None}


async def test_original_api_methods_pass_views_on(cluster):
    """The original's broker methods that send frames accept a received view among them."""
    c = cluster
    raw = c.raw(identity=b"raw-client")
    header = Settings.MDP_CLIENT
    await raw.send_multipart([b"", header, b"Big", b"r0", msgpack.packb("echo"), msgpack.packb([1])])
    await asyncio.wait_for(raw.recv_multipart(), 10)  # the broker's ROUTER knows the peer now
    big = blob(MIB, 3)
    view = memoryview(big).toreadonly()
    await c.broker.reply_frontend(b"raw-client", "Big", b"r1", view)
    reply = await asyncio.wait_for(raw.recv_multipart(), 10)
    assert reply == [b"", header, b"Big", b"r1", big]
    await c.broker.request_backend("Big", b"raw-client", b"r2",
                                   [msgpack.packb("echo"), memoryview(msgpack.packb([big]))])
    reply = await asyncio.wait_for(raw.recv_multipart(), 10)
    assert reply[3] == b"r2" and msgpack.unpackb(reply[4]) == {"result": big, "exception": None}


_VALUES = [None, True, 0, -1, 2**64 - 1, 1.5, "", "é" * 40, b"", b"x" * (BIG - 1), b"y" * BIG, bytearray(b"ab" * BIG),
           memoryview(b"m" * 10), [1, "a", b"b"], ("t", (1, 2)), {"k": [None, {"n": b"z" * MIB}]},
           ("word", 7, "s" * MIB), [b"q" * MIB, b"r" * MIB]]


@pytest.mark.parametrize("value", _VALUES, ids=lambda v: type(v).__name__ + str(len(v) if hasattr(v, "__len__") else ""))
def test_reply_body_is_the_original_layout_byte_for_byte(value):
    """``ok_reply_body`` == ``singleton_ok(msg_pack(v))`` == msgpack of the original's reply map."""
    from gaterpc._speedups.frames import singleton_ok
    from gaterpc.serialization import msg_pack
    from gaterpc.wire import ok_reply_body

    body = ok_reply_body(value)
    assert type(body) is bytes
    assert body == singleton_ok(msg_pack(value)) == msgpack.packb({"result": value, "exception": None})


def test_reply_body_with_a_prepare_pack_hook_and_its_errors():
    from gaterpc._speedups.frames import singleton_ok
    from gaterpc.serialization import MsgPackError, message_pack, msg_pack
    from gaterpc.wire import ok_reply_body

    saved = message_pack.prepare_pack
    try:
        message_pack.prepare_pack = lambda o: sorted(o) if isinstance(o, set) else str(o)
        for value in ({3, 1, 2}, [ValueError("v")], {"s": {b"x" * BIG}}):
            assert ok_reply_body(value) == singleton_ok(msg_pack(value))
        message_pack.prepare_pack = None
        for bad in ([object()], {"k": {1, 2}}, 2**64):
            with pytest.raises(MsgPackError) as got:
                ok_reply_body(bad)
            with pytest.raises(MsgPackError) as expected:
                msg_pack(bad)
            assert str(got.value) == str(expected.value)
        # the per-thread packer is left clean by a failure
        assert ok_reply_body([1, b"x" * BIG]) == singleton_ok(msg_pack([1, b"x" * BIG]))
    finally:
        message_pack.prepare_pack = saved
