"""HugeData pipelining: the sender compresses ahead in a thread, the receiver decompresses in a thread.

Both chunk-assembly twins; the wire stream is the same as without pipelining
(the round trips below read it back with the plain decoders too).
"""

from __future__ import annotations

import asyncio
import gzip
import multiprocessing
import os
import random
import threading
import time
import types
import zlib

import pytest

import gaterpc.hugedata as hugedata_mod
from gaterpc.exceptions import BadGzip, HugeDataException
from gaterpc.hugedata import HugeData, HugeDataReceiver, iter_hugedata_chunks

from conftest import _import_twin, _twins

END, EXC = b"HugeDataEND", b"HugeDataException"


@pytest.fixture(scope="module", params=_twins("chunks"))
def chunks_twin(request):
    return _import_twin(request)


@pytest.fixture
def backend(chunks_twin, monkeypatch):
    """``gaterpc.hugedata`` running on one chunk-assembly twin."""
    monkeypatch.setattr(hugedata_mod, "ChunkCutter", chunks_twin.ChunkCutter)
    monkeypatch.setattr(hugedata_mod, "OutputLimiter", chunks_twin.OutputLimiter)
    return chunks_twin


def mixed(size: int, seed: int = 5) -> bytes:
    rnd = random.Random(seed)
    return rnd.randbytes(size // 2) + b"compressible text; " * (size // 38 + 1)


@pytest.fixture
def submits(monkeypatch):
    """Counts the segments jobs handed to the receiver's thread pool."""
    calls = []
    real = hugedata_mod._decompress_executor

    class Spy:
        def submit(self, fn):
            calls.append(fn)
            return real().submit(fn)

    monkeypatch.setattr(hugedata_mod, "_decompress_executor", lambda: Spy())
    return calls


@pytest.mark.parametrize("module", ["gzip", "lz4"])
@pytest.mark.parametrize("blksize", [1000, 300_000])
async def test_pipelined_round_trip(module, blksize, backend, submits):
    payload = mixed(3_000_000)
    hd = HugeData(END, EXC, data=payload, compress_module=module, blksize=blksize)
    chunks = [c async for c in iter_hugedata_chunks(hd)]
    assert all(len(c) <= blksize for c in chunks[1:])
    stream = b"".join(chunks)
    plain = gzip.decompress(stream) if module == "gzip" else __import__("lz4.frame").frame.decompress(stream)
    assert plain == payload
    r = HugeDataReceiver()
    for c in chunks:
        r.feed(c)
    assert r.finish() == payload
    assert submits  # segments went to the thread


async def test_short_stream_is_decompressed_in_finish_without_a_thread(backend, submits):
    payload = b"small" * 1000
    r = HugeDataReceiver()
    r.feed(gzip.compress(payload))
    assert r.finish() == payload
    assert not submits


@pytest.mark.parametrize("module", ["gzip", "lz4"])
async def test_error_found_by_the_thread_is_raised(module, backend):
    payload = os.urandom(2_000_000)
    stream = b"".join([c async for c in iter_hugedata_chunks(HugeData(END, EXC, data=payload,
                                                                             compress_module=module))])
    corrupt = stream[:300_000] + bytes(b ^ 0x5A for b in stream[300_000:300_400]) + stream[300_400:]
    r = HugeDataReceiver()
    with pytest.raises((HugeDataException, BadGzip)):
        for i in range(0, len(corrupt), 1000):
            r.feed(corrupt[i:i + 1000])
        r.finish()
    r.close()


def test_limit_is_enforced_by_the_thread(backend):
    limit = 1024 * 1024
    stream = gzip.compress(os.urandom(3 * limit), 1)
    assert len(stream) > HugeDataReceiver.SEGMENT
    r = HugeDataReceiver(max_decompressed_size=limit)
    with pytest.raises(HugeDataException, match=r"exceeds limit \(1048576 bytes\)"):
        for i in range(0, len(stream), 1000):
            r.feed(stream[i:i + 1000])
        r.finish()
    assert limit < r._out.total <= limit + 1
    r.close()


def slow_codec(delay: float, log: list):
    """A plug-in codec (raw deflate, no magic) whose decompressor sleeps ``delay`` per call."""

    class Decompressor:
        def __init__(self):
            self._d = zlib.decompressobj(-15)
            self._tail = b""

        def decompress(self, data, max_length):
            log.append(threading.get_ident())
            time.sleep(delay)
            out = self._d.decompress(self._tail + bytes(data), max(max_length, 0))
            self._tail = self._d.unconsumed_tail
            return out

        @property
        def eof(self):
            return self._d.eof

    def compressor(level):
        return zlib.compressobj(level, zlib.DEFLATED, -15)

    return types.SimpleNamespace(__name__="slowdeflate", compressor=compressor, decompressor=Decompressor)


def raw_deflate(payload: bytes) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    return c.compress(payload) + c.flush()


def test_queue_is_bounded_while_the_thread_lags(backend, monkeypatch):
    monkeypatch.setattr(HugeDataReceiver, "SEGMENT", 64 * 1024)
    monkeypatch.setattr(HugeDataReceiver, "MAX_QUEUED", 256 * 1024)
    log: list = []
    payload = os.urandom(2_500_000)
    stream = raw_deflate(payload)
    r = HugeDataReceiver(default_module=slow_codec(0.005, log))
    most = 0
    for i in range(0, len(stream), 16 * 1024):
        r.feed(stream[i:i + 16 * 1024])
        most = max(most, r._queued)
    assert 0 < most < 256 * 1024 + 64 * 1024
    assert r.finish() == payload
    # The first SEGMENT bytes are decompressed inline (the feeds above), then every
    # segment but the tail runs in the thread.
    main = threading.get_ident()
    head = 0
    while head < len(log) and log[head] == main:
        head += 1
    assert head > 0 and main not in log[head:-1] and len(log) - head > 2


def test_a_corrupt_stream_fails_at_its_first_chunk(backend):
    """The first segment is decompressed in feed(): a corrupt start is an error at once, not at finish()."""
    from gaterpc.exceptions import BadGzip

    r = HugeDataReceiver(default_module="gzip")
    with pytest.raises(BadGzip, match="corrupt gzip stream"):
        r.feed(b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"\xff" * 100)
    r.close()


def test_close_stops_the_thread_job(backend, monkeypatch):
    monkeypatch.setattr(HugeDataReceiver, "SEGMENT", 64 * 1024)
    log: list = []
    stream = raw_deflate(os.urandom(1_500_000))
    r = HugeDataReceiver(default_module=slow_codec(0.05, log))
    for i in range(0, len(stream), 64 * 1024):
        r.feed(stream[i:i + 64 * 1024])
    assert r._running
    r.close()
    calls = len(log)
    deadline = time.monotonic() + 10
    while r._running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not r._running
    assert len(log) <= calls + 2  # the segment running at close() ends; no new one starts
    assert len(log) < len(stream) // (64 * 1024)
    with pytest.raises(HugeDataException, match="closed"):
        r.feed(b"more")


def _child_receive(conn, stream: bytes, size: int) -> None:
    r = HugeDataReceiver()
    for i in range(0, len(stream), 100_000):
        r.feed(stream[i:i + 100_000])
    conn.send(len(r.finish()) == size)
    conn.close()


def test_forked_child_gets_its_own_threads(backend):
    payload = os.urandom(1_500_000)
    stream = gzip.compress(payload, 1)
    r = HugeDataReceiver()
    for i in range(0, len(stream), 100_000):
        r.feed(stream[i:i + 100_000])
    assert r.finish() == payload  # the parent's pool now has threads
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_receive, args=(child, stream, len(payload)))
    proc.start()
    try:
        child.close()
        assert parent.poll(60), "the forked child did not finish its transfer"
        assert parent.recv() is True
        proc.join(10)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            os.kill(proc.pid, 9)
            proc.join(5)
        parent.close()


