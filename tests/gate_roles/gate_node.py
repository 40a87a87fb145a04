"""One gate process for the gate tests: a Gate, optional local workers, optional peers.

Runs with our gaterpc or with the original one (whichever ``gaterpc`` the
interpreter finds); only the public API both share is used.  The test talks
to the gate through its frontend (usually ``ipc://``, which also works across
network namespaces).

    gate_node.py --name A --port 9101 --frontend ipc:///tmp/x/a-front
                 --backend ipc:///tmp/x/a-back [--bind 127.0.0.1]
                 [--heartbeat 200] [--multicast] [--mcast-port 9777]
                 [--service Echo[:capacity]]... [--connect B@tcp://127.0.0.1:9102]...

On start it prints one JSON line ``{"ready": "gate", "impl": ..., "id": <hex>,
"pid": ...}`` on stdout; it stops on SIGTERM/SIGINT.

Internal methods (``client.Gate.<name>``) added for the tests: ``peers()``
(hex ids of ready peers), ``events()`` (notices received by the ``Hello``
handler), ``notify(text)`` (broadcast a ``Hello`` notice), ``whoami()``
(the caller's id, hex), ``node()`` (this gate's name).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import random
import signal
import sys
import uuid

from gaterpc.core import Context, Gate, Service, Worker
from gaterpc.global_settings import Settings
from gaterpc.utils import interface, msg_pack, msg_unpack

_PKG = os.path.dirname(__import__("gaterpc").__file__)
# ours has a gate module (a package since the split); the original keeps its gate in core.py
IMPL = "ours" if os.path.exists(os.path.join(_PKG, "gate.py")) or os.path.isdir(os.path.join(_PKG, "gate")) \
    else "orig"


def make_worker_class(node_name):
    class NodeWorker(Worker):
        @interface
        async def echo(self, *args, **kwargs):
            return {"args": list(args), "node": node_name}

        @interface
        async def where(self):
            return node_name

        @interface
        async def count(self, n):
            for i in range(n):
                yield i

        @interface
        async def slow(self, seconds):
            await asyncio.sleep(seconds)
            return node_name

        @interface
        async def fail(self):
            raise KeyError("missing")

        @interface
        async def blob(self, n):
            # HugeData (gzip, each implementation's chunks) of n reproducible random bytes
            from gaterpc.utils import HugeData
            return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG,
                            data=msg_pack(random.Random(n).randbytes(n)))

    return NodeWorker


class NodeGate(Gate):
    """A gate with a ``Hello`` notice handler and a few internal methods for the tests."""

    def setup_node(self, name):
        self.node_name = name
        self.seen_events = []
        self.register_event_handler("Hello", self.on_hello)

    async def on_hello(self, gate, *body):
        self.seen_events.append({"from": gate.identity.hex(), "body": [msg_unpack(b) for b in body]})

    @interface
    def peers(self, **kwargs):
        return sorted(g.hex() for g in self.gate_cluster.get_workers())

    @interface
    def events(self, **kwargs):
        return self.seen_events

    @interface
    async def notify(self, text, **kwargs):
        await self.send_notice_command(uuid.uuid4().bytes, "Hello", (msg_pack(text),))
        return True

    @interface
    def whoami(self, **kwargs):
        caller = kwargs.get("__client_id") or kwargs.get("client_id")
        return caller.hex() if isinstance(caller, bytes) else None

    @interface
    def node(self, **kwargs):
        return self.node_name


def name_id(name):
    return uuid.uuid5(uuid.NAMESPACE_DNS, name).bytes


async def main(args):
    if args.mcast_port:
        Settings.GATE_MULTICAST_PORT = args.mcast_port
    ctx = Context()
    kwargs = dict(identity=args.name, context=ctx, heartbeat=args.heartbeat, multicast=args.multicast)
    if "gate_bind" in inspect.signature(Gate.__init__).parameters:
        kwargs["gate_bind"] = args.bind
        if args.mcast_interface:
            kwargs["multicast_interface"] = args.mcast_interface
    gate = NodeGate(args.port, **kwargs)
    gate.setup_node(args.name)
    gate.bind_frontend(args.frontend)
    gate.bind_backend(args.backend)
    gate.run()
    workers = []
    for spec in args.service:
        name, _, cap = spec.partition(":")
        w = Service(name=name).create_worker(
            make_worker_class(args.name), args.backend, context=ctx,
            workers_heartbeat=args.heartbeat, max_allowed_request=int(cap) if cap else None)
        w.run()
        workers.append(w)
    for _ in range(500):
        if all(s.partition(":")[0] in gate.services and gate.services[s.partition(":")[0]].workers
               for s in args.service):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    for spec in args.connect:
        peer, _, addr = spec.partition("@")
        await gate.connect_gate(name_id(peer), addr)
    print(json.dumps({"ready": "gate", "impl": IMPL, "name": args.name,
                      "id": gate.identity.hex(), "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for w in workers:
        w.stop()
    gate.stop()
    await asyncio.sleep(0.2)
    ctx.destroy(linger=0)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--frontend", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--heartbeat", type=int, default=200)
    p.add_argument("--multicast", action="store_true")
    p.add_argument("--mcast-port", type=int, default=0)
    p.add_argument("--mcast-interface", default="")
    p.add_argument("--service", action="append", default=[])
    p.add_argument("--connect", action="append", default=[])
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        asyncio.run(main(parse(sys.argv[1:])))
    except KeyboardInterrupt:
        pass
