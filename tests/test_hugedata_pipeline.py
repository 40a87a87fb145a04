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
import gaterpc.hugereceive as receive_mod
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
    monkeypatch.setattr(receive_mod, "OutputLimiter", chunks_twin.OutputLimiter)
    return chunks_twin


def mixed(size: int, seed: int = 5) -> bytes:
    rnd = random.Random(seed)
    return rnd.randbytes(size // 2) + b"compressible text; " * (size // 38 + 1)


@pytest.fixture
def submits(monkeypatch):
    """Counts the segments jobs handed to the receiver's thread pool."""
    calls = []
    real = receive_mod._decompress_executor

    class Spy:
        def submit(self, fn):
            calls.append(fn)
            return real().submit(fn)

    monkeypatch.setattr(receive_mod, "_decompress_executor", lambda: Spy())
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


def spy_codec(log: list):
    """Raw deflate (no magic) whose compressor and decompressor log the size of every input."""

    class Compressor:
        def __init__(self, level):
            self._c = zlib.compressobj(level, zlib.DEFLATED, -15)

        def compress(self, data):
            log.append(("c", len(data)))
            return self._c.compress(data)

        def flush(self):
            return self._c.flush()

    class Decompressor:
        def __init__(self):
            self._d = zlib.decompressobj(-15)

        def decompress(self, data, max_length):
            log.append(("d", len(data)))
            return self._d.decompress(self._d.unconsumed_tail + bytes(data), max(max_length, 0))

        @property
        def eof(self):
            return self._d.eof

    return types.SimpleNamespace(__name__="spydeflate", compressor=Compressor, decompressor=Decompressor)


def test_small_chunks_are_decompressed_in_groups(backend, submits):
    """While the receiver decompresses on the caller's thread, the first chunk is decompressed
    alone and the next ones in groups of INLINE_GROUP bytes: one call per group, not per chunk."""
    log: list = []
    payload = os.urandom(150_000)
    stream = raw_deflate(payload)
    assert len(stream) < HugeDataReceiver.SEGMENT  # all of it in the inline phase
    r = HugeDataReceiver(default_module=spy_codec(log))
    for i in range(0, len(stream), 1000):
        r.feed(stream[i:i + 1000])
    group = receive_mod.INLINE_GROUP
    sizes = [n for kind, n in log if kind == "d" and n]
    assert sizes[0] == 1000  # the first chunk at once: a bad stream fails at its first chunk
    assert all(group <= n < group + 1000 for n in sizes[1:])
    assert len(sizes) == 1 + (len(stream) - 1000) // (group // 1000 * 1000 + 1000)
    assert r._pending and not r.prepare_finish()  # the last group: decompressed here, no thread
    assert not r._pending
    assert r.finish() == payload
    assert not submits


def test_a_bad_value_after_the_first_chunk_fails_within_one_group(backend):
    encoded = b"\x92" + msg_pack(os.urandom(4000)) + b"\xc1" + os.urandom(200_000)  # 0xc1: never used
    fed = _feeds_before_unpack_error(_stream("lz4", encoded))
    bad = 4  # the 5th chunk (1000 bytes each) holds the bad byte: at most one group later
    assert bad <= fed <= bad + receive_mod.INLINE_GROUP // 1000 + 1


def test_a_group_that_expands_a_lot_is_finished_in_the_thread(backend, submits):
    """prepare_finish() decompresses the last group within the inline output budget: the rest
    of a highly compressible group goes to the thread, and finishing is slow (off the loop)."""
    payload = os.urandom(1000) + b"\x00" * (8 * 1024 * 1024)
    stream = gzip.compress(payload, 6)
    assert len(stream) < receive_mod.INLINE_GROUP
    r = HugeDataReceiver()
    for i in range(0, len(stream), 1000):
        r.feed(stream[i:i + 1000])
    assert r._out.total < INLINE_OUTPUT and not submits
    assert r.prepare_finish()
    assert submits
    assert r.finish() == payload


async def test_small_chunks_leave_before_the_piece_is_compressed(backend):
    """With chunks much smaller than a piece, the piece is compressed in parts, the first one
    small: the first chunks are ready after 64 KiB of input, not after the whole piece."""
    log: list = []
    payload = os.urandom(1024 * 1024 + 5)
    hd = HugeData(END, EXC, compress_module=spy_codec(log), blksize=1000)
    hd.add_data(payload)
    hd.flush()
    batches = [b async for b in iter_hugedata_batches(hd)]
    sizes = [n for kind, n in log if kind == "c"]
    assert sizes[0] == hugedata_mod._FIRST_PART
    assert all(n <= hugedata_mod._PART for n in sizes) and sum(sizes) == len(payload)
    assert sum(len(c) for c in batches[0]) <= hugedata_mod._FIRST_PART + 1000
    stream = b"".join(c for b in batches for c in b)
    assert zlib.decompress(stream, -15) == payload
    # large chunks: the piece is compressed whole
    log.clear()
    hd = HugeData(END, EXC, compress_module=spy_codec(log), blksize=1024 * 1024)
    hd.add_data(payload)
    hd.flush()
    stream = b"".join([c async for c in iter_hugedata_chunks(hd)])
    assert [n for kind, n in log if kind == "c"] == [len(payload)]
    assert zlib.decompress(stream, -15) == payload


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
    from gaterpc.core import Worker
    from gaterpc.global_settings import Settings
    from gaterpc.utils import interface, msg_pack
    from local_cluster import local_cluster

    class Big(Worker):
        @interface
        async def blob(self, n, module, blksize):
            return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG, compress_module=module,
                            blksize=blksize, data=msg_pack(random.Random(n).randbytes(n)))

    async with local_cluster(tmp_path, Big, "Big", reply_timeout=60) as c:
        client = c.client
        for module, blksize in (("gzip", 1000), ("lz4", 1000), ("gzip", 1 << 20), ("lz4", 1 << 20), ("gzip", 1 << 20)):
            n = 2_500_000 + blksize % 7
            got = await asyncio.wait_for(client.Big.blob(n, module, blksize), 120)
            assert got == random.Random(n).randbytes(n), (module, blksize)
        assert len(client.replies) == 0 and not client._huge
        assert submits  # the client decompressed in its thread


