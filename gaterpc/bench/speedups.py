"""Time each compiled hot path of ``gaterpc._speedups`` against its pure twin.

Run: ``gaterpc bench speedups`` or ``python -m gaterpc.bench.speedups`` (about 30 s on 2 cores; ``--quick`` for a
few seconds).  Every case runs the same workload on both twins, best of a
few repeats, and the table shows the per-operation time and the ratio
pure / compiled.

Cases:

* ``zmqio``: a 7-frame request sent by a DEALER and received by a ROUTER
  through inproc, then the ROUTER echoes it back (8 frames out, 7 in);
  pure = pyzmq ``send_multipart`` / ``recv_multipart(NOBLOCK)`` on the same
  kind of sockets, compiled = ``ZSocketIO.send`` / ``recv_batch``.  A
  ``_zmqio_py`` row shows the pure twin (pyzmq plus the twin's checks).
* ``lru``: the broker's ZAP-verdict cache, ``KVLRUCache(128, 256, ttl=30)``:
  ``get`` of ZAP-like keys (90 % to 100 hot keys), set on a miss.
* ``reqtable``: 1M request ids flowing through a table with 1,000 in flight:
  add with increasing deadlines, pop 90 % (replies), expire the rest in
  sweeps every 1,000 ids.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import random
import sys
import time
from typing import Any, Callable, Optional, Sequence

import zmq

REQUEST = [b"", b"MDPC01", b"\x01", b"echo", b"\x93\xa5hello\x01\xc0", b"\x00" * 16, b"\x81\xa1k\xa1v"]


def best(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` runs of ``fn()``."""
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_zmqio(n: int, repeats: int) -> dict[str, float]:
    """Seconds per round trip for pyzmq, the pure twin and the compiled twin."""
    ctx: zmq.Context[Any] = zmq.Context()
    results: dict[str, float] = {}
    try:
        router = ctx.socket(zmq.ROUTER)
        dealer = ctx.socket(zmq.DEALER)
        for s in (router, dealer):
            s.linger = 0
            s.sndhwm = s.rcvhwm = 0
        router.bind("inproc://bench-zmqio")
        dealer.connect("inproc://bench-zmqio")
        dealer.send_multipart([b"hi"])
        ident = router.recv_multipart()[0]

        def pyzmq_loop() -> None:
            for _ in range(n):
                dealer.send_multipart(REQUEST)
                msg = router.recv_multipart(zmq.NOBLOCK)
                router.send_multipart(msg)
                dealer.recv_multipart(zmq.NOBLOCK)

        results["pyzmq"] = best(pyzmq_loop, repeats) / n

        for name in ("_zmqio_py", "_zmqio_c"):
            try:
                mod = importlib.import_module(f"gaterpc._speedups.{name}")
            except ImportError:
                continue
            r, d = mod.ZSocketIO(router), mod.ZSocketIO(dealer)
            r_recv, r_send, d_recv, d_send = r.recv_batch, r.send, d.recv_batch, d.send

            def io_loop() -> None:
                for _ in range(n):
                    d_send(REQUEST)
                    (msg,) = r_recv(1)
                    r_send(msg)
                    d_recv(1)

            results[name] = best(io_loop, repeats) / n
        assert ident
        router.close(0)
        dealer.close(0)
    finally:
        ctx.term()
    return results


def bench_lru(n: int, repeats: int) -> dict[str, float]:
    """Seconds per lookup of the broker's ZAP-verdict use: ``get``, set on a miss, ttl on."""
    rnd = random.Random(1)
    keys = [b"zap:%d:PLAIN:user%d" % (i, i) for i in range(256)]
    # 90 % of lookups go to 100 hot keys, the rest anywhere: mostly hits, some evictions.
    ops = [rnd.choice(keys[:100]) if rnd.random() < 0.9 else rnd.choice(keys) for _ in range(n)]
    results: dict[str, float] = {}
    for name in ("_lru_py", "_lru_c"):
        try:
            mod = importlib.import_module(f"gaterpc._speedups.{name}")
        except ImportError:
            continue

        def run() -> None:
            c = mod.KVLRUCache(128, 256, ttl=30.0)
            get = c.get
            for key in ops:
                if get(key) is None:
                    c[key] = True

        results[name] = best(run, repeats) / n
    return results


