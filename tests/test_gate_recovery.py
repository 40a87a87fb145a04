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

    p1, p2 = free_port(), free_port()
    code = (example.replace("9101", str(p1)).replace("9102", str(p2))
            .replace("ipc:///tmp/", f"ipc://{tmp_path}/"))
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(Path(gaterpc.__file__).parent.parent))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=str(tmp_path))
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
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
