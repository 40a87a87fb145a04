"""Broker role: an ``AMajordomo`` with a frontend and a backend.

Usage: ``python broker.py --front ADDR --back ADDR [--base-path DIR] [--heartbeat MS]``

Prints one JSON readiness line on stdout once bound and running; exits
cleanly on SIGTERM.  Written against the public API only, so it runs
unchanged under the original gaterpc and under ours.
"""

import argparse
import asyncio

import common

import gaterpc
from gaterpc.core import AMajordomo, Context
from gaterpc.global_settings import Settings


async def main(args):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    common.install_stop(loop, stop)
    common.configure_settings(Settings, args.base_path, args.back)
    if args.heartbeat:
        Settings.configure("MDP_HEARTBEAT_INTERVAL", args.heartbeat)
    Settings.setup()
    ctx = Context()
    broker = AMajordomo(context=ctx)
    broker.bind_backend(args.back)
    broker.bind_frontend(args.front)
    broker.run()
    await asyncio.sleep(0.05)
    common.announce("broker", gaterpc, front=args.front, back=args.back)
    await stop
    broker.stop()
    await asyncio.sleep(0.2)
    ctx.destroy(linger=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--front", required=True)
    parser.add_argument("--back", required=True)
    parser.add_argument("--base-path")
    parser.add_argument("--heartbeat", type=int, default=0, help="ms (default: the library's)")
    asyncio.run(main(parser.parse_args()))
