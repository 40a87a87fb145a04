"""HugeData flow control through gates: a client's credits reach the worker behind a peer gate.

Our client sends its credits to the gate it is connected to; a gate that
forwarded the request passes them to that peer (``GATE_CREDIT``), and the
peer hands them to its worker as CREDIT.  Gates in one process as in
``test_gate.py`` (127.0.0.1, multicast off).  The original gate drops the
command unseen: ``tests/interop/test_gate_interop.py`` carries a HugeData
call from our client through our gate to an original one.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import zmq

from gaterpc import counters
from gaterpc.global_settings import Settings
from gaterpc.protocol import GATE_CREDIT, OWN_RID_MARK

from test_gate import join, nodes, until  # noqa: F401 (fixture)
# the worker, payload, window and slack of the flow-control tests without gates
from test_hugedata_credit import N, SLACK, WINDOW, Big, FlowProbe, payload, window  # noqa: F401 (fixture)


async def test_credits_cross_the_gates_and_bound_the_backlog(nodes, window, monkeypatch):
    a, b = nodes("A"), nodes("B")
    worker = await b.add_worker(service="Big", cls=Big)
    await join(a, b)
    client = await a.client(reply_timeout=60)

    runner = worker._runner
    credits: list[tuple[bytes, int]] = []
    credit = runner.credit

    def recording(client_id, request_id, value):
        credits.append((bytes(client_id), int.from_bytes(value, "big")))
        return credit(client_id, request_id, value)

    monkeypatch.setattr(runner, "credit", recording)
    probe = FlowProbe(runner, monkeypatch)

    assert await client.Big.blob(N) == payload(N)
    # the worker behind gate B got the credits, as coming from gate A (its caller there)
    assert len(credits) >= 4, credits
    assert {cid for cid, _ in credits} == {a.gate.identity}
    values = [v for _, v in credits]
    assert values[0] == 0 and values == sorted(values) and values[-1] > N // 2, values
    with_credits = probe.check_window()
    await until(lambda: not a.peer(b)._inflight)

    # the same transfer with the client sending no credits: more is on its way
    credits.clear()
    probe.reset()
    monkeypatch.setattr(Settings, "HUGE_DATA_WINDOW", 0)
    assert await client.Big.blob(N) == payload(N)
    assert credits == []
    assert max(probe.backlog) > WINDOW + SLACK, (with_credits, max(probe.backlog))


async def _counted(snapshot, name, before, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and snapshot().get(name, 0) == before:
        await asyncio.sleep(0.01)
    return snapshot().get(name, 0) - before


@pytest.mark.parametrize("credit, counter, name", [
    (b"short", counters.drops_snapshot, "gate_malformed"),                 # a credit is 8 bytes
    (bytes(8), counters.events_snapshot, "hugedata_credit_unmatched"),     # no such request in flight
])
async def test_bad_credits_from_a_peer_are_counted_and_change_nothing(nodes, credit, counter, name):
    a, b = nodes("A"), nodes("B")
    await b.add_worker()
    await join(a, b)
    rid = random.randbytes(8) + OWN_RID_MARK + random.randbytes(6)
    before = counter().get(name, 0)
    # sent on A's own channel to B, as A's credits travel
    a.peer(b)._lsock.send([*a.gate._credit_head, b"Echo", rid, credit])
    assert await _counted(counter, name, before) == 1
    client = await a.client()
    assert (await client.Echo.echo("still"))["args"] == ["still"]  # B serves on, A and B stay joined
    assert a.peer(b) is not None and b.peer(a) is not None


async def test_a_credit_from_a_gate_that_is_not_a_peer_is_dropped(nodes):
    b = nodes("B")
    await b.add_worker()
    before = counters.drops_snapshot().get("gate_credit_from_unknown_peer", 0)
    sock = b.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"stranger-gate-id")
    try:
        sock.connect(b.addr)
        await sock.send_multipart([b"", Settings.GATE_MEMBER, GATE_CREDIT, b"Echo", bytes(16), bytes(8)])
        assert await _counted(counters.drops_snapshot, "gate_credit_from_unknown_peer", before) == 1
    finally:
        sock.close(linger=0)
    client = await b.client()
    assert (await client.Echo.echo(1))["args"] == [1]
