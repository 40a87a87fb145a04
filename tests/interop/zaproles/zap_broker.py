"""ZAP broker role: an ``AsyncZAPService`` (PLAIN) and an ``AMajordomo`` using it.

Usage: ``python zap_broker.py --front ADDR --back ADDR --zap ADDR --user U --password P [--base-path DIR]``

Public API only (README pattern), so it runs under the original and ours.
Prints one JSON readiness line; exits cleanly on SIGTERM.
"""

import argparse
import asyncio

import common

import gaterpc
from gaterpc.core import AMajordomo, AsyncZAPService, Context
from gaterpc.global_settings import Settings


async def main(args):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    common.install_stop(loop, stop)
    common.configure_settings(Settings, args.base_path, args.back)
    Settings.setup()
    zap = AsyncZAPService(addr=args.zap)
    zap.configure_plain(Settings.ZAP_DEFAULT_DOMAIN, {args.user: args.password})
    zap.start()
    ctx = Context()
    broker = AMajordomo(context=ctx)
    broker.bind_backend(args.back)
    broker.bind_frontend(args.front)
    broker.connect_zap(zap_addr=args.zap)
    broker.run()
    await asyncio.sleep(0.05)
    common.announce("zap_broker", gaterpc, front=args.front, back=args.back)
    await stop
    broker.stop()
    zap.stop()
    await asyncio.sleep(0.2)
    ctx.destroy(linger=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("--front", "--back", "--zap", "--user", "--password"):
        parser.add_argument(name, required=True)
    parser.add_argument("--base-path")
    asyncio.run(main(parser.parse_args()))