# -- streaming decode (the client's receivers: decode=True) ------------------------------------

import msgpack  # noqa: E402

from gaterpc.hugedata import INLINE_OUTPUT, StreamDecoder  # noqa: E402
from gaterpc.serialization import MsgUnpackError, msg_pack, msg_unpack  # noqa: E402


def _stream(module: str, encoded: bytes, blksize: int = 1000) -> list:
    async def make():
        hd = HugeData(END, EXC, data=encoded, compress_module=module, blksize=blksize)
        return [c async for c in iter_hugedata_chunks(hd)]
    return asyncio.run(make()) if encoded else [gzip.compress(b"")]


def _decode(chunks, **kw):
    r = HugeDataReceiver(decode=True, **kw)
    for c in chunks:
        r.feed(c)
    return r.finish_decoded()


def _feeds_before_unpack_error(chunks) -> int:
    """Feed ``chunks`` to a decoding receiver, then finish: how many feeds went through before
    the ``MsgUnpackError`` (which must come)."""
    r = HugeDataReceiver(decode=True)
    fed = 0
    try:
        with pytest.raises(MsgUnpackError, match="unpack failed"):
            for c in chunks:
                r.feed(c)
                fed += 1
            r.finish_decoded()
    finally:
        r.close()
    return fed


def _values():
    rnd = random.Random(3)
    seg = HugeDataReceiver.SEGMENT
    return {
        "empty bytes": b"",
        "small": {"a": [1, 2.5, None, "x"], "b": b"\x00" * 10},
        "one segment of bytes": rnd.randbytes(seg - 5),  # bin32 header + SEGMENT - 5 bytes: SEGMENT encoded
        "pieces": [rnd.randbytes(300_000) + b"t" * 700_000 for _ in range(4)],
        "many small": [{"i": i, "s": "v" * (i % 50)} for i in range(60_000)],
    }


