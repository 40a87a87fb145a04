"""Fuzz every role's endpoint over real sockets (``python -m gaterpc.bench.fuzz``).

Each endpoint is one role instance running in this process's event loop and
one raw ZeroMQ socket of ours that plays the role's peer:

=============  ===========================================  ==========================
endpoint       role under test                              our socket
=============  ===========================================  ==========================
``frontend``   ``AMajordomo`` frontend                      DEALER (a client)
``backend``    ``AMajordomo`` backend                       DEALER (a worker)
``worker``     ``Worker`` (connects to us)                  ROUTER (a broker)
``client``     ``Client`` (connects to us)                  ROUTER (a broker answering
                                                            its calls with garbage)
``gate``       ``Gate`` gate socket (``multicast=False``)   DEALER (a joined peer gate)
                                                            + ROUTER the gate talks to
``zap``        ``AsyncZAPService``                          DEALER (a broker)
=============  ===========================================  ==========================

A case is a batch of multipart messages drawn by `hypothesis`_: random
frames (0–12 frames of random bytes; a message of 0 frames cannot be sent
and is skipped) or *structured* mutations of valid messages of that
endpoint (wrong command byte, wrong frame counts, msgpack of wrong types,
huge declared sizes, truncated or invalid msgpack, stream/HugeData tags out
of order, bad UTF-8 in READY bodies, ZAP requests of the wrong shape).

After every batch the endpoint checks its properties (:meth:`Endpoint.check`):

* **alive** -- the role's task is not done and its sockets are open;
* **no hang** -- a well-formed exchange through the same connection (which
  ZeroMQ keeps in order, so the junk was handled first) completes within a
  few seconds, and every few batches a real call through the role does too;
* **no crash** -- no ERROR record on the ``gaterpc`` loggers and nothing
  reported to the event loop's exception handler, except the records an
  endpoint expects (the ZAP service reports malformed requests at ERROR,
  as pyzmq's authenticator does).

A violated property raises :class:`FuzzFailure`; hypothesis then shrinks the
batch and reports it.  ``tests/test_fuzz_endpoints.py`` runs a few hundred
cases per endpoint; this entry point runs as many as asked::

    python -m gaterpc.bench.fuzz --cases 100000 --timeout 600

and prints cases/s per endpoint and every finding.  Everything listens on
``ipc://`` in a temporary directory or on 127.0.0.1; every socket is closed
with linger 0.

The strategies are in ``fuzz_strategies.py``, the endpoints in
``fuzz_endpoints.py``; this module runs the cases (``run_cases``, ``main``)
and re-exports the names of both.

.. _hypothesis: https://hypothesis.readthedocs.io/
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from types import TracebackType
from typing import Any, Callable, Coroutine, Literal, Optional, TypeVar

try:
    from hypothesis import HealthCheck, Phase, given, seed, settings
except ImportError:  # pragma: no cover - hypothesis comes with the test extra
    pass

from gaterpc.bench.fuzz_endpoints import (
    ENDPOINTS, LOGGERS, PROBE_EVERY, SYNC_TIMEOUT, BackendEndpoint, ClientEndpoint, Endpoint, FrontendEndpoint,
    FuzzFailure, GateEndpoint, WorkerEndpoint, ZapEndpoint, free_port, recv_until,
)
from gaterpc.bench.fuzz_strategies import (
    CLIENT_SERVICE, GATE01, HUGE_END, HUGE_EXC, HUGE_TAG, MDPC, MDPW, PROBE_SERVICE, STREAM_END, STREAM_EXC,
    STREAM_TAG, _require_hypothesis, strategies,
)

__all__ = (
    "ENDPOINTS", "Endpoint", "FuzzFailure", "Session", "run_cases", "main", "strategies", "recv_until",
    "free_port", "SYNC_TIMEOUT", "PROBE_EVERY", "LOGGERS", "MDPC", "MDPW", "GATE01", "STREAM_TAG",
    "STREAM_END", "STREAM_EXC", "HUGE_TAG", "HUGE_END", "HUGE_EXC", "PROBE_SERVICE", "CLIENT_SERVICE",
    "FrontendEndpoint", "BackendEndpoint", "WorkerEndpoint", "ClientEndpoint", "GateEndpoint", "ZapEndpoint",
)


_T = TypeVar("_T")


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------


class Session:
    """An endpoint in its own event loop, driven synchronously (one call per case)."""

    def __init__(self, name: str, tmpdir: str) -> None:
        self.name = name
        self.tmpdir = tmpdir
        self.loop = asyncio.new_event_loop()
        self.endpoint: Optional[Endpoint] = None

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self.loop.run_until_complete(coro)

    def __enter__(self) -> Session:
        asyncio.set_event_loop(self.loop)
        try:
            self.endpoint = self.run(ENDPOINTS[self.name](self.tmpdir).start())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def case(self, batch: list[Any]) -> None:
        assert self.endpoint is not None, "use the session as a context manager"
        self.run(asyncio.wait_for(self.endpoint.batch(batch), SYNC_TIMEOUT * 4))

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> Literal[False]:
        try:
            if self.endpoint is not None:
                self.run(self.endpoint.close())
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                self.run(asyncio.wait(pending, timeout=2))
        finally:
            asyncio.set_event_loop(None)
            self.loop.close()
        return False


def run_cases(session: Session, max_examples: int, derandomize: bool = True, seed_value: Optional[int] = None,
              report: Optional[Callable[[list[Any], FuzzFailure], object]] = None) -> None:
    """Run ``max_examples`` hypothesis cases against ``session``'s endpoint (raises on a finding)."""
    _require_hypothesis()
    strat = strategies()[session.name + "_batch"]
    cfg = settings(max_examples=max_examples, deadline=None, derandomize=derandomize, database=None,
                   suppress_health_check=list(HealthCheck), print_blob=False,
                   phases=[Phase.explicit, Phase.generate, Phase.shrink])

    @cfg
    @given(strat)
    def prop(batch: list[Any]) -> None:
        try:
            session.case(batch)
        except FuzzFailure as exc:
            if report is not None:
                report(batch, exc)
            raise

    if seed_value is not None and not derandomize:
        prop = seed(seed_value)(prop)
    prop()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gaterpc.bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="total cases over all endpoints")
    parser.add_argument("--timeout", type=float, default=600.0, help="stop after this many seconds")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS), help="comma-separated subset")
    parser.add_argument("--chunk", type=int, default=500, help="cases per hypothesis run (seeded in turn)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _require_hypothesis()
    names = [n for n in args.endpoints.split(",") if n]
    for n in names:
        if n not in ENDPOINTS:
            parser.error(f"unknown endpoint {n!r} (known: {', '.join(ENDPOINTS)})")
    deadline = time.monotonic() + args.timeout
    per_endpoint = max(1, args.cases // len(names))
    budget = args.timeout / len(names)
    findings: list[tuple[str, Exception, Optional[list[Any]]]] = []
    logging.getLogger("gaterpc").setLevel(logging.ERROR)
    logging.getLogger("gaterpc.zap").setLevel(logging.ERROR)
    tmpdir = tempfile.mkdtemp(prefix="gaterpc-fuzz-")
    print(f"{'endpoint':<10} {'cases':>8} {'messages':>9} {'seconds':>8} {'cases/s':>8} findings")
    try:
        for i, name in enumerate(names):
            ep_deadline = min(deadline, time.monotonic() + budget)
            cases = messages = 0
            found = 0
            started = time.monotonic()
            chunk_seed = args.seed * 1000 + i * 100_000
            while cases < per_endpoint and time.monotonic() < ep_deadline:
                n = min(args.chunk, per_endpoint - cases)
                chunk_seed += 1
                failed: list[tuple[list[Any], FuzzFailure]] = []
                with Session(name, tmpdir) as sess:
                    try:
                        run_cases(sess, n, derandomize=False, seed_value=chunk_seed,
                                  report=lambda b, e: failed.append((b, e)))
                    except Exception as exc:  # noqa: BLE001 - a finding: record it, go on
                        batch, err = failed[-1] if failed else (None, exc)
                        findings.append((name, err, batch))
                        found += 1
                    assert sess.endpoint is not None
                    cases += sess.endpoint.batches
                    messages += sess.endpoint.messages
            elapsed = time.monotonic() - started
            print(f"{name:<10} {cases:>8} {messages:>9} {elapsed:>8.1f} {cases / max(elapsed, 1e-9):>8.0f} {found}",
                  flush=True)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    for name, err, batch in findings:
        print(f"\nFINDING [{name}] {err}\n  smallest batch: {batch!r}")
    if not findings:
        print("\nno findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())