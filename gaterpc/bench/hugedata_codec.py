"""HugeData codec throughput, in-process: compress + decompress MB/s per module.

Run: ``gaterpc bench codec`` or ``python -m gaterpc.bench.hugedata_codec`` (payloads of 1, 16 and 128 MiB;
``--sizes 1,16`` to choose, ``--budget 120`` seconds in total; ``--twins``
adds a gzip row on each chunk-assembly twin).

Each case takes the paths the RPC roles take:

* compress: ``iter_hugedata_chunks(HugeData(..., data=payload))``, i.e. the
  worker's sender: 1 MiB input slices (compressed in a thread), output cut
  into ``blksize`` = 1000-byte wire chunks;
* decompress: ``HugeDataReceiver.feed`` of those chunks one by one and
  ``finish()``, i.e. the client's receiver (format detection, 256 MiB limit
  unless the payload is larger, CRC checks).

MB/s are payload (decompressed) megabytes per second of wall time.  The
payload alternates 4 KiB of random bytes and 4 KiB of repetitive text, so it
compresses to roughly half.  A module whose estimated time for the next size
would overrun the remaining budget is skipped for that size (shown as
``skip``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import random
import sys
import time
from typing import Optional, Sequence

import gaterpc.hugedata as hugedata
import gaterpc.hugereceive as hugereceive
from gaterpc.hugedata import HugeData, HugeDataReceiver, iter_hugedata_chunks

MIB = 1024 * 1024
MODULES = ("gzip", "lz4", "bz2", "lzma")
END, EXC = b"HugeDataEND", b"HugeDataException"
TWIN_CLASSES = ("ChunkCutter", "OutputLimiter")
#: The module whose name each class is looked up by (the sender cuts chunks, the receiver limits output).
_TWIN_HOME = {"ChunkCutter": hugedata, "OutputLimiter": hugereceive}


def make_payload(size: int, seed: int = 1) -> bytes:
    """``size`` bytes: 4 KiB random, 4 KiB text, alternating."""
    rnd = random.Random(seed)
    noise = rnd.randbytes(size // 2 + 4096)
    line = 0
    parts = []
    total = 0
    pos = 0
    while total < size:
        parts.append(noise[pos:pos + 4096])
        pos += 4096
        text = b"".join(b"%08d hugedata item;" % (line + i) for i in range(205))[:4096]
        line += 205
        parts.append(text)
        total += 8192
    return b"".join(parts)[:size]


async def compress(payload: bytes, module: str) -> list[bytes]:
    """The wire chunks of ``payload`` as the worker's sender cuts them."""
    hd = HugeData(END, EXC, data=payload, compress_module=module)
    chunks = [c async for c in iter_hugedata_chunks(hd)]
    hd.destroy()
    return chunks


def decompress(chunks: list[bytes], size: int) -> bytearray:
    """The payload reassembled by the client's receiver from ``chunks``."""
    r = HugeDataReceiver(max_decompressed_size=max(size, HugeData.DEFAULT_MAX_DECOMPRESSED_SIZE))
    feed = r.feed
    for c in chunks:
        feed(c)
    return r.finish()


def run_case(payload: bytes, module: str) -> tuple[float, float, int]:
    """(compress s, decompress s, compressed bytes)."""
    gc.collect()
    t0 = time.perf_counter()
    chunks = asyncio.run(compress(payload, module))
    t1 = time.perf_counter()
    out = decompress(chunks, len(payload))
    t2 = time.perf_counter()
    if out != payload:
        raise SystemExit(f"{module}: round trip mismatch")
    return t1 - t0, t2 - t1, sum(map(len, chunks))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Time every module at every size within the budget and print the table."""
    parser = argparse.ArgumentParser(prog="gaterpc bench codec", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1,16,128", help="payload sizes in MiB, comma-separated")
    parser.add_argument("--modules", default=",".join(MODULES))
    parser.add_argument("--budget", type=float, default=150.0, help="total time budget, seconds")
    parser.add_argument("--twins", action="store_true", help="also time gzip on each chunk-assembly twin")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    modules = [m for m in args.modules.split(",") if m]
    deadline = time.monotonic() + args.budget

    from gaterpc._speedups import chunks as selector

    print(f"chunk assembly: {'compiled' if selector.USE_C else 'pure'} twin; blksize 1000; "
          f"offload to a thread at >= {hugereceive.OFFLOAD_SIZE // 1024} KiB")
    print(f"{'module':<10}{'MiB':>6}{'ratio':>8}{'compress MB/s':>16}{'decompress MB/s':>18}")
    rate: dict[str, float] = {}  # module -> seconds per MiB (round trip), to predict the next size
    variants: list[tuple[str, Optional[str]]] = [(m, None) for m in modules]
    if args.twins:
        variants += [("gzip", "_chunks_py"), ("gzip", "_chunks_c")]
    for size in sizes:
        payload = make_payload(size * MIB)
        for module, twin in variants:
            label = module if twin is None else f"{module}/{twin[8:]}"
            left = deadline - time.monotonic()
            if rate.get(label, 0) * size > left:
                print(f"{label:<10}{size:>6}{'skip':>8}")
                continue
            # The chunk-assembly classes hugedata uses, swapped for a twin's for this case.
            saved = [getattr(_TWIN_HOME[name], name) for name in TWIN_CLASSES]
            if twin is not None:
                try:
                    mod = importlib.import_module(f"gaterpc._speedups.{twin}")
                except ImportError:
                    print(f"{label:<10}{size:>6}{'n/a':>8}")
                    continue
                for name in TWIN_CLASSES:
                    setattr(_TWIN_HOME[name], name, getattr(mod, name))
            try:
                tc, td, clen = run_case(payload, module)
            finally:
                for name, cls in zip(TWIN_CLASSES, saved):
                    setattr(_TWIN_HOME[name], name, cls)
            rate[label] = (tc + td) / size
            mb = size * MIB / 1e6
            print(f"{label:<10}{size:>6}{clen / (size * MIB):>8.2f}{mb / tc:>16.1f}{mb / td:>18.1f}")
        del payload
    return 0


if __name__ == "__main__":
    sys.exit(main())