@pytest.mark.parametrize("module", ["gzip", "lz4"])
@pytest.mark.parametrize("name", list(_values()))
def test_streaming_decode_equals_the_whole_decode(name, module, backend):
    value = _values()[name]
    encoded = msg_pack(value)
    if name == "one segment of bytes":
        assert len(encoded) == HugeDataReceiver.SEGMENT
    for blksize in (1000, 1 << 20):
        chunks = _stream(module, encoded, blksize)
        got = _decode(chunks)
        assert got == value == msg_unpack(encoded)
        assert msg_pack(got) == encoded  # byte for byte


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7])
def test_streaming_decode_with_piece_boundaries_inside_headers(step, backend):
    """Decompressed pieces of a few bytes: every msgpack header is cut somewhere."""
    value = [b"x" * 70_000, "s" * 300, {"k": list(range(40))}, b"", 2 ** 40, -1.5, [b"y" * 5] * 20]
    encoded = msg_pack(value)
    r = HugeDataReceiver(decode=True, pipelined=False)
    r._step = step  # the decompressor gives at most `step` bytes per call
    stream = gzip.compress(encoded)
    for i in range(0, len(stream), 4096):
        r.feed(stream[i:i + 4096])
    assert r.finish_decoded() == value


def test_stream_decoder_every_split_of_a_bin32_header():
    value = [b"z" * 70_000, 7]
    encoded = msg_pack(value)
    for cut in range(0, 12):
        d = StreamDecoder(0)
        d.add(encoded[:cut])
        d.add(encoded[cut:])
        assert d.result() == value


def test_streaming_decode_holds_one_value_not_the_payload(backend):
    """The decoder's buffer holds about one undecoded value, not the decompressed payload."""
    value = [os.urandom(256 * 1024) for _ in range(40)]  # 10 MiB of 256 KiB values
    encoded = msg_pack(value)
    d = StreamDecoder(0)
    most = 0
    for i in range(0, len(encoded), 100_000):
        d.add(encoded[i:i + 100_000])
        most = max(most, d.total - d._unpacker.tell())
    assert d.result() == value
    assert most < 512 * 1024


@pytest.mark.parametrize("module", ["gzip", "lz4"])
def test_undecodable_payload_fails_mid_stream(module, backend):
    """A valid compressed stream of bad msgpack fails at a feed long before the end."""
    big = b"q" * 3_000_000
    encoded = b"\x93" + msg_pack(big) + b"\xc1" + msg_pack(os.urandom(3_000_000))  # 0xc1: never used
    chunks = _stream(module, encoded)
    assert _feeds_before_unpack_error(chunks) < len(chunks) - 1  # raised by a feed, not at the end


@pytest.mark.parametrize("encoded, what", [
    (b"", "empty"),
    (msg_pack([1, 2, 3])[:-1], "truncated"),
    (msg_pack([1, 2]) + b"\x01", "trailing"),
    (msg_pack(b"x" * 2_000_000) + msg_pack(1), "trailing after a large value"),
])
def test_payload_that_is_not_one_value_fails_as_msg_unpack(encoded, what, backend):
    with pytest.raises(MsgUnpackError):
        msg_unpack(encoded)
    with pytest.raises(MsgUnpackError, match="unpack failed"):
        _decode([gzip.compress(encoded)])


