"""HugeData: codecs, the receiver, limits, corruption, both chunk twins, RPC."""

from __future__ import annotations

import asyncio
import gzip
import importlib
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import gaterpc.hugedata as hugedata_mod
import gaterpc.hugereceive as receive_mod
from gaterpc.exceptions import BadGzip, HugeDataException, RemoteException
from gaterpc.global_settings import Settings
from gaterpc.hugedata import HugeData, HugeDataReceiver, detect_format, iter_hugedata_chunks
from gaterpc.serialization import msg_pack
from gaterpc.utils import GzipCompressor, GzipDecompressor, _incremental_compress, _incremental_decompress

from conftest import _import_twin, _twins

MODULES = ["gzip", "bz2", "lzma", "lz4", "tests.plugins.xorzlib"]
REPO = Path(__file__).resolve().parents[1]
END, EXC = b"HugeDataEND", b"HugeDataException"


def payloads():
    rnd = random.Random(7)
    mixed = rnd.randbytes(200_000) + b"abc" * 300_000
    return [b"x", b"hello world" * 10, mixed, os.urandom(3_000_000)]


@pytest.fixture(scope="session", params=_twins("chunks"))
def chunks_twin(request):
    """Each twin of ``gaterpc._speedups.chunks`` (``ChunkCutter``, ``OutputLimiter``)."""
    return _import_twin(request)


@pytest.fixture
def backend(chunks_twin, monkeypatch):
    """``gaterpc.hugedata`` running on one chunk-assembly twin."""
    monkeypatch.setattr(hugedata_mod, "ChunkCutter", chunks_twin.ChunkCutter)
    monkeypatch.setattr(receive_mod, "OutputLimiter", chunks_twin.OutputLimiter)
    return chunks_twin


async def chunks_of(hd):
    return [c async for c in iter_hugedata_chunks(hd)]


def receive(chunks, default="gzip", limit=None):
    r = HugeDataReceiver(default_module=default, max_decompressed_size=limit)
    for c in chunks:
        r.feed(c)
    return r.finish()


@pytest.mark.parametrize("module", MODULES)
async def test_round_trip_every_module(module, backend):
    default = module if module.startswith("tests.") else "gzip"
    for payload in payloads():
        hd = HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG, data=payload,
                      compress_module=module, blksize=1000)
        chunks = await chunks_of(hd)
        assert chunks[-1] == b"" and all(0 < len(c) <= 1000 for c in chunks[:-1])
        assert all(len(c) == 1000 for c in chunks[:-2])
        assert receive(chunks, default=default) == payload


@pytest.mark.parametrize("module", MODULES)
async def test_empty_payload_round_trip(module, backend):
    """0 bytes: pipe mode closed at once still makes a complete (empty) stream."""
    default = module if module.startswith("tests.") else "gzip"
    hd = HugeData(END, EXC, compress_module=module)
    hd.flush()
    chunks = await asyncio.wait_for(chunks_of(hd), 10)
    assert chunks[-1] == b"" and len(chunks) >= 2 and all(chunks[:-1])
    assert receive(chunks, default=default) == b""


@pytest.mark.parametrize("module", MODULES)
async def test_compress_and_decompress_generators_every_module(module, backend):
    loop = asyncio.get_running_loop()
    payload = os.urandom(70_000) + b"abcdef" * 200_000
    hd = HugeData(END, EXC, data=payload, compress_module=module, blksize=5000)
    compressed = [c async for c in hd.compress(loop)]
    assert all(len(c) <= 5000 for c in compressed)
    back = HugeData(END, EXC, data=b"".join(compressed), compress_module=module, blksize=777)
    pieces = [p async for p in back.decompress(loop, max_length=1000)]
    assert b"".join(pieces) == payload
    assert all(len(p) == 777 for p in pieces[:-1]) and len(pieces[-1]) <= 777


async def test_first_chunk_holds_the_header_even_with_a_tiny_blksize(backend):
    payload = b"tiny blocks" * 50
    chunks = await chunks_of(HugeData(END, EXC, data=payload, blksize=3))
    assert len(chunks[0]) >= 10 and chunks[0][:2] == b"\x1f\x8b"
    assert all(0 < len(c) <= 3 for c in chunks[1:-1]) and chunks[-1] == b""
    assert gzip.decompress(b"".join(chunks)) == payload


