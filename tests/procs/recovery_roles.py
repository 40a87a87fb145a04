"""A broker with one worker in its process, for the client recovery tests.

Usage: ``python recovery_roles.py FRONTEND HEARTBEAT_MS BASE_PATH``.  Prints
``READY`` once the worker is registered at the broker; exits on SIGTERM (the
tests mostly SIGKILL it).  Uses the public API only, so it also runs under
the original gaterpc.
"""

import asyncio
import signal
import sys
from pathlib import Path

from gaterpc.core import AMajordomo, Context, Service, Worker
from gaterpc.global_settings import Settings
from gaterpc.utils import interface


class Slow(Worker):
    @interface
    async def echo(self, value):
        return value

    @interface
    async def sleep(self, seconds, tag=None):
        await asyncio.sleep(seconds)
        return tag

    @interface
    async def trickle(self, n, delay):
        for i in range(n):
            yield i
            await asyncio.sleep(delay)


async def main(frontend, heartbeat, base_path):
    Settings.configure("BASE_PATH", Path(base_path))
    Settings.MDP_HEARTBEAT_INTERVAL = int(heartbeat)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    ctx = Context()
    backend = f"inproc://recovery-backend-{id(ctx)}"
    md = AMajordomo(context=ctx)
    md.bind_frontend(frontend)
    md.bind_backend(backend)
    md.run()
    w = Service(name="Slow").create_worker(Slow, backend, context=ctx)
    w.run()
    for _ in range(500):
        if "Slow" in md.services and md.services["Slow"].workers:
            break
        await asyncio.sleep(0.01)
    else:
        print("NOT READY", flush=True)
        return
    print("READY", flush=True)
    await stop
    w.stop()
    md.stop()
    await asyncio.sleep(0.1)
    ctx.destroy(linger=0)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
