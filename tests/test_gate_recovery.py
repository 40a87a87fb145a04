"""A Gate heals and stays bounded: rejoining restarted peers, bounded tables, no silent drops.

Gates on 127.0.0.1 with multicast off; peers that die are real processes
(``tests/gate_roles/gate_node.py``) killed with SIGKILL and started again.
Heartbeats are short (200 ms) so expiry and rejoin take a few seconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gaterpc.global_settings import Settings

from gate_roles.harness import free_port, name_id, start_gate
from test_gate import HB, Node, join, until  # noqa: F401

WINDOW = HB * Settings.MDP_HEARTBEAT_LIVENESS / 1000


@pytest.fixture
async def nodes():
    made = []

    def make(name, **kwargs):
        node = Node(f"{name}-{uuid.uuid4().hex[:6]}", **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        await node.stop()


@pytest.fixture
def procs(tmp_path):
    started = []

    def start(name, *args):
        p = start_gate(tmp_path, name, *args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def _node_args(port, tmp, a, tag):
    return ("--port", str(port), "--frontend", f"ipc://{tmp}/f{tag}", "--backend", f"ipc://{tmp}/b{tag}",
            "--heartbeat", str(HB), "--service", "Echo", "--connect", f"{a.name}@{a.addr}")


@pytest.mark.parametrize("new_identity", [False, True], ids=["same-id", "new-id"])
async def test_peer_gate_restarted_on_same_port_rejoins(nodes, procs, tmp_path, new_identity):
    a = nodes("A")
    port = free_port()
    tmp = str(tmp_path)
    name = f"K-{uuid.uuid4().hex[:6]}"
    k = procs(name, *_node_args(port, tmp, a, "1"))
    k.wait_ready()
    await a.gate.connect_gate(name_id(name), f"tcp://127.0.0.1:{port}")
    cluster = a.gate.gate_cluster
    await until(lambda: name_id(name) in cluster.get_workers())
    client = await a.client(reply_timeout=10)
    assert await client.Echo.where() == name

    k.kill()
    await until(lambda: name_id(name) not in cluster.workers, timeout=WINDOW + 3)
    # the manual peer is re-invited while it is away
    assert name_id(name) in cluster.unready_gates

    name2 = f"K2-{uuid.uuid4().hex[:6]}" if new_identity else name
    k2 = procs(name2, *_node_args(port, tmp, a, "2"))
    await asyncio.to_thread(k2.wait_ready)  # keep the loop (and the client's heartbeats) running
    t0 = time.monotonic()
    await until(lambda: name_id(name2) in cluster.get_workers() and "Echo" in cluster.services,
                timeout=10 * HB / 1000 + 3)
    rejoin = time.monotonic() - t0
    assert rejoin < 10 * HB / 1000 + 3, rejoin
    assert await client.Echo.where() == name2
    if new_identity:
        # the old identity is forgotten, the new one is remembered as manual
        assert name_id(name) not in cluster.unready_gates
        assert name_id(name) not in a.gate._gate_addrs
        assert name_id(name2) in a.gate._manual_gates


# -- the documented two-gate example ----------------------------------------------------------

def _code_block(text, heading):
    start = text.index(heading)
    i = text.index("```python\n", start) + len("```python\n")
    return text[i:text.index("```", i)]


def test_two_gate_example_of_the_docs_runs_as_written(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import gaterpc

    root = Path(__file__).resolve().parent.parent
    example = _code_block((root / "docs" / "GATE.md").read_text(), "## Two gates on one machine")
    # the README shows the same code, line for line
    readme = _code_block((root / "README.md").read_text(), "## Gate cluster")
    doc_lines = {line.strip() for line in example.splitlines()}
    missing = [line for line in readme.splitlines() if line.strip() and line.strip() not in doc_lines]
    assert not missing, f"README lines not in the docs/GATE.md example: {missing}"
    assert "wait_for_service" in example

    env = dict(os.environ, PYTHONPATH=str(Path(gaterpc.__file__).parent.parent))
    for attempt in range(3):  # a port picked free can be taken before the example binds it
        p1 = free_port()
        p2 = free_port()
        for _ in range(10):  # two different ports
            if p2 != p1:
                break
            p2 = free_port()
        code = (example.replace("9101", str(p1)).replace("9102", str(p2))
                .replace("ipc:///tmp/", f"ipc://{tmp_path}/"))
        script = tmp_path / "example.py"
        script.write_text(code)
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=str(tmp_path))
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if proc.returncode == 0 or b"Address already in use" not in err:
            break
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    assert out.decode().strip().splitlines()[-1] == "through gate A"


# -- wait_for_service ---------------------------------------------------------------------------

async def test_wait_for_service_local_peer_and_timeout(nodes):
    a, b = nodes("A"), nodes("B")
    with pytest.raises(TimeoutError) as info:
        await a.gate.wait_for_service("Echo", timeout=0.3)
    assert "'Echo'" in str(info.value) and "0 peer gate(s) joined" in str(info.value)
    await a.add_worker("Local")
    await a.gate.wait_for_service("Local", timeout=1)
    waiting = asyncio.ensure_future(a.gate.wait_for_service("Echo", timeout=10))
    await b.add_worker()
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await a.gate.connect_gate(b.gate.identity, b.addr)
    await b.gate.connect_gate(a.gate.identity, a.addr)
    await asyncio.wait_for(waiting, 10)
    client = await a.client()
    assert (await client.Echo.echo(1))["gate"] == b.name
    with pytest.raises(TypeError):
        await a.gate.wait_for_service(b"Echo", 1)


# -- bounded state --------------------------------------------------------------------------------

def _datagram(gate, gate_id, port):
    from gaterpc.gate import _PORT
    return b"".join((gate_id, gate._gate_member, Settings.GATE_COMMAND_NOTICE,
                     gate.gate_cluster.identity, _PORT.pack(port)))


async def test_discovery_flood_stays_bounded_and_sockets_are_closed(nodes):
    from gaterpc.counters import drops_snapshot
    from gaterpc.protocol import GATE_INVITE

    a = nodes("A")
    g = a.gate
    g.max_pending_gates = 8
    g.max_gate_peers = 50
    cluster = g.gate_cluster
    port = free_port()  # nobody listens there
    before = drops_snapshot().get("gate_pending_full", 0)
    for _ in range(500):
        g._on_datagram(_datagram(g, uuid.uuid4().bytes, port), ("127.0.0.1", 0))
    assert len(cluster.unready_gates) == 8
    for table in (g._pending, g._gate_addrs, g._last_invite):
        assert len(table) <= 8
    assert drops_snapshot().get("gate_pending_full", 0) - before == 492
    # the same id again and again: one connection, INVITEs rate-limited
    known = next(iter(cluster.unready_gates))
    first = g._last_invite[known]
    for _ in range(100):
        g._on_datagram(_datagram(g, known, port), ("127.0.0.1", 0))
    assert len(cluster.unready_gates) == 8 and g._last_invite[known] == first
    # unknown gates inviting us: remembered up to the cap
    now = g._loop.time()
    for _ in range(300):
        g._gate_command([uuid.uuid4().bytes, b"", g._gate_member, GATE_INVITE], now)
    assert len(g._join_wanted) <= 50
    # pending connections time out: sockets closed, bookkeeping gone
    socks = list(cluster.unready_gates.values())
    g.pending_timeout = 0.0
    await until(lambda: not cluster.unready_gates, timeout=10 * HB / 1000)
    assert all(s.closed for s in socks)
    assert not g._pending and not g._gate_addrs and not g._last_invite and not g._peer_ids
    assert g._special_ids == {g.identity}
    # room again for new peers
    g._on_datagram(_datagram(g, uuid.uuid4().bytes, port), ("127.0.0.1", 0))
    assert len(cluster.unready_gates) == 1


# -- nothing silent -------------------------------------------------------------------------------

async def test_peer_request_that_fails_is_answered_and_counted(nodes):
    from gaterpc.counters import drops_snapshot
    from gaterpc.exceptions import RemoteException

    a, b = nodes("A"), nodes("B")
    await b.add_worker()
    await join(a, b)
    client = await a.client(reply_timeout=30)
    assert (await client.Echo.echo(1))["gate"] == b.name
    real = b.gate._route_request
    calls = []

    def broken(msg, service_b):
        if not calls:
            calls.append(msg)
            raise RuntimeError("boom while routing")
        return real(msg, service_b)

    b.gate._route_request = broken
    before = drops_snapshot().get("gate_error", 0)
    t0 = time.monotonic()
    with pytest.raises(RemoteException) as info:
        await asyncio.wait_for(client.Echo.echo(2), 10)
    assert time.monotonic() - t0 < 5
    assert "boom while routing" in str(info.value)
    assert drops_snapshot().get("gate_error", 0) - before == 1
    # nothing stays in flight, and the next call works
    assert not a.peer(b)._inflight
    assert (await client.Echo.echo(3))["gate"] == b.name


async def test_late_reply_and_unknown_peer_messages_are_counted(nodes):
    from gaterpc.counters import drops_snapshot
    from gaterpc.protocol import GATE_HEARTBEAT, GATE_WHISPER

    a = nodes("A")
    g = a.gate
    now = g._loop.time()
    before = drops_snapshot()
    stranger = uuid.uuid4().bytes
    g._gate_command([stranger, b"", g._gate_member, GATE_WHISPER, b"Echo", b"rid"], now)
    g._gate_command([stranger, b"", g._gate_member, GATE_HEARTBEAT], now)
    g._on_gate([[stranger, b"", b"NOTGATE", GATE_WHISPER]])
    g._on_datagram(b"short", ("127.0.0.1", 0))
    after = drops_snapshot()
    for reason in ("gate_from_unknown_peer", "gate_heartbeat_ignored", "gate_malformed",
                   "gate_datagram_malformed"):
        assert after.get(reason, 0) - before.get(reason, 0) == 1, reason
