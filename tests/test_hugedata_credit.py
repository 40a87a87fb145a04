"""HugeData flow control: credits from our client bound what a transfer has on its way.

A client of ours tells the worker, through the broker, how many compressed
bytes its receiver has processed (``CREDIT_HEADER`` to the broker, ``CREDIT``
to the worker); from the first credit on, the worker keeps at most
``Settings.HUGE_DATA_WINDOW`` bytes beyond it on their way.  Real broker,
worker and client in one process.  The raw client speaks the wire itself, so
what the worker sends while no credit comes is seen exactly.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import lz4.frame
import pytest
import zmq

import gaterpc.hugereceive as receive_mod
from gaterpc import counters
from gaterpc.core import Worker
from gaterpc.global_settings import Settings
from gaterpc.hugedata import HugeData
from gaterpc.protocol import CREDIT_HEADER, HUGE_END, HUGE_TAG, OWN_RID_MARK
from gaterpc.serialization import msg_pack, msg_unpack
from gaterpc.utils import interface
from local_cluster import local_cluster

MIB = 1024 * 1024
N = 8 * MIB  # random bytes: lz4 leaves them at about their size, 8 MiB on the wire
WINDOW = MIB
#: What may be on its way beyond the window: the worker checks the window
#: before each piece of compressed output (about 1 MiB) and sends it whole.
PIECE = 2 * MIB
#: What the worker may send beyond the window in one go: a part of a piece
#: (256 KiB with 64 KiB chunks) plus a receiver's segment being processed.
SLACK = 512 * 1024


def payload(n: int) -> bytes:
    return random.Random(n).randbytes(n)


class FlowProbe:
    """A worker's HugeData sends and a slow client decoder, watched for flow control.

    Wraps the worker runner's ``send_tagged`` to count the compressed bytes
    it sends, and slows every receiver's decompression in its thread (about
    25 MB/s for 256 KiB segments: far slower than the sender).  ``backlog``:
    at each decompression, what was sent and not yet processed by the client.
    ``before_first``: bytes sent before the worker saw the first credit (it
    sends as always until then; a loaded machine delays that credit);
    ``beyond``: from the first credit on, what was sent beyond the latest
    credit before each send.
    """

    def __init__(self, runner, monkeypatch):
        self.reset()
        send_tagged = runner.send_tagged
        decompress = receive_mod.HugeDataReceiver._decompress

        def counting(client_id, request_id, tag, batch):
            size = sum(map(len, batch))
            self.sent += size
            c = runner._credits.get((bytes(client_id), bytes(request_id)))
            if c is not None and c.active:
                self.beyond.append(self.sent - c.acked - size)
            else:
                self.before_first = self.sent
            return send_tagged(client_id, request_id, tag, batch)

        def slow_decompress(receiver, data, *args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                time.sleep(0.01)
            done = decompress(receiver, data, *args, **kwargs)
            self.backlog.append(self.sent - receiver.processed - len(data))
            return done

        monkeypatch.setattr(runner, "send_tagged", counting)
        monkeypatch.setattr(receive_mod.HugeDataReceiver, "_decompress", slow_decompress)

    def reset(self) -> None:
        self.sent = 0
        self.before_first = 0
        self.backlog: list[int] = []
        self.beyond: list[int] = []

    def check_window(self) -> int:
        """Assert the window held; return the largest backlog."""
        # once the first credit came, the worker sent a piece only while at most a window was uncredited
        assert self.beyond and max(self.beyond) <= WINDOW, (max(self.beyond or [0]), self.before_first)
        worst = max(self.backlog)
        assert worst <= max(WINDOW, self.before_first) + SLACK, (worst, self.before_first)
        return worst


class Big(Worker):
    @interface
    async def blob(self, n):
        return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG, compress_module="lz4",
                        data=msg_pack(payload(n)))


@pytest.fixture
def window(monkeypatch):
    monkeypatch.setattr(Settings, "HUGE_DATA_WINDOW", WINDOW)
    return WINDOW


@pytest.fixture
async def cluster(tmp_path, window):
    async with local_cluster(tmp_path, Big, "Big", reply_timeout=60) as c:
        yield c


def own_rid() -> bytes:
    return random.randbytes(8) + OWN_RID_MARK + random.randbytes(6)


class RawCaller:
    """A bare DEALER: one HugeData call, chunks read as they come, credits sent by hand."""

    def __init__(self, ctx, front: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(front)
        self.rid = own_rid()
        self.chunks: list[bytes] = []
        self.received = 0
        self.ended = False

    async def call(self, n: int) -> None:
        await self.sock.send_multipart([b"", Settings.MDP_CLIENT, b"Big", self.rid, msg_pack("blob"),
                                        msg_pack([n]), msg_pack({})])

    async def credit(self, value: int) -> None:
        await self.sock.send_multipart([b"", CREDIT_HEADER, b"Big", self.rid, value.to_bytes(8, "big")])

    async def read(self, quiet: float, limit: float = 30.0, count: int = 100_000) -> None:
        """Read chunks until none came for ``quiet`` seconds, the end came, ``count`` chunks
        were read or ``limit`` passed."""
        deadline = time.monotonic() + limit
        for _ in range(count):
            if self.ended or time.monotonic() >= deadline:
                return
            try:
                frames = await asyncio.wait_for(self.sock.recv_multipart(), quiet)
            except asyncio.TimeoutError:
                return
            assert frames[3] == self.rid and frames[4] == HUGE_TAG, frames[:6]
            if frames[5] == HUGE_END:
                self.ended = True
                return
            self.chunks.append(frames[5])
            self.received += len(frames[5])

    async def credit_the_first_chunk(self, n: int, quiet: float) -> None:
        """Call for ``n`` bytes, credit the first chunk once, then read until ``quiet``."""
        await self.call(n)
        await self.read(quiet=10.0, count=1)
        await self.credit(self.received)
        await self.read(quiet=quiet)

    def value(self):
        return msg_unpack(lz4.frame.decompress(b"".join(self.chunks)))

    def close(self) -> None:
        self.sock.close(linger=0)


async def test_after_a_credit_the_worker_stops_at_the_window_and_goes_on_with_the_next(cluster):
    raw = RawCaller(cluster.ctx, cluster.front)
    try:
        # the first chunk, then a credit for it: the path carries credits
        await raw.credit_the_first_chunk(N, quiet=0.5)
        first_stop = raw.received
        assert not raw.ended
        assert first_stop <= WINDOW + 2 * PIECE, first_stop
        # each credit lets about a window more come, never the whole transfer at once
        stops = [first_stop]
        for _ in range(40):  # bounded: 8 MiB in steps of about 1 MiB
            if raw.ended:
                break
            await raw.credit(raw.received)
            await raw.read(quiet=0.3)
            stops.append(raw.received)
            if not raw.ended:
                assert raw.received - stops[-2] <= WINDOW + PIECE, stops
        assert raw.ended, stops
        assert len(stops) >= 4, stops  # it took several credits
        assert raw.value() == payload(N)
    finally:
        raw.close()


async def test_without_credits_the_transfer_runs_as_before(cluster):
    # The original's broker drops credits: a worker of ours that never gets one sends it all.
    raw = RawCaller(cluster.ctx, cluster.front)
    try:
        await raw.call(N)
        await raw.read(quiet=2.0)
        assert raw.ended and raw.value() == payload(N)
    finally:
        raw.close()


async def test_a_worker_with_the_window_off_ignores_credits(cluster, monkeypatch):
    monkeypatch.setattr(Settings, "HUGE_DATA_WINDOW", 0)
    raw = RawCaller(cluster.ctx, cluster.front)
    try:
        await raw.credit_the_first_chunk(N, quiet=2.0)
        assert raw.ended and raw.value() == payload(N)
    finally:
        raw.close()


async def test_credits_that_stop_coming_do_not_stall_the_transfer(cluster, monkeypatch):
    monkeypatch.setattr(Settings, "TIMEOUT", 0.5)
    before = counters.events_snapshot().get("hugedata_credit_timeout", 0)
    raw = RawCaller(cluster.ctx, cluster.front)
    try:
        # one credit, then none: after TIMEOUT the worker goes on
        await raw.credit_the_first_chunk(N, quiet=3.0)
        assert raw.ended and raw.value() == payload(N)
        assert counters.events_snapshot().get("hugedata_credit_timeout", 0) == before + 1
    finally:
        raw.close()


@pytest.mark.parametrize("bad, counter", [
    ([b"", CREDIT_HEADER, b"Big", b"r" * 16, b"short"], "drop"),    # a credit is 8 bytes: malformed
    ([b"", CREDIT_HEADER, b"Big", b"r" * 16], "drop"),              # a frame short: malformed
    ([b"", CREDIT_HEADER, b"Nope", b"r" * 16, bytes(8)], "event"),  # unknown service
    ([b"", CREDIT_HEADER, b"Big", b"r" * 16, bytes(8)], "event"),   # no such request in flight
])
async def test_bad_credits_are_counted_and_change_nothing(cluster, bad, counter):
    snapshot = counters.drops_snapshot if counter == "drop" else counters.events_snapshot
    name = "frontend_malformed" if counter == "drop" else "hugedata_credit_unmatched"
    before = snapshot().get(name, 0)
    sock = cluster.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(cluster.front)
        await sock.send_multipart(bad)
        for _ in range(200):
            if snapshot().get(name, 0) != before:
                break
            await asyncio.sleep(0.01)
        assert snapshot().get(name, 0) == before + 1
    finally:
        sock.close(linger=0)
    assert await cluster.client.Big.blob(1000) == payload(1000)  # the broker serves on


async def test_our_client_keeps_its_backlog_within_the_window(cluster, monkeypatch):
    """A slow decoder: what the worker sent and the client has not processed stays near the window.

    Without credits (``HUGE_DATA_WINDOW`` 0 at the client) the same slow
    decoder leaves more on its way: here, with every role on one event loop,
    up to the receiver's own 2 MiB queue (a full queue blocks the loop, and
    so the worker too); with the worker in its own process, up to the whole
    transfer (``gaterpc bench hugedata --window``).
    """
    probe = FlowProbe(cluster.worker._runner, monkeypatch)
    assert await cluster.client.Big.blob(N) == payload(N)
    with_credits = probe.check_window()

    probe.reset()
    monkeypatch.setattr(Settings, "HUGE_DATA_WINDOW", 0)  # the client sends no credits
    assert await cluster.client.Big.blob(N) == payload(N)
    without = max(probe.backlog)
    assert without > WINDOW + SLACK, (with_credits, without)


def test_the_window_setting_is_checked():
    before = Settings.HUGE_DATA_WINDOW
    for bad, err in ((True, TypeError), ("1", TypeError), (-1, ValueError), (1000, ValueError)):
        with pytest.raises(err):
            Settings.configure("HUGE_DATA_WINDOW", bad)
    assert Settings.HUGE_DATA_WINDOW == before
    try:
        Settings.configure("HUGE_DATA_WINDOW", 0)
        assert Settings.HUGE_DATA_WINDOW == 0
        Settings.configure("HUGE_DATA_WINDOW", 4 * MIB)
        assert Settings.HUGE_DATA_WINDOW == 4 * MIB
    finally:
        Settings.configure("HUGE_DATA_WINDOW", before)


async def test_our_client_credits_at_once_then_as_it_decompresses(tmp_path):
    """The client's side of the wire, against a bare ROUTER playing the broker.

    The first credit (0) leaves as soon as the first chunk arrives, before
    the client decompresses anything (so a client that is busy from then on
    still holds the worker to its window); later credits rise with what its
    receiver decompressed.
    """
    from gaterpc.core import Client, Context

    ctx = Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    front = f"ipc://{tmp_path}/front"
    router.bind(front)
    client = Client(front, context=ctx, reply_timeout=10)
    hdr = Settings.MDP_CLIENT
    data = msg_pack(payload(N))
    stream = lz4.frame.compress(data)
    chunks = [stream[i:i + 65536] for i in range(0, len(stream), 65536)]

    async def recv(timeout: float = 10.0) -> list:
        return await asyncio.wait_for(router.recv_multipart(), timeout)

    try:
        connecting = asyncio.ensure_future(client.connect())
        for _ in range(20):  # bounded: the client asks the internal service for the list first
            req = await recv()
            if req[3] == b"Gate":
                await router.send_multipart([req[0], b"", hdr, b"Gate", req[4],
                                             msg_pack({"result": ["Big", "Gate"], "exception": None})])
                break
        await asyncio.wait_for(connecting, 10)
        call = asyncio.ensure_future(client.knock("Big", "blob", N))
        req = await recv()
        cid, rid = req[0], req[4]
        assert req[2] == hdr and req[3] == b"Big"
        await router.send_multipart([cid, b"", hdr, b"Big", rid, HUGE_TAG, chunks[0]])
        first = await recv()
        assert first == [cid, b"", CREDIT_HEADER, b"Big", rid, bytes(8)]
        # Then, like a worker holding to its window: 1 MiB more at a time, each time
        # waiting for a credit of all but the receiver's last partial segment.
        credits = [0]
        sent = len(chunks[0])
        for i in range(1, len(chunks), 16):
            for chunk in chunks[i:i + 16]:
                await router.send_multipart([cid, b"", hdr, b"Big", rid, HUGE_TAG, chunk])
                sent += len(chunk)
            for _ in range(1000):  # bounded: the credits for that MiB
                msg = await recv()
                assert msg[:5] == [cid, b"", CREDIT_HEADER, b"Big", rid], msg[:5]
                credits.append(int.from_bytes(msg[5], "big"))
                if credits[-1] >= sent - 256 * 1024:
                    break
            assert credits[-1] >= sent - 256 * 1024, (credits[-1], sent)
        assert credits == sorted(credits) and credits[-1] <= len(stream), credits
        await router.send_multipart([cid, b"", hdr, b"Big", rid, HUGE_TAG, b""])
        await router.send_multipart([cid, b"", hdr, b"Big", rid, HUGE_TAG, HUGE_END])
        assert await asyncio.wait_for(call, 30) == payload(N)
    finally:
        client.close()
        router.close(linger=0)
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)
