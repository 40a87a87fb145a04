"""HugeData replies across implementations.

In every 0.2.x a second HugeData transfer in one process hangs, so each test
that involves an original worker or an original client starts its own fresh
worker (under a service name of its own) and a one-shot client, and makes
exactly one transfer per original process.  Our side must handle repeated
transfers, which the tests check where both ends are ours.
"""

from __future__ import annotations

import itertools
import json

import pytest

from .conftest import topology_id
from .roles import common

TOPOLOGIES = [
    ("orig", "orig", "orig"),   # baseline
    ("ours", "orig", "orig"),   # (a) our client -> their broker + their worker
    ("orig", "ours", "ours"),   # (b) their client -> our broker + our worker
    ("ours", "orig", "ours"),   # (c) our client -> their broker -> our worker
    ("orig", "ours", "orig"),   # (c) their client -> our broker -> their worker
    ("ours", "ours", "orig"),   #     our client -> our broker -> their worker
]

_names = itertools.count()


def expected(n):
    return common.payload_summary(common.payload(n))


def hugedata_calls(runner, fleet, t, sizes, reply_timeout=20.0):
    client_impl, broker_impl, worker_impl = t
    broker = fleet.broker(broker_impl)
    service = f"Huge{next(_names)}"
    runner.start("worker", worker_impl, "--back", broker.back, "--service", service)
    calls = [{"id": f"h{i}", "service": service, "method": "huge", "args": [n],
              "mode": "huge", "limit": 40} for i, n in enumerate(sizes)]
    client = runner.start("client", client_impl, "--front", broker.front,
                          "--wait-service", service, "--reply-timeout", str(reply_timeout),
                          "--calls", json.dumps(calls))
    return client.results(timeout=60)


@pytest.mark.parametrize("t", TOPOLOGIES, ids=topology_id)
def test_one_hugedata_transfer(runner, fleet, t):
    n = 300_000   # incompressible: about 300 chunks of 1000 bytes
    r, = hugedata_calls(runner, fleet, t, [n])
    assert r["ok"], r
    assert r["type"] == "dict"
    assert r["value"] == expected(n)


@pytest.mark.parametrize("t", [("ours", "orig", "ours")], ids=topology_id)
def test_repeated_hugedata_transfers_with_our_ends(runner, fleet, t):
    """Both ends ours, their broker in between: repeated transfers must work (original defect H1)."""
    sizes = [1, 5_000, 300_000, 10]
    results = hugedata_calls(runner, fleet, t, sizes)
    for r, n in zip(results, sizes):
        assert r["ok"], r
        assert r["value"] == expected(n)
