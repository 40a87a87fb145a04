"""Worker role: one ``Worker`` subclass registered under a service name.

Usage: ``python worker.py --back ADDR --service NAME [--base-path DIR] [--heartbeat MS]``

Remote methods (all ``@interface``):

* ``echo(*args, **kwargs)`` -> ``(args, kwargs)``
* ``fail()`` raises ``ValueError("boom!")``
* ``agen(n)`` async generator of ``(i, "i<i>")`` for i in range(n)
* ``gen(n)`` the same as a plain (sync) generator
* ``agen_fail(k)`` / ``gen_fail(k)`` yield k items, then raise ``ValueError``
* ``huge(n)`` returns ``HugeData`` (gzip) of ``msg_pack(common.payload(n))``
* ``thread_pair(x)`` runs in the thread executor, returns ``(x, x)``
* ``whoami()`` -> ``{"impl": "orig"|"ours", "pid": ..., "service": ...}``
* ``get_interfaces()`` (built in)

Prints one JSON readiness line on stdout; exits cleanly on SIGTERM.
"""

import argparse
import asyncio
import os

import common

import gaterpc
from gaterpc.core import Context, Service, Worker
from gaterpc.global_settings import Settings
from gaterpc.utils import HugeData, interface, msg_pack


class InteropWorker(Worker):

    @interface
    async def echo(self, *args, **kwargs):
        """Return the arguments as received."""
        return args, kwargs

    @interface
    async def fail(self):
        raise ValueError("boom!")

    @interface
    async def agen(self, n):
        for i in range(n):
            yield i, f"i{i}"

    @interface
    def gen(self, n):
        for i in range(n):
            yield i, f"i{i}"

    @interface
    async def agen_fail(self, k):
        for i in range(k):
            yield i
        raise ValueError(f"stream boom after {k}")

    @interface
    def gen_fail(self, k):
        for i in range(k):
            yield i
        raise ValueError(f"stream boom after {k}")

    @interface
    async def huge(self, n):
        return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG,
                        data=msg_pack(common.payload(n)), compress_module="gzip")

    @interface("thread")
    def thread_pair(self, x):
        return x, x

    @interface
    def whoami(self):
        return {"impl": common.implementation(gaterpc), "pid": os.getpid(),
                "service": self.service.name}


async def main(args):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    common.install_stop(loop, stop)
    common.configure_settings(Settings, args.base_path, args.back)
    if args.heartbeat:
        Settings.configure("MDP_HEARTBEAT_INTERVAL", args.heartbeat)
    Settings.setup()
    ctx = Context()
    service = Service(name=args.service, description=common.SERVICE_DESCRIPTION)
    worker = service.create_worker(InteropWorker, args.back, context=ctx)
    worker.run()
    await asyncio.sleep(0.05)
    common.announce("worker", gaterpc, service=args.service, back=args.back)
    await stop
    worker.stop()
    await asyncio.sleep(0.2)
    ctx.destroy(linger=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--back", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--base-path")
    parser.add_argument("--heartbeat", type=int, default=0, help="ms (default: the library's)")
    asyncio.run(main(parser.parse_args()))