def bench_reqtable(n: int, repeats: int, window: int = 1000) -> dict[str, float]:
    """Seconds per request id: 1M ids flow through a table with ``window`` requests in flight.

    Each id is added with deadline now + 50 ms; the reply to the id sent
    ``window`` ids earlier pops it (9 ids in 10 get a reply); every 1,000 ids
    an ``expire`` sweep removes those that timed out.
    """
    ids = [os.urandom(8) for _ in range(n)]
    step = 1e-5
    plan = [(rid, i * step + 0.05, ids[i - window] if i >= window and (i - window) % 10 else None)
            for i, rid in enumerate(ids)]
    results: dict[str, float] = {}
    for name in ("_reqtable_py", "_reqtable_c"):
        try:
            mod = importlib.import_module(f"gaterpc._speedups.{name}")
        except ImportError:
            continue

        def run() -> None:
            t = mod.RequestTable()
            add, pop, expire = t.add, t.pop, t.expire
            i = 0
            for rid, deadline, reply in plan:
                add(rid, rid, deadline)
                if reply is not None:
                    pop(reply)
                i += 1
                if i == 1000:
                    i = 0
                    expire(deadline - 0.05)
            expire(float("inf"))
            assert len(t) == 0

        results[name] = best(run, repeats) / n
    return results


def bench_reqtable_ops(n: int, repeats: int) -> dict[str, float]:
    """Seconds per add+pop pair on a table of 1,000 pending ids (the module alone, little harness)."""
    ids = [os.urandom(8) for _ in range(1000)]
    rounds = max(1, n // 1000)
    results: dict[str, float] = {}
    for name in ("_reqtable_py", "_reqtable_c"):
        try:
            mod = importlib.import_module(f"gaterpc._speedups.{name}")
        except ImportError:
            continue

        def run() -> None:
            t = mod.RequestTable()
            add, pop = t.add, t.pop
            for _ in range(rounds):
                for rid in ids:
                    add(rid, rid, 1.0)
                for rid in ids:
                    pop(rid)

        results[name] = best(run, repeats) / (rounds * 1000)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the cases and print the table."""
    ap = argparse.ArgumentParser(prog="gaterpc bench speedups", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller workloads (a few seconds)")
    args = ap.parse_args(argv)
    scale = 0.1 if args.quick else 1.0
    repeats = 3
    rows: list[tuple[str, float, float]] = []
    t0 = time.monotonic()
    z = bench_zmqio(int(50_000 * scale), repeats)
    if "_zmqio_c" in z:
        rows.append(("zmqio 7-frame req+rep (pyzmq)", z["pyzmq"], z["_zmqio_c"]))
        rows.append(("zmqio 7-frame req+rep (_zmqio_py)", z["_zmqio_py"], z["_zmqio_c"]))
    else:
        rows.append(("zmqio (compiled twin missing)", z["pyzmq"], float("nan")))
    for label, fn, count in (
        ("lru get/set mix", bench_lru, 1_000_000),
        ("reqtable add/pop/expire, 1M ids", bench_reqtable, 1_000_000),
        ("reqtable add+pop only, 1000 pending", bench_reqtable_ops, 1_000_000),
    ):
        res = fn(int(count * scale), repeats)
        vals = list(res.values())
        rows.append((label, vals[0], vals[1] if len(vals) > 1 else float("nan")))
    print(f"{'case':40} {'pure µs/op':>11} {'compiled µs/op':>15} {'ratio':>7}")
    for label, py, c in rows:
        print(f"{label:40} {py * 1e6:11.3f} {c * 1e6:15.3f} {py / c:6.1f}×")
    print(f"(total {time.monotonic() - t0:.1f} s, best of {repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
