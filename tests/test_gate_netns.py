"""Multicast discovery with three gates, each in its own network namespace.

Three "hosts" (namespaces) are joined by veth pairs to a bridge in a fourth
namespace; multicast is routed only over those veths, so no datagram leaves
the namespaces this test makes (they are deleted afterwards, also on
failure).  Every gate runs ``tests/gate_roles/gate_node.py`` inside its
namespace with ``--multicast`` and no ``connect_gate``; the test talks to the
gates through their ``ipc://`` frontends (unix sockets work across network
namespaces).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from gaterpc.core import Client, Context
from gaterpc.exceptions import RemoteException
from gaterpc.global_settings import Settings

from gate_roles.harness import (  # noqa: F401 (fixtures)
    free_port, ipc_dir, lab, name_id, procs, until_async,
)

pytestmark = pytest.mark.netns

HB = 200  # ms






async def test_multicast_discovery_forwarding_expiry_failover_events(lab, ipc_dir, procs):
    hosts = lab.hosts(3)
    mport = random.randint(20000, 40000)
    suffix = lab.tag
    names = [f"{x}-{suffix}" for x in ("A", "B", "C")]
    services = [[], ["--service", "Echo"], ["--service", "Echo"]]
    gates = []
    for (ns, addr), name, svc in zip(hosts, names, services):
        gates.append(procs(
            name, "--port", str(free_port()), "--bind", addr, "--multicast", "--mcast-port", str(mport),
            "--frontend", f"ipc://{ipc_dir}/{name[0]}f", "--backend", f"ipc://{ipc_dir}/{name[0]}b",
            "--heartbeat", str(HB), *svc, netns=ns))
    for g in gates:
        g.wait_ready()
    ids = [name_id(n).hex() for n in names]

    ctx = Context()
    clients = []
    try:
        for name in names:
            c = Client(f"ipc://{ipc_dir}/{name[0]}f", context=ctx, heartbeat=HB, reply_timeout=10)
            await c.connect()
            clients.append(c)
        ca, cb, cc = clients

        # discovery: every gate joins the other two, by multicast only
        async def all_joined():
            got = [await c.Gate.peers() for c in clients]
            return all(sorted(set(ids) - {ids[i]}) == got[i] for i in range(3))
        await until_async(all_joined, timeout=15)

        # forwarding from A (no worker) to B and C
        assert "Echo" in await ca.Gate.get_services()
        where = {await ca.Echo.where() for _ in range(20)}
        assert where == {names[1], names[2]}
        assert [i async for i in await ca.Echo.count(500)] == list(range(500))

        # events: B broadcasts, A and C's handlers get it
        assert await cb.Gate.notify("hello from B")
        async def delivered():
            ea, ec = await ca.Gate.events(), await cc.Gate.events()
            return ea and ec
        await until_async(delivered, timeout=5)
        for c in (ca, cc):
            assert await c.Gate.events() == [{"from": ids[1], "body": ["hello from B"]}]

        # B killed (by pid): A expires it within the liveness window, calls in
        # flight to it fail clearly, new calls go to C
        pending = [asyncio.ensure_future(ca.Echo.slow(4)) for _ in range(6)]  # some land on B
        await asyncio.sleep(0.3)
        gates[1].kill()
        window = HB * Settings.MDP_HEARTBEAT_LIVENESS / 1000
        done, not_done = await asyncio.wait(pending, timeout=window + 1.5)
        lost = [f.exception() for f in done]
        assert lost and all(isinstance(e, RemoteException) and "lost before replying" in str(e)
                            for e in lost), lost
        assert await asyncio.wait_for(asyncio.gather(*not_done), 10) == [names[2]] * len(not_done)

        async def b_gone():
            return ids[1] not in await ca.Gate.peers()
        await until_async(b_gone, timeout=3)
        assert {await ca.Echo.where() for _ in range(10)} == {names[2]}
    finally:
        for c in clients:
            c.close()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)
