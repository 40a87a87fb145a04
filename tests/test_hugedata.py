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

from gaterpc._speedups import NO_EXTENSIONS
from gaterpc.exceptions import BadGzip, HugeDataException
from gaterpc.global_settings import Settings
from gaterpc.hugedata import HugeData, HugeDataReceiver, detect_format, iter_hugedata_chunks
from gaterpc.utils import GzipCompressor, GzipDecompressor, _incremental_compress, _incremental_decompress

MODULES = ["gzip", "bz2", "lzma", "lz4", "tests.plugins.xorzlib"]
REPO = Path(__file__).resolve().parents[1]


def payloads():
    rnd = random.Random(7)
    mixed = bytes(rnd.getrandbits(8) for _ in range(200_000)) + b"abc" * 300_000
    return [b"x", b"hello world" * 10, mixed, os.urandom(3_000_000)]


async def chunks_of(hd):
    return [c async for c in iter_hugedata_chunks(hd)]


def receive(chunks, default="gzip", limit=None):
    r = HugeDataReceiver(default_module=default, max_decompressed_size=limit)
    for c in chunks:
        r.feed(c)
    return r.finish()


@pytest.mark.parametrize("module", MODULES)
async def test_round_trip_every_module(module):
    default = module if module.startswith("tests.") else "gzip"
    for payload in payloads():
        hd = HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG, data=payload,
                      compress_module=module, blksize=1000)
        chunks = await chunks_of(hd)
        assert chunks[-1] == b"" and all(0 < len(c) <= 1000 for c in chunks[:-1])
        assert all(len(c) == 1000 for c in chunks[:-2])
        assert receive(chunks, default=default) == payload


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


def test_decompression_bomb_is_stopped():
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024), 9)
    r = HugeDataReceiver(max_decompressed_size=1024 * 1024)
    with pytest.raises(HugeDataException, match="exceeds limit"):
        for i in range(0, len(bomb), 1000):
            r.feed(bomb[i:i + 1000])
    assert r._out.total <= 1024 * 1024 + 1 + 64 * 1024 * 1024  # never far beyond the limit


def test_truncated_and_corrupt_streams():
    good = gzip.compress(os.urandom(10000))
    with pytest.raises(HugeDataException, match="truncated"):
        receive([good[:len(good) // 2]])
    bad_crc = good[:-8] + struct.pack("<I", (zlib.crc32(b"x") ^ 1) & 0xFFFFFFFF) + good[-4:]
    with pytest.raises((HugeDataException, BadGzip)):
        receive([bad_crc])
    corrupt = good[:20] + bytes(b ^ 0xFF for b in good[20:60]) + good[60:]
    with pytest.raises((HugeDataException, BadGzip)):
        receive([corrupt])
    with pytest.raises(HugeDataException):
        receive([])


async def test_repeated_transfers_in_one_process():
    for i in range(3):
        payload = os.urandom(100_000 + i)
        hd = HugeData(b"E", b"X", data=payload)
        assert receive(await chunks_of(hd)) == payload
        hd.destroy()
        hd.destroy()  # idempotent


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


async def test_compress_without_loop_argument():
    hd = HugeData(b"E", b"X", data=b"z" * 10)
    assert gzip.decompress(b"".join([c async for c in hd.compress()])) == b"z" * 10


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

def _twins():
    out = [importlib.import_module("gaterpc._speedups._chunks_py")]
    try:
        out.append(importlib.import_module("gaterpc._speedups._chunks_c"))
    except ImportError:
        pass
    return out


@pytest.fixture(params=["py", "c"])
def chunks_mod(request):
    try:
        return importlib.import_module(f"gaterpc._speedups._chunks_{request.param}")
    except ImportError:
        pytest.skip("the compiled twin is not built")


def test_compiled_chunks_active_when_built():
    import gaterpc._speedups.chunks as sel

    built = any(p.name.startswith("_chunks_c.") and p.suffix in (".so", ".pyd")
                for p in Path(sel.__file__).parent.iterdir())
    if built and not NO_EXTENSIONS:
        assert sel.USE_C
    if NO_EXTENSIONS:
        assert not sel.USE_C


def test_cutter_and_limiter(chunks_mod):
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


@settings(max_examples=60, deadline=None)
@given(bs=st.integers(1, 64), pieces=st.lists(st.binary(max_size=200), max_size=20))
def test_twins_agree(bs, pieces):
    results = []
    for mod in _twins():
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