def test_decode_limits_and_hooks_are_those_of_message_pack(backend, monkeypatch):
    from gaterpc.serialization import message_pack

    monkeypatch.setattr(message_pack, "max_bin_len", 1000)
    try:
        with pytest.raises(MsgUnpackError, match="max_bin_len"):
            _decode([gzip.compress(msg_pack([b"x" * 2000]))])
        message_pack.unpack_list_hook = tuple
        assert _decode([gzip.compress(msg_pack([1, [2, 3]]))]) == (1, (2, 3))
    finally:
        del message_pack.max_bin_len
        del message_pack.unpack_list_hook


def test_decompression_bomb_limit_with_decode(backend):
    limit = 1024 * 1024
    stream = gzip.compress(msg_pack(os.urandom(3 * limit)), 1)
    with pytest.raises(HugeDataException, match=r"exceeds limit \(1048576 bytes\)"):
        _decode([stream[i:i + 1000] for i in range(0, len(stream), 1000)], max_decompressed_size=limit)


def test_highly_compressible_start_goes_on_in_the_thread(backend, submits):
    """A tiny first chunk that expands to many MiB: feed() makes about INLINE_OUTPUT, the thread the rest."""
    value = b"\x00" * (12 * 1024 * 1024)
    stream = gzip.compress(msg_pack(value), 6)
    assert len(stream) < HugeDataReceiver.SEGMENT
    r = HugeDataReceiver(decode=True)
    r.feed(stream)
    assert r._out.total < INLINE_OUTPUT + 2 * 1024 * 1024
    assert submits and r.slow_finish
    assert r.finish_decoded() == value


def test_finish_and_finish_decoded_are_kept_apart(backend):
    r = HugeDataReceiver(decode=True)
    r.feed(gzip.compress(msg_pack(1)))
    with pytest.raises(TypeError, match="finish_decoded"):
        r.finish()
    r = HugeDataReceiver()
    r.feed(gzip.compress(msg_pack(1)))
    with pytest.raises(TypeError, match="decode=True"):
        r.finish_decoded()
    assert msg_unpack(r.finish()) == 1


async def test_undecodable_result_fails_the_call_and_the_client_goes_on(tmp_path):
    """Over RPC: a result that is not msgpack fails its call with MsgUnpackError (mid-stream, found
    by the decoding thread); the same client then gets the next HugeData results right."""
    from gaterpc.core import Worker
    from gaterpc.global_settings import Settings
    from gaterpc.utils import interface
    from local_cluster import local_cluster

    class Bad(Worker):
        @interface
        async def blob(self, n, module, corrupt, blksize=64 * 1024):
            data = msg_pack([random.Random(n).randbytes(n)] * 2)
            if corrupt:
                data = b"\x93" + msg_pack(b"q" * n) + b"\xc1" + data  # 0xc1: never used in msgpack
            return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG, compress_module=module,
                            blksize=blksize, data=data)

    async with local_cluster(tmp_path, Bad, "Bad", reply_timeout=60) as c:
        client = c.client
        for module in ("lz4", "gzip"):
            n = 2_000_000
            with pytest.raises(MsgUnpackError, match="unpack failed"):
                await asyncio.wait_for(client.Bad.blob(n, module, True), 60)
            got = await asyncio.wait_for(client.Bad.blob(n, module, False), 60)
            assert got == [random.Random(n).randbytes(n)] * 2
            assert await asyncio.wait_for(client.Bad.blob(10, module, False), 60) == [random.Random(10).randbytes(10)] * 2
            # a small transfer in 1000-byte chunks: the bad byte is in the group of
            # chunks decompressed when the end arrives (no thread)
            with pytest.raises(MsgUnpackError, match="unpack failed"):
                await asyncio.wait_for(client.Bad.blob(3000, module, True, 1000), 60)
            got = await asyncio.wait_for(client.Bad.blob(3000, module, False, 1000), 60)
            assert got == [random.Random(3000).randbytes(3000)] * 2
        assert not client._huge
        for _ in range(200):  # the failed call's late chunks are dropped as they come
            if not client.replies:
                break
            await asyncio.sleep(0.01)
        assert not client.replies


