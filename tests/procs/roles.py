"""Broker and worker processes for the multi-process end-to-end tests.

Usage: ``python roles.py broker FRONTEND BACKEND`` or
``python roles.py worker BACKEND``.  Prints ``READY`` when serving; exits on
SIGTERM.
"""

import asyncio
import signal
import sys

from gaterpc.core import AMajordomo, Context, Service, Worker
from gaterpc.global_settings import Settings
from gaterpc.utils import HugeData, interface, msg_pack


class Echo(Worker):
    @interface
    async def echo(self, *args, **kwargs):
        return [args, kwargs]

    @interface
    def count(self, n):
        yield from range(n)

    @interface
    async def boom(self):
        raise ValueError("boom!")

    @interface
    async def huge(self, n):
        return HugeData(Settings.HUGE_DATA_END_TAG, Settings.HUGE_DATA_EXCEPT_TAG,
                        data=msg_pack(b"z" * n), compress_module="lz4")


async def main(role, *addrs):
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    ctx = Context()
    if role == "broker":
        md = AMajordomo(context=ctx)
        md.bind_frontend(addrs[0])
        md.bind_backend(addrs[1])
        md.run()
        print("READY", flush=True)
        await stop
        md.stop()
    else:
        w = Service(name="Echo").create_worker(Echo, addrs[0], context=ctx)
        w.run()
        print("READY", flush=True)
        await stop
        w.stop()
    await asyncio.sleep(0.1)
    ctx.destroy(linger=0)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
