"""ZAP client role: connect with PLAIN credentials, run calls, print the outcomes.

Usage: ``python zap_client.py --front ADDR --user U --password P --service NAME
--calls "echo:hi,count" [--reply-timeout S] [--base-path DIR]``

Prints a readiness line, then one JSON list: for ``connect`` and each call
``{"step", "ok", "value" | "error", "elapsed"}``; the error is the exception
class name and text.  Then exits.
"""

import argparse
import asyncio

import common

import gaterpc
from gaterpc.core import Client, Context
from gaterpc.global_settings import Settings


async def step(name, make_call, loop):
    t0 = loop.time()
    try:
        value = await make_call()
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return {"step": name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                "elapsed": loop.time() - t0}
    return {"step": name, "ok": True, "value": common.encode(value), "elapsed": loop.time() - t0}


async def main(args):
    loop = asyncio.get_running_loop()
    common.configure_settings(Settings, args.base_path, None)
    Settings.setup()
    ctx = Context()
    client = Client(args.front, context=ctx, reply_timeout=args.reply_timeout,
                    zap_mechanism="PLAIN", zap_credentials=(args.user, args.password))
    common.announce("zap_client", gaterpc)
    results = [await step("connect", client.connect, loop)]
    for spec in args.calls.split(","):
        method, _, arg = spec.partition(":")
        call_args = (arg,) if arg else ()
        results.append(await step(
            spec, lambda: getattr(getattr(client, args.service), method)(*call_args), loop))
    print(common.dumps(results), flush=True)
    client.close()
    await asyncio.sleep(0.05)
    ctx.destroy(linger=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("--front", "--user", "--password", "--service", "--calls"):
        parser.add_argument(name, required=True)
    parser.add_argument("--reply-timeout", type=float, default=3.0)
    parser.add_argument("--base-path")
    asyncio.run(main(parser.parse_args()))
