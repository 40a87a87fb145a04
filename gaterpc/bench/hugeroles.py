"""Roles of the HugeData benchmark (one per process), public API only.

Runs unchanged on our gaterpc and on the original (``python hugeroles.py
ROLE CONFIG_JSON``).  The worker's ``huge(size, module, seed)`` returns a
HugeData of ``msg_pack(payload)``; the payload is half random bytes, half
compressible text, so that neither codec has it easy.  The client checks the
size and SHA-256 of what it gets against the worker's ``digest(...)`` and
prints one JSON line with the timing; every role prints its peak RSS on exit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from gaterpc.core import AMajordomo, Client, Context, Service, Worker
from gaterpc.global_settings import Settings
from gaterpc.utils import HugeData, interface, msg_pack

QUIET = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "ERROR", "stream": "ext://sys.stderr"}},
    "loggers": {name: {"level": "ERROR", "handlers": ["stderr"], "propagate": False}
                for name in ("gaterpc", "asyncio", "multiprocessing", "commands")},
}


PIECE = 1024 * 1024


def make_pieces(size: int, seed: int) -> List[bytes]:
    """``size`` bytes in 1 MiB pieces: the first half random, the second compressible text."""
    half = size // 2
    rnd = random.Random(seed)
    text = b"gaterpc moves large replies in compressed chunks; "
    line = text * (PIECE // len(text) + 1)
    pieces: List[bytes] = []
    pos = 0
    while pos < size:
        n = min(PIECE, size - pos)
        if pos + n <= half:
            pieces.append(rnd.randbytes(n))
        else:
            r = max(0, half - pos)
            pieces.append((rnd.randbytes(r) if r else b"") + line[:n - r])
        pos += n
    return pieces


def array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


class Bench(Worker):
    @interface
    async def huge(self, size: int, module: str, seed: int, blksize: int = 1000) -> HugeData:
        # A list of 1 MiB pieces (msgpack decoders cap one bin at 32 MiB),
        # handed over piece by piece in pipe mode: the list's encoding is
        # never built whole, so the worker holds about one copy of the payload.
        pieces = make_pieces(size, seed)
        hd = HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG,
                      compress_module=module, blksize=blksize)
        hd.add_data(array_header(len(pieces)))
        while pieces:
            hd.add_data(msg_pack(pieces.pop(0)))
        hd.flush()
        return hd

    @interface
    async def digest(self, size: int, seed: int) -> str:
        digest = hashlib.sha256()
        for piece in make_pieces(size, seed):
            digest.update(piece)
        return digest.hexdigest()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(role: str, cfg: Dict[str, Any]) -> None:
    Settings.configure("BASE_PATH", Path(cfg["base_path"]))
    Settings.configure("LOGGING", QUIET)
    Settings.setup()
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def on_sigterm() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    ctx = Context()
    if role == "broker":
        md = AMajordomo(context=ctx)
        md.bind_backend(cfg["back"])
        md.bind_frontend(cfg["front"])
        md.run()
        print(json.dumps({"ready": True}), flush=True)
        await stop
        md.stop()
    elif role == "worker":
        w = Service(name="Bench").create_worker(Bench, cfg["back"], context=ctx)
        w.run()
        print(json.dumps({"ready": True}), flush=True)
        await stop
        w.stop()
    else:
        cli = Client(cfg["front"], context=ctx, reply_timeout=cfg["timeout"])
        deadline = time.monotonic() + 30
        while True:
            try:
                if cli._recv_task is None or cli._recv_task.done():
                    await cli.connect()
                if "Bench" in await cli.knock("Gate", "get_services"):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Bench service did not register")
            await asyncio.sleep(0.1)
            cli.close()
            cli = Client(cfg["front"], context=ctx, reply_timeout=cfg["timeout"])
        size, seed = cfg["size"], cfg["seed"]
        expected = await cli.knock("Bench", "digest", size, seed)
        t0 = time.perf_counter()
        pieces = await cli.knock("Bench", "huge", size, cfg["module"], seed, cfg["blksize"])
        elapsed = time.perf_counter() - t0
        digest = hashlib.sha256()
        for piece in pieces:
            digest.update(piece)
        ok = sum(map(len, pieces)) == size and digest.hexdigest() == expected
        del pieces
        print(json.dumps({"elapsed": elapsed, "ok": ok, "rss_mib": peak_rss_mib()}), flush=True)
        cli.close()
    await asyncio.sleep(0.1)
    print(json.dumps({"rss_mib": peak_rss_mib()}), flush=True)


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
