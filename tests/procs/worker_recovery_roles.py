"""Broker and worker processes for the recovery tests (``tests/test_recovery.py``).

Usage::

    python recovery_roles.py broker FRONTEND BACKEND
    python recovery_roles.py worker BACKEND [--no-reconnect]

Every role uses a 300 ms heartbeat.  A role prints ``READY`` when serving and
exits on SIGTERM.  A worker whose receive loop ends by itself (it gave up its
broker) prints ``STOPPED`` and exits with status 3.  The ``slow_huge`` method
prints ``HUGE-SENDING`` once it has handed a few pieces to the transfer.
"""

import asyncio
import os
import signal
import sys

import msgpack

from gaterpc.core import AMajordomo, Context, Service, Worker
from gaterpc.global_settings import Settings
from gaterpc.utils import HugeData, interface

HEARTBEAT = 300


class Echo(Worker):
    @interface
    async def echo(self, *args, **kwargs):
        return [args, kwargs]

    @interface
    def pid(self):
        return os.getpid()

    @interface
    async def sleep(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    @interface
    async def slow_stream(self, n, delay):
        for i in range(n):
            yield i
            await asyncio.sleep(delay)

    @interface
    async def slow_huge(self, pieces, delay):
        hd = HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG,
                      compress_module="gzip", timeout=delay * 4)

        async def feed():
            # The payload is a valid msgpack value (an array of ``pieces`` bins), so the
            # client decodes the chunks that reach it without error until the transfer breaks.
            hd.add_data(b"\xdd" + pieces.to_bytes(4, "big"))
            for i in range(pieces):
                hd.add_data(msgpack.packb(os.urandom(256 * 1024)))  # incompressible: chunks leave at once
                if i == 3:
                    print("HUGE-SENDING", flush=True)
                await asyncio.sleep(delay)
            hd.flush()

        task = asyncio.get_running_loop().create_task(feed())
        self._feeders = getattr(self, "_feeders", set())
        self._feeders.add(task)
        task.add_done_callback(self._feeders.discard)
        return hd


async def main(role, *args):
    Settings.configure("MDP_HEARTBEAT_INTERVAL", HEARTBEAT)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, "term")
    ctx = Context()
    status = 0
    if role == "broker":
        md = AMajordomo(context=ctx)
        md.bind_frontend(args[0])
        md.bind_backend(args[1])
        md.run()
        print("READY", flush=True)
        await stop
        md.stop()
    else:
        w = Service(name="Echo").create_worker(Echo, args[0], context=ctx)
        if "--no-reconnect" in args:
            w._reconnect = False
        w.run()
        print("READY", flush=True)
        w._recv_task.add_done_callback(lambda _t: stop.done() or stop.set_result("stopped"))
        if await stop == "stopped":
            print("STOPPED", flush=True)
            status = 3
        else:
            w.stop()
    await asyncio.sleep(0.1)
    ctx.destroy(linger=0)
    return status


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:])))