async def test_gzip_is_the_originals_framing():
    hd = HugeData(b"HugeDataEND", b"HugeDataException", data=b"payload" * 1000)
    stream = b"".join(await chunks_of(hd))
    assert stream[:4] == b"\x1f\x8b\x08\x00" and stream[8:10] == b"\x04\xff"
    assert abs(struct.unpack("<I", stream[4:8])[0] - __import__("time").time()) < 60
    assert gzip.decompress(stream) == b"payload" * 1000
    # level 9 -> XFL 02, other levels -> 00
    for level, xfl in ((9, b"\x02"), (5, b"\x00")):
        c = GzipCompressor(level)
        assert (c.compress(b"a" * 100) + c.flush())[8:9] == xfl


def test_detection_and_fallback():
    assert detect_format(b"\x1f\x8b\x08") == "gzip"
    assert detect_format(b"BZh9") == "bz2"
    assert detect_format(b"\xfd7zXZ\x00") == "lzma"
    assert detect_format(b"\x04\x22\x4d\x18") == "lz4"
    assert detect_format(b"\x00\x01") is None


@pytest.mark.parametrize("module", ["bz2", "lzma", "lz4"])
async def test_receiver_with_gzip_default_reads_other_formats(module):
    hd = HugeData(b"E", b"X", data=b"switch" * 5000, compress_module=module)
    assert receive(await chunks_of(hd), default="gzip") == b"switch" * 5000


async def test_gzip_first_chunk_shorter_than_header():
    stream = b"".join(await chunks_of(HugeData(b"E", b"X", data=b"tiny header" * 100)))
    pieces = [stream[:4], stream[4:7], stream[7:12], stream[12:]]
    assert receive(pieces) == b"tiny header" * 100
    assert receive([stream[:1], b"", stream[1:]]) == b"tiny header" * 100


def test_bytes_after_the_member_are_ignored():
    data = gzip.compress(b"abc") + b"trailing junk"
    assert receive([data]) == b"abc"


BOMBS = {
    "gzip": lambda b: gzip.compress(b, 9),
    "bz2": lambda b: __import__("bz2").compress(b, 9),
    "lzma": lambda b: __import__("lzma").compress(b),
    "lz4": lambda b: __import__("lz4.frame").frame.compress(b),
}


@pytest.mark.parametrize("module", sorted(BOMBS))
def test_decompression_bomb_is_stopped(module, backend):
    limit = 1024 * 1024
    bomb = BOMBS[module](b"\0" * (64 * 1024 * 1024))
    r = HugeDataReceiver(max_decompressed_size=limit)
    with pytest.raises(HugeDataException, match=r"exceeds limit \(1048576 bytes\).*decompression bomb"):
        for i in range(0, len(bomb), 1000):
            r.feed(bomb[i:i + 1000])
        r.finish()
    assert limit < r._out.total <= limit + 1  # output asked for never goes past the limit
    r.close()
    r.close()


def test_payload_exactly_at_the_limit_passes(backend):
    data = os.urandom(1000) * 100
    assert receive([gzip.compress(data)], limit=len(data)) == data
    with pytest.raises(HugeDataException, match="exceeds limit"):
        receive([gzip.compress(data)], limit=len(data) - 1)


def test_default_limit_is_256_mib():
    assert HugeDataReceiver().max_decompressed_size == 256 * 1024 * 1024
    assert HugeData(END, EXC).max_decompressed_size == HugeData.DEFAULT_MAX_DECOMPRESSED_SIZE == 268435456


@pytest.mark.parametrize("module", ["gzip", "tests.plugins.xorzlib"])
def test_unlimited_output_larger_than_one_step(module, backend, monkeypatch):
    """Output beyond one decompress call's step is drained, not taken for truncation."""
    monkeypatch.setattr(receive_mod, "_STEP", 4096)
    payload = random.Random(3).randbytes(50_000) * 4
    c = hugedata_mod.get_codec(module).compressor(1)
    stream = c.compress(payload) + c.flush()
    for size in (len(stream), 1000, 7):
        assert receive([stream[i:i + size] for i in range(0, len(stream), size)],
                       default=module, limit=0) == payload


