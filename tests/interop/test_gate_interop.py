"""A mixed gate cluster: our gate and the original's (0.2.11) gate.

The original binds its gate socket to all interfaces, so both gates run in a
network namespace this test makes (only ``lo``; deleted afterwards).  They
are joined with ``connect_gate`` both ways, multicast off, and each forwards
a call for a service only the other one hosts.  The test process reaches
both frontends over ``ipc://`` (unix sockets work across namespaces).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from gaterpc.core import Client, Context
from gaterpc.exceptions import RemoteException

from gate_roles.harness import ipc_dir, lab, name_id, procs, until_async  # noqa: F401 (fixtures)

HB = 300  # ms






@pytest.mark.parametrize("first", ["orig", "ours"])
async def test_mixed_gates_forward_both_ways(lab, ipc_dir, procs, original_python, first):
    ns = lab.single("gi")
    ours_name, orig_name = f"O-{lab.tag}", f"R-{lab.tag}"
    ours_port, orig_port = 19301, 19302   # inside the test's own namespace
    ours_args = ("--port", str(ours_port), "--bind", "127.0.0.1",
                 "--frontend", f"ipc://{ipc_dir}/of", "--backend", f"ipc://{ipc_dir}/ob",
                 "--heartbeat", str(HB), "--service", "OursSvc",
                 "--connect", f"{orig_name}@tcp://127.0.0.1:{orig_port}")
    orig_args = ("--port", str(orig_port),
                 "--frontend", f"ipc://{ipc_dir}/rf", "--backend", f"ipc://{ipc_dir}/rb",
                 "--heartbeat", str(HB), "--service", "OrigSvc",
                 "--connect", f"{ours_name}@tcp://127.0.0.1:{ours_port}")
    order = [("ours", ours_name, ours_args), ("orig", orig_name, orig_args)]
    if first == "orig":
        order.reverse()
    started = {}
    for impl, name, args in order:
        p = procs(name, *args, netns=ns, python=original_python if impl == "orig" else None)
        info = p.wait_ready()
        assert info["impl"] == impl, info
        started[impl] = p
        await asyncio.sleep(0.3)

    ctx = Context()
    clients = []
    try:
        for front in ("of", "rf"):
            c = Client(f"ipc://{ipc_dir}/{front}", context=ctx, heartbeat=HB, reply_timeout=10)
            await c.connect()
            clients.append(c)
        c_ours, c_orig = clients

        async def joined():
            return (await c_ours.Gate.peers() == [name_id(orig_name).hex()]
                    and await c_orig.Gate.peers() == [name_id(ours_name).hex()])
        await until_async(joined, timeout=10)

        # our gate forwards to the original's worker, and the other way round
        assert await c_ours.OrigSvc.where() == orig_name
        assert await c_ours.OrigSvc.echo("x") == {"args": ["x"], "node": orig_name}
        assert await c_orig.OursSvc.where() == ours_name
        with pytest.raises(RemoteException) as info:
            await c_ours.OrigSvc.fail()
        assert "KeyError" in str(info.value)
        # HugeData from the original's worker through both gates: our client credits its
        # progress to our gate, which passes the credits on to the original gate; that gate
        # must drop them unseen (GATE_CREDIT is not one of its commands) and serve on
        n = 600_000
        assert await c_ours.OrigSvc.blob(n) == random.Random(n).randbytes(n)
        assert await c_ours.OrigSvc.where() == orig_name

        # heartbeats keep the pair joined well past three liveness windows
        await asyncio.sleep(HB * 3 * 3 / 1000)
        assert await joined()
        assert await c_ours.OrigSvc.where() == orig_name
        assert await c_orig.OursSvc.where() == ours_name
    finally:
        for c in clients:
            c.close()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)
