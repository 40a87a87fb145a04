"""ZAP worker role: a worker sending PLAIN credentials.

Usage: ``python zap_worker.py --back ADDR --service NAME --user U --password P [--base-path DIR]``

Methods: ``echo(*args)`` -> ``list(args)`` (counted), ``count()`` -> number of
``echo`` calls so far.  Prints one JSON readiness line (after READY was sent,
not necessarily accepted); exits cleanly on SIGTERM.
"""

import argparse
import asyncio

import common

import gaterpc
from gaterpc.core import Context, Service, Worker
from gaterpc.global_settings import Settings
from gaterpc.utils import interface


class ZapWorker(Worker):
    echo_calls = 0

    @interface
    async def echo(self, *args):
        ZapWorker.echo_calls += 1
        return list(args)

    @interface
    async def count(self):
        return ZapWorker.echo_calls


async def main(args):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    common.install_stop(loop, stop)
    common.configure_settings(Settings, args.base_path, args.back)
    Settings.setup()
    ctx = Context()
    service = Service(name=args.service, description=common.SERVICE_DESCRIPTION)
    worker = service.create_worker(ZapWorker, args.back, context=ctx,
                                   zap_mechanism=Settings.ZAP_MECHANISM_PLAIN,
                                   zap_credentials=(args.user, args.password))
    worker.run()
    await asyncio.sleep(0.05)
    common.announce("zap_worker", gaterpc, service=args.service)
    await stop
    worker.stop()
    await asyncio.sleep(0.2)
    ctx.destroy(linger=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("--back", "--service", "--user", "--password"):
        parser.add_argument(name, required=True)
    parser.add_argument("--base-path")
    asyncio.run(main(parser.parse_args()))