async def test_feed_async_decompresses_large_chunks_in_a_thread(backend, monkeypatch):
    payload = os.urandom(600_000)
    stream = gzip.compress(payload, 1)
    threads = []
    real = asyncio.to_thread

    async def spy(func, *args):
        threads.append(func)
        return await real(func, *args)

    monkeypatch.setattr(receive_mod.asyncio, "to_thread", spy)
    r = HugeDataReceiver()
    await r.feed_async(stream[:100])
    await r.feed_async(stream[100:])
    assert len(threads) == 1
    assert r.finish() == payload


def test_truncated_and_corrupt_streams(backend):
    good = gzip.compress(os.urandom(10000))
    with pytest.raises(HugeDataException, match="truncated"):
        receive([good[:len(good) // 2]])
    with pytest.raises(HugeDataException, match="truncated"):
        receive([good[:-1]])  # trailer incomplete
    with pytest.raises(HugeDataException, match="truncated"):
        receive([good[:5]])  # not even the header
    bad_crc = good[:-8] + struct.pack("<I", (zlib.crc32(b"x") ^ 1) & 0xFFFFFFFF) + good[-4:]
    with pytest.raises(BadGzip, match="incorrect data check"):
        receive([bad_crc])
    bad_size = good[:-4] + struct.pack("<I", 10001)
    with pytest.raises(BadGzip, match="incorrect length check"):
        receive([bad_size])
    corrupt = good[:20] + bytes(b ^ 0xFF for b in good[20:60]) + good[60:]
    with pytest.raises((HugeDataException, BadGzip)):
        receive([corrupt])
    with pytest.raises(HugeDataException, match="empty"):
        receive([])
    with pytest.raises(HugeDataException, match="empty"):
        receive([b"", b""])


@pytest.mark.parametrize("module", ["bz2", "lzma", "lz4", "tests.plugins.xorzlib"])
async def test_truncated_and_corrupt_streams_other_formats(module, backend):
    default = module if module.startswith("tests.") else "gzip"
    stream = b"".join(await chunks_of(HugeData(END, EXC, data=os.urandom(20_000), compress_module=module)))
    with pytest.raises(HugeDataException, match="truncated"):
        receive([stream[:len(stream) // 2]], default=default)
    if module.startswith("tests."):
        return  # raw deflate carries no checksum: corruption of stored blocks is undetectable
    corrupt = stream[:12] + bytes(b ^ 0x5A for b in stream[12:200]) + stream[200:]
    with pytest.raises(HugeDataException):
        receive([corrupt], default=default)


def test_receiver_closed_and_garbage_without_magic():
    r = HugeDataReceiver()
    r.feed(gzip.compress(b"abc"))
    assert r.finish() == b"abc"
    with pytest.raises(HugeDataException, match="closed"):
        r.feed(b"more")
    with pytest.raises(HugeDataException, match="closed"):
        r.finish()
    with pytest.raises(BadGzip):
        receive([b"this is not compressed at all"])  # no magic: default gzip rejects it


async def test_repeated_transfers_in_one_process(backend):
    for i, module in enumerate(["gzip", "gzip", "gzip", "lz4", "bz2"]):
        payload = os.urandom(300_000 + i)  # large enough for the thread path
        hd = HugeData(b"E", b"X", data=payload, compress_module=module)
        r = HugeDataReceiver()
        async for chunk in iter_hugedata_chunks(hd):
            await r.feed_async(chunk)
        assert r.finish() == payload
        hd.destroy()
        hd.destroy()  # idempotent
        assert hd.data is None


async def test_data_kinds_and_attributes():
    payload = bytearray(b"abc" * 1000)
    hd = HugeData(END, EXC, data=payload, compress_module="lzma", compress_level=3, blksize=100, timeout=2)
    assert (hd.end_tag, hd.except_tag, hd.compress_module, hd.compress_level, hd.blksize, hd.timeout) == (
        END, EXC, "lzma", 3, 100, 2)
    assert bytes(hd.data) == bytes(payload) and hd._remote_exception is None
    for name in ("_p", "sel", "_write_buffer", "_write_offset", "_write_end", "_finalizer"):
        assert hasattr(hd, name)
    assert HugeData._WRITE_BUFFER_COMPACT_THRESHOLD == 1048576
    assert receive(await chunks_of(hd)) == bytes(payload)
    mv = memoryview(b"xyz" * 1000)[10:]
    assert receive(await chunks_of(HugeData(END, EXC, data=mv))) == bytes(mv)
    import array

    arr = array.array("i", range(5000))  # multi-byte items: compressed as raw bytes
    assert receive(await chunks_of(HugeData(END, EXC, data=arr))) == arr.tobytes()
    assert HugeData(END, EXC, data=memoryview(b"")).data is None  # empty: pipe mode


async def test_decompress_raises_the_remote_exception():
    hd = HugeData(END, EXC, data=gzip.compress(b"x"))
    hd._remote_exception = msg_pack(["ValueError", "ValueError('boom')", "tb"])
    with pytest.raises(RemoteException):
        async for _ in hd.decompress():
            pass


async def test_unknown_module_and_destroyed_data_raise_hugedata_exception():
    with pytest.raises(HugeDataException):
        async for _ in HugeData(END, EXC, data=b"abc", compress_module="no.such.module").compress():
            pass
    hd = HugeData(END, EXC, data=b"abc")
    hd.destroy()
    with pytest.raises(HugeDataException):
        async for _ in hd.compress():
            pass


async def test_pipe_mode_and_public_generators():
    loop = asyncio.get_running_loop()
    hd = HugeData(b"HugeDataEND", b"HugeDataException", compress_module="bz2", compress_level=5)
    hd.add_data(b"part one|")
    hd.add_data(b"part two")
    hd.flush()
    with pytest.raises(RuntimeError, match="pipe close"):
        hd.add_data(b"late")
    compressed = [c async for c in hd.compress(loop)]
    assert b"".join(compressed).startswith(b"BZh")
    back = HugeData(b"HugeDataEND", b"HugeDataException", compress_module="bz2", blksize=4)
    for c in compressed:
        back.add_data(c)
    back.flush()
    pieces = [p async for p in back.decompress(loop, max_length=1024)]
    assert b"".join(pieces) == b"part one|part two" and all(len(p) <= 4 for p in pieces)
    with pytest.raises(TypeError):
        HugeData(b"E", b"X", data=b"abc").add_data(b"d")


async def test_pipe_mode_from_another_thread_and_end_tag():
    """add_data() from a thread while compress() runs; decompress() stops at the end tag."""
    import threading

    payload = [os.urandom(500) for _ in range(40)]
    hd = HugeData(END, EXC, timeout=0.05)

    def producer():
        for p in payload:
            hd.add_data(p)
        hd.flush()

    t = threading.Thread(target=producer)
    t.start()
    compressed = await asyncio.wait_for(asyncio.ensure_future(_collect(hd.compress())), 10)
    t.join(5)
    stream = b"".join(compressed)
    assert gzip.decompress(stream) == b"".join(payload)
    back = HugeData(END, EXC, blksize=1000)
    for i in range(0, len(stream), 999):
        back.add_data(stream[i:i + 999])
    back.add_data(b"")
    back.add_data(END)  # the original's pipe protocol: the end tag closes the input
    out = await asyncio.wait_for(_collect(back.decompress(None, 1000)), 10)
    assert b"".join(out) == b"".join(payload)


async def test_decompress_stops_at_end_of_stream_without_flush():
    hd = HugeData(END, EXC, timeout=30)
    hd.add_data(gzip.compress(b"no flush needed"))
    out = await asyncio.wait_for(_collect(hd.decompress()), 5)
    assert b"".join(out) == b"no flush needed"


async def _collect(agen):
    return [x async for x in agen]


async def test_compress_without_loop_argument():
    hd = HugeData(b"E", b"X", data=b"z" * 10)
    assert gzip.decompress(b"".join([c async for c in hd.compress()])) == b"z" * 10


def test_gzip_decompressor_needs_input_is_exact():
    """needs_input True means no output is held back (byte-wise input, small max_length)."""
    data = b"a" * 200_000 + os.urandom(3000)
    stream = gzip.compress(data, 9)
    d = GzipDecompressor()
    out = bytearray()
    for i in range(len(stream)):
        out += d.decompress(stream[i:i + 1], 100)
        for _ in range(10_000):
            if d.needs_input or d.eof:
                break
            out += d.decompress(b"", 100)
        assert d.eof or d.decompress(b"", 100) == b""
    assert d.eof and out == data


def test_gzip_helpers_and_incremental_functions():
    c = GzipCompressor(1)
    stream = c.compress(b"hello") + c.flush()
    d = GzipDecompressor()
    assert d.decompress(stream) == b"hello" and d.eof
    with pytest.raises(BadGzip):
        GzipDecompressor().decompress(b"not gzip at all, definitely")
    chunks = _incremental_compress("gzip", 1, b"q" * 5000, None, b"END", 100)
    assert gzip.decompress(b"".join(chunks)) == b"q" * 5000
    assert b"".join(_incremental_decompress("gzip", b"".join(chunks), None, b"END")) == b"q" * 5000


# -- both twins of the chunk assembly ---------------------------------------

def _built_twins():
    out = [importlib.import_module("gaterpc._speedups._chunks_py")]
    try:
        out.append(importlib.import_module("gaterpc._speedups._chunks_c"))
    except ImportError:
        pass
    return out


def test_compiled_chunks_active_when_built(compiled_expected):
    import gaterpc._speedups.chunks as sel

    assert sel.USE_C == compiled_expected("chunks")
    assert hugedata_mod.ChunkCutter is sel.ChunkCutter


def test_twins_export_the_same_names(chunks_twin):
    py = importlib.import_module("gaterpc._speedups._chunks_py")
    assert tuple(chunks_twin.__all__) == tuple(py.__all__)
    assert chunks_twin.UNLIMITED_STEP == py.UNLIMITED_STEP


def test_cutter_and_limiter(chunks_twin):
    chunks_mod = chunks_twin
    cut = chunks_mod.ChunkCutter(4)
    assert cut.feed(b"ab") == []
    assert cut.feed(b"cdefghij") == [b"abcd", b"efgh"]
    assert cut.pending() == 2 and cut.rest() == b"ij" and cut.rest() == b""
    with pytest.raises(ValueError):
        chunks_mod.ChunkCutter(0)
    lim = chunks_mod.OutputLimiter(10)
    lim.add(b"12345")
    assert lim.room() == 6
    lim.add(b"")
    assert lim.take() == b"12345" and lim.take() == b""
    with pytest.raises(HugeDataException, match="exceeds limit"):
        lim.add(b"123456")
    assert chunks_mod.OutputLimiter(0).room() == chunks_mod.UNLIMITED_STEP
    with pytest.raises(ValueError):
        chunks_mod.OutputLimiter(-1)
    cut = chunks_mod.ChunkCutter(3)
    assert cut.feed(memoryview(b"abcdefg")[1:]) == [b"bcd", b"efg"] and cut.rest() == b""
    lim = chunks_mod.OutputLimiter(0)
    lim.add(b"ab")
    lim.add(bytearray(b"cd"))
    value = lim.getvalue()
    assert value == b"abcd" and isinstance(value, bytearray) and lim.total == 4


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(0, 300), pieces=st.lists(st.binary(max_size=100), max_size=10),
       takes=st.lists(st.booleans(), max_size=10))
def test_limiter_twins_agree(limit, pieces, takes):
    results = []
    for mod in _built_twins():
        lim = mod.OutputLimiter(limit)
        trace = []
        for i, p in enumerate(pieces):
            trace.append(lim.room())
            try:
                lim.add(p)
            except HugeDataException as exc:
                trace.append(str(exc))
                break
            if i < len(takes) and takes[i]:
                trace.append(lim.take())
        trace.append((lim.total, bytes(lim.getvalue())))
        results.append(trace)
    assert all(r == results[0] for r in results)


@settings(max_examples=60, deadline=None)
@given(bs=st.integers(1, 64), pieces=st.lists(st.binary(max_size=200), max_size=20))
def test_twins_agree(bs, pieces):
    results = []
    for mod in _built_twins():
        cut = mod.ChunkCutter(bs)
        out = [cut.feed(p) for p in pieces]
        results.append((out, cut.rest()))
    assert all(r == results[0] for r in results)
    assert b"".join(b"".join(o) for o in results[0][0]) + results[0][1] == b"".join(pieces)


# -- interoperability with the original's gzip code ---------------------------

def _original_python():
    from gaterpc.bench.origenv import OriginalEnvError, ensure_original_env

    try:
        return ensure_original_env()
    except OriginalEnvError as exc:
        pytest.skip(f"the original gaterpc environment cannot be built: {exc}")


@pytest.mark.interop
async def test_original_reads_our_gzip_and_we_read_its(tmp_path):
    python = _original_python()
    payload = os.urandom(5000) + b"compressible" * 5000
    ours = b"".join(await chunks_of(HugeData(b"HugeDataEND", b"HugeDataException", data=payload)))
    (tmp_path / "ours.gz").write_bytes(ours)
    (tmp_path / "payload").write_bytes(payload)
    script = (
        "import sys, pathlib\n"
        "from gaterpc.utils import GzipDecompressor, GzipCompressor\n"
        "d = pathlib.Path(sys.argv[1])\n"
        "dec = GzipDecompressor()\n"
        "data = (d / 'ours.gz').read_bytes()\n"
        "out = dec.decompress(data[:1000], 0)\n"
        "out += dec.decompress(data[1000:], 0)\n"
        "assert out == (d / 'payload').read_bytes(), 'mismatch'\n"
        "c = GzipCompressor(1)\n"
        "(d / 'theirs.gz').write_bytes(c.compress((d / 'payload').read_bytes()) + c.flush())\n"
        "print('OK')\n"
    )
    proc = subprocess.run([str(python), "-I", "-c", script, str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr[-2000:]
    theirs = (tmp_path / "theirs.gz").read_bytes()
    assert theirs[:4] == b"\x1f\x8b\x08\x00"
    assert receive([theirs[i:i + 1000] for i in range(0, len(theirs), 1000)]) == payload


_ORIG_DECODE = """
import asyncio, pathlib, sys
from gaterpc.global_settings import Settings
from gaterpc.utils import HugeData
d = pathlib.Path(sys.argv[1])
async def main():
    loop = asyncio.get_running_loop()
    hd = HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG, compress_module="gzip",
                  compress_level=1, blksize=1000, timeout=1)
    for chunk in (d / "ours.chunks").read_bytes().split(b"--8<--"):
        hd.add_data(chunk)
    hd.add_data(Settings.HUGE_DATA_END_TAG)
    out = [piece async for piece in hd.decompress(loop, 1000)]
    hd.destroy()
    (d / "decoded").write_bytes(b"".join(out))
    print("OK")
asyncio.run(asyncio.wait_for(main(), 60))
"""

_ORIG_ENCODE = """
import asyncio, pathlib, sys
from gaterpc.global_settings import Settings
from gaterpc.utils import HugeData
d = pathlib.Path(sys.argv[1])
async def main():
    loop = asyncio.get_running_loop()
    hd = HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG, data=(d / "payload").read_bytes())
    chunks = [c async for c in hd.compress(loop)]
    hd.destroy()
    (d / "theirs.chunks").write_bytes(b"".join(len(c).to_bytes(4, "big") + c for c in chunks))
    print("OK")
asyncio.run(asyncio.wait_for(main(), 60))
"""


@pytest.mark.interop
async def test_original_hugedata_reads_our_chunks_and_we_read_its(tmp_path):
    """The original's receiving HugeData (as its client uses it) and sending HugeData.

    One transfer per original process (H1: a second one hangs).
    """
    python = _original_python()
    payload = os.urandom(20_000) + b"compressible" * 30_000
    (tmp_path / "payload").write_bytes(payload)
    ours = await chunks_of(HugeData(END, EXC, data=payload))
    assert b"--8<--" not in b"".join(ours)
    (tmp_path / "ours.chunks").write_bytes(b"--8<--".join(ours))
    for script in (_ORIG_DECODE, _ORIG_ENCODE):
        proc = subprocess.run([str(python), "-I", "-c", script, str(tmp_path)], capture_output=True,
                              text=True, timeout=90, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr[-2000:]
    assert (tmp_path / "decoded").read_bytes() == payload
    raw = (tmp_path / "theirs.chunks").read_bytes()
    theirs, i = [], 0
    while i < len(raw):
        n = int.from_bytes(raw[i:i + 4], "big")
        theirs.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    assert theirs[0][:4] == b"\x1f\x8b\x08\x00" and len(theirs[0]) == 1000
    r = HugeDataReceiver()
    for c in theirs:
        r.feed(c)
    assert r.finish() == payload
