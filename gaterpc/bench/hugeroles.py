"""Roles of the HugeData benchmark (one per process), public API only.

Runs unchanged on our gaterpc and on the original (``python hugeroles.py
ROLE CONFIG_JSON``).  The worker's ``huge(size, module, seed)`` returns a
HugeData of ``msg_pack(payload)``; the payload is half random bytes, half
compressible text, so that neither codec has it easy.  The client checks the
size and SHA-256 of what it gets against the worker's ``digest(...)`` (which
also encodes the payload ahead of the timed call), and prints one JSON line
with the timing; every role prints its peak RSS, RSS, CPU time and minor
page faults on exit,
and on SIGUSR1 (the broker and the worker: before and after the transfer)
or before the timed call (the client) the same figures, the transfer's
baseline and end.  With ``"transfers": K`` in the configuration the client
makes K such calls in turn (payload seeds ``seed`` to ``seed + K - 1``),
each preceded by its mark and a "go", and each after the first by a "next"
(the bench has marked the end of the one before).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import random
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

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


def iter_pieces(size: int, seed: int) -> Iterator[bytes]:
    """``size`` bytes in 1 MiB pieces: the first half random, the second compressible text."""
    half = size // 2
    rnd = random.Random(seed)
    text = b"gaterpc moves large replies in compressed chunks; "
    line = text * (PIECE // len(text) + 1)
    pos = 0
    while pos < size:
        n = min(PIECE, size - pos)
        if pos + n <= half:
            yield rnd.randbytes(n)
        else:
            r = max(0, half - pos)
            yield (rnd.randbytes(r) if r else b"") + line[:n - r]
        pos += n


def make_pieces(size: int, seed: int) -> List[bytes]:
    """The pieces of :func:`iter_pieces` as a list."""
    return list(iter_pieces(size, seed))


def array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


#: (size, seed) -> the msgpack encoding of the payload, in pieces, made by ``digest``.
PREPARED: Dict[Tuple[int, int], List[bytes]] = {}


def encoded_pieces(size: int, seed: int) -> Tuple[List[bytes], str]:
    """The payload's msgpack encoding (an array of 1 MiB ``bin``), in pieces, and the payload's SHA-256."""
    digest = hashlib.sha256()
    pieces = [b""]
    n = 0
    for piece in iter_pieces(size, seed):
        digest.update(piece)
        pieces.append(msg_pack(piece))
        n += 1
    pieces[0] = array_header(n)
    return pieces, digest.hexdigest()


class Bench(Worker):
    @interface
    async def huge(self, size: int, module: str, seed: int, blksize: int = 1000) -> HugeData:
        # A list of 1 MiB pieces (msgpack decoders cap one bin at 32 MiB),
        # handed over piece by piece in pipe mode: the list's encoding is
        # never built whole.  The encoding was made by ``digest`` before the
        # timed call, so the call times the transfer, not the making of the
        # payload; each piece is released once HugeData has it.
        pieces = PREPARED.pop((size, seed), None) or encoded_pieces(size, seed)[0]
        # blksize 0: none passed, the implementation's default
        sized: Dict[str, Any] = {"blksize": blksize} if blksize else {}
        hd = HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG,
                      compress_module=module, **sized)
        pieces.reverse()
        while pieces:
            hd.add_data(pieces.pop())
        hd.flush()
        return hd

    @interface
    async def digest(self, size: int, seed: int) -> str:
        # Also prepares the payload ``huge`` sends next (the worker's RSS
        # baseline then holds it: the peak above it belongs to the transfer).
        pieces, digest = encoded_pieces(size, seed)
        PREPARED[(size, seed)] = pieces
        return digest


def peak_rss_mib() -> float:
    """Peak RSS so far; never below the current RSS (the kernel's two counters
    are kept per thread and may disagree by a few pages)."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss_mib())


def rss_mib() -> float:
    """The current RSS (the baseline a transfer starts from)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / (1024 * 1024)


def cpu_s() -> float:
    """CPU seconds (user + system) of this process so far, every thread included."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def page_faults() -> int:
    """Minor page faults of this process so far (every thread): first touches of fresh memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def report(**fields: Any) -> None:
    """One JSON line on stdout: the fields plus peak RSS, current RSS, CPU time and page faults."""
    fields.update(rss_mib=peak_rss_mib(), rss_now_mib=rss_mib(), cpu_s=cpu_s(), minflt=page_faults())
    print(json.dumps(fields), flush=True)


def _stall_at_first_chunk(stall: float) -> List[bool]:
    """Make the client busy elsewhere: the first HugeData chunk received after the
    returned flag is set blocks the event loop for ``stall`` seconds (ours only)."""
    from gaterpc import hugereceive

    armed = [False]
    feed = hugereceive.HugeDataReceiver.feed

    def stalling_feed(self: Any, chunk: Any) -> None:
        if armed[0]:
            armed[0] = False
            time.sleep(stall)
        feed(self, chunk)

    hugereceive.HugeDataReceiver.feed = stalling_feed  # type: ignore[method-assign]
    return armed


async def main(role: str, cfg: Dict[str, Any]) -> None:
    # Codec modules are imported up front, as in a long-running process: the
    # one transfer measured here should not pay a first import.
    for name in ("zlib", "lz4.frame"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    Settings.configure("BASE_PATH", Path(cfg["base_path"]))
    Settings.configure("LOGGING", QUIET)
    if "window" in cfg:  # ours only: HugeData flow control
        Settings.configure("HUGE_DATA_WINDOW", int(cfg["window"]))
    Settings.setup()
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def on_sigterm() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    # SIGUSR1: a mark (the bench's baseline of CPU time and RSS just before the
    # transfer, and the end of its CPU time just after it).
    loop.add_signal_handler(signal.SIGUSR1, lambda: report(mark=True))
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
        stall_armed = _stall_at_first_chunk(float(cfg["stall"])) if cfg.get("stall") else None
        # ``transfers`` calls one after the other in these processes (the
        # original hangs on a second HugeData transfer: the bench asks it for one).
        for i in range(int(cfg.get("transfers", 1))):
            if i:
                # The bench marks the end of the last transfer first ("next"): the
                # worker's work for this one's payload must not count in the last one.
                await loop.run_in_executor(None, sys.stdin.readline)
            expected = await cli.knock("Bench", "digest", size, seed + i)
            # The bench marks the other roles, then says "go" on stdin.
            report(mark=True)
            await loop.run_in_executor(None, sys.stdin.readline)
            cpu0, faults0 = cpu_s(), page_faults()
            t0 = time.perf_counter()
            if stall_armed is not None:
                stall_armed[0] = True  # the first chunk of this transfer blocks the loop
            pieces = await cli.knock("Bench", "huge", size, cfg["module"], seed + i, cfg["blksize"])
            elapsed = time.perf_counter() - t0
            call_cpu = cpu_s() - cpu0  # the call alone, not the check below
            call_faults = page_faults() - faults0
            digest = hashlib.sha256()
            for piece in pieces:
                digest.update(piece)
            ok = sum(map(len, pieces)) == size and digest.hexdigest() == expected
            del pieces
            report(elapsed=elapsed, ok=ok, call_cpu_s=call_cpu, call_minflt=call_faults)
            if not ok:
                break
        cli.close()
    await asyncio.sleep(0.1)
    report()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