async def test_sender_compresses_the_next_piece_while_chunks_are_sent(backend):
    """The consumer holds the first chunk; meanwhile the next 1 MiB piece gets compressed in a thread."""
    calls: list = []

    class Compressor:
        def __init__(self, level):
            self._c = zlib.compressobj(level, zlib.DEFLATED, -15)

        def compress(self, data):
            calls.append(threading.get_ident())
            return self._c.compress(data)

        def flush(self):
            return self._c.flush()

    codec = types.SimpleNamespace(__name__="spydeflate", compressor=Compressor,
                                  decompressor=lambda: zlib.decompressobj(-15))
    payload = os.urandom(3 * hugedata_mod._SLICE)
    hd = HugeData(END, EXC, data=payload, compress_module=codec, blksize=100_000)
    gen = hd.compress()
    first = await gen.__anext__()
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert len(calls) == 2  # piece 2 compressed while the chunks of piece 1 wait to be sent
    assert threading.get_ident() not in calls
    rest = [c async for c in gen]
    assert zlib.decompress(first + b"".join(rest), -15) == payload


@pytest.mark.parametrize("size", [0, 1, 40_000, 1024 * 1024, 3 * 1024 * 1024 + 17])
async def test_parallel_gzip_is_one_valid_member(size, backend):
    payload = mixed(size, seed=size)[:size]
    hd = HugeData(END, EXC, data=payload, compress_module="gzip", blksize=4096)
    hd.flush()  # no data: pipe mode, ended at once
    stream = b"".join([c async for c in iter_hugedata_chunks(hd)])
    assert stream[:4] == b"\x1f\x8b\x08\x00" and stream[8:10] == b"\x04\xff"  # the original's header
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert d.decompress(stream) == payload and d.eof and not d.unused_data  # CRC and size checked
    r = HugeDataReceiver()
    r.feed(stream)
    assert r.finish() == payload