# -- the sender's chunks in batches ----------------------------------------------------------------

from gaterpc.hugedata import iter_hugedata_batches  # noqa: E402


def _expected_chunks(stream: bytes, blksize: int) -> list:
    """The wire chunks of a compressed stream: cut every ``blksize`` bytes, the first chunks
    merged until they hold the 10-byte header, then the empty chunk."""
    cut = [stream[i:i + blksize] for i in range(0, len(stream), blksize)]
    out, head = [], b""
    for chunk in cut:
        if head is not None:
            head += chunk
            if len(head) < 10:
                continue
            chunk, head = head, None
        out.append(chunk)
    if head:
        out.append(head)
    return out + [b""]


@pytest.mark.parametrize("module", ["gzip", "lz4"])
@pytest.mark.parametrize("size, blksize", [(size, blksize) for size in (0, 1, 5000, 2_500_000)
                                           for blksize in (1, 3, 1000, 65536)
                                           if blksize >= 1000 or size <= 5000])  # not millions of tiny chunks
async def test_batches_are_the_chunks_on_the_wire(module, size, blksize, backend):
    payload = mixed(size, seed=size)[:size]

    def make():
        hd = HugeData(END, EXC, compress_module=module, blksize=blksize)
        for i in range(0, len(payload), 700_001):
            hd.add_data(payload[i:i + 700_001])
        hd.flush()
        return hd

    batches = [b async for b in iter_hugedata_batches(make())]
    chunks = [c async for c in iter_hugedata_chunks(make())]
    assert all(batches) and batches[-1] == [b""]
    flat = [c for b in batches for c in b]
    stream = b"".join(flat)
    if module == "gzip":  # the header's MTIME may differ between the two transfers
        assert b"".join(chunks)[:4] + b"".join(chunks)[8:] == stream[:4] + stream[8:]
    else:
        assert b"".join(chunks) == stream
    assert [len(c) for c in chunks] == [len(c) for c in flat] == [len(c) for c in _expected_chunks(stream, blksize)]
    assert flat == _expected_chunks(stream, blksize)
    r = HugeDataReceiver()
    for c in flat:
        r.feed(c)
    assert r.finish() == payload
    if size > 1_000_000 and blksize == 1000:
        # one list per part of the input compressed (at most 256 KiB), not per chunk
        assert len(batches) < len(flat) / 50


async def test_a_subclass_compress_is_still_used(backend):
    class Custom(HugeData):
        async def compress(self, loop=None):
            async for chunk in super().compress(loop):
                yield chunk
            self.used = True

    hd = Custom(END, EXC, data=b"x" * 5000, blksize=4)
    chunks = [c async for c in iter_hugedata_chunks(hd)]
    assert hd.used and len(chunks[0]) >= 10 and chunks[-1] == b""
    assert gzip.decompress(b"".join(chunks)) == b"x" * 5000


@pytest.mark.parametrize("name", ["empty bytes", "pieces", "many small"])
def test_without_a_resuming_unpacker_the_payload_is_decoded_at_the_end(name, backend, monkeypatch):
    """msgpack's pure-Python fallback cannot resume: the same values and errors, decoded in one go."""
    import gaterpc.hugedecode as hugedecode_mod

    monkeypatch.setattr(hugedecode_mod, "STREAMING", False)
    value = _values()[name]
    encoded = msg_pack(value)
    d = StreamDecoder(0)
    d.add(encoded)
    assert d._unpacker.tell() == 0 and len(d._whole) == len(encoded)  # gathered, not decoded yet
    assert d.result() == value
    assert _decode(_stream("lz4", encoded)) == value
    for bad in (encoded[:-1], encoded + b"\x01"):
        with pytest.raises(MsgUnpackError, match="unpack failed"):
            _decode([gzip.compress(bad)])