async def test_parallel_gzip_keeps_the_ratio_and_reads_tiny_pipe_pieces(backend):
    """Blocks are primed with the preceding 32 KiB, also when it spans many small pieces."""
    text = b"".join(b"line %06d of a repetitive log file\n" % (i % 5000) for i in range(120_000))
    hd = HugeData(END, EXC, compress_module="gzip")
    for i in range(0, len(text), 7_001):
        hd.add_data(text[i:i + 7_001])
    hd.flush()
    stream = b"".join([c async for c in iter_hugedata_chunks(hd)])
    assert gzip.decompress(stream) == text
    sequential = gzip.compress(text, 1)
    assert len(stream) <= len(sequential) * 1.02 + 100


async def test_parallel_gzip_compresses_blocks_at_once(backend, monkeypatch):
    """Two blocks are compressed at the same time (each waits for the other at a barrier)."""
    barrier = threading.Barrier(2, timeout=20)
    real = hugedata_mod._deflate_block
    calls = []

    def spy(level, block, window, final):
        calls.append(threading.get_ident())
        if len(calls) <= 2:
            barrier.wait()  # BrokenBarrierError unless the second block runs meanwhile
        return real(level, block, window, final)

    monkeypatch.setattr(hugedata_mod, "_deflate_block", spy)
    payload = mixed(4 * 1024 * 1024)
    stream = b"".join([c async for c in iter_hugedata_chunks(HugeData(END, EXC, data=payload))])
    assert gzip.decompress(stream) == payload
    assert len(set(calls[:2])) == 2 and threading.get_ident() not in calls[:2]


def test_crc32_combine_matches_zlib():
    rnd = random.Random(11)
    for _ in range(200):
        a = rnd.randbytes(rnd.randrange(0, 3000))
        b = rnd.randbytes(rnd.choice([0, 1, rnd.randrange(0, 70_000)]))
        assert hugedata_mod.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


async def test_large_transfers_over_rpc_back_to_back(tmp_path, submits):
    """Real calls: payloads large enough for the threads on both ends, several per process and per codec."""
    from gaterpc.core import AMajordomo, Client, Context, Service, Worker
    from gaterpc.global_settings import Settings
    from gaterpc.utils import interface, msg_pack

    class Big(Worker):
        @interface
        async def blob(self, n, module, blksize):
            return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG, compress_module=module,
                            blksize=blksize, data=msg_pack(random.Random(n).randbytes(n)))

    ctx = Context()
    front, back = f"ipc://{tmp_path}/front", f"ipc://{tmp_path}/back"
    broker = AMajordomo(context=ctx)
    worker = client = None
    try:
        broker.bind_frontend(front)
        broker.bind_backend(back)
        broker.run()
        worker = Service(name="Big").create_worker(Big, back, context=ctx)
        worker.run()
        for _ in range(500):
            if "Big" in broker.services and broker.services["Big"].workers:
                break
            await asyncio.sleep(0.01)
        client = Client(front, context=ctx, reply_timeout=60)
        await client.connect()
        for module, blksize in (("gzip", 1000), ("lz4", 1000), ("gzip", 1 << 20), ("lz4", 1 << 20), ("gzip", 1 << 20)):
            n = 2_500_000 + blksize % 7
            got = await asyncio.wait_for(client.Big.blob(n, module, blksize), 120)
            assert got == random.Random(n).randbytes(n), (module, blksize)
        assert len(client.replies) == 0 and not client._huge
        assert submits  # the client decompressed in its thread
    finally:
        if client is not None:
            client.close()
        if worker is not None:
            worker.stop()
        broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)
