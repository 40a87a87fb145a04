"""Client role: connects a ``Client`` to a broker frontend and runs calls.

Usage::

    python client.py --front ADDR [--wait-service NAME ...] [--reply-timeout S]
                     (--calls JSON | --serve) [--base-path DIR]

It prints a JSON readiness line once connected (and, with ``--wait-service``,
once the broker lists those services), then:

* ``--calls JSON``: runs the JSON list of calls, prints one JSON line with
  the list of results and exits;
* ``--serve``: reads one JSON list of calls per stdin line and answers each
  with one JSON line of results, until stdin closes or SIGTERM.

A call is ``{"id", "service", "method", "args", "kwargs", "mode",
"reply_timeout", "limit", "via", "n"}`` with values in the tagged encoding of
``common``; ``mode`` is ``call`` (plain value), ``stream`` (iterate the
``StreamReply``), ``huge`` (HugeData: reply summarised, see
``common.payload_summary``) or ``gather`` (``n`` concurrent calls of
``method(i, *args, **kwargs)``).  A result is ``{"id", "ok", "elapsed", ...}``
with ``value``/``type`` on success or ``exc_type``/``text``/``remote``/
``timeout`` on failure (streams add ``items`` received before the end or the
error).
"""

import argparse
import asyncio
import json
import sys
import time

import common

import gaterpc
from gaterpc.core import Client, Context
from gaterpc.exceptions import RemoteException
from gaterpc.global_settings import Settings


def _error(exc):
    return {"ok": False, "exc_type": type(exc).__name__, "text": str(exc),
            "remote": isinstance(exc, RemoteException),
            "timeout": isinstance(exc, (TimeoutError, asyncio.TimeoutError))}


def _target(cli, call):
    service, method = call.get("service"), call["method"]
    if call.get("via") == "knock":
        return lambda *a, **k: cli.knock(service, method, *a, **k)
    proxy = getattr(cli, service) if service else cli
    return getattr(proxy, method)


async def _one(cli, call):
    args = common.decode(call.get("args", []))
    kwargs = common.decode(call.get("kwargs", {}))
    mode = call.get("mode", "call")
    result = {"id": call.get("id")}
    if mode == "gather":
        n = call["n"]
        coros = [_target(cli, call)(i, *args, **kwargs) for i in range(n)]
        values = await asyncio.gather(*coros, return_exceptions=True)
        errors = [_error(v) for v in values if isinstance(v, BaseException)]
        result.update(ok=not errors, value=common.encode(
            [None if isinstance(v, BaseException) else v for v in values]), errors=errors[:3])
        return result
    items = []
    try:
        value = await _target(cli, call)(*args, **kwargs)
        if mode == "stream":
            result["type"] = type(value).__name__
            async for item in value:
                items.append(common.encode(item))
                if len(items) > 100000:
                    raise RuntimeError("runaway stream")
            result.update(ok=True, items=items, exited=bool(value.is_exit()))
        elif mode == "huge":
            result.update(ok=True, type=type(value).__name__, value=common.payload_summary(value))
        else:
            result.update(ok=True, type=type(value).__name__, value=common.encode(value))
    except Exception as exc:  # reported to the test, which asserts on it
        result.update(_error(exc))
        if mode == "stream":
            result["items"] = items
    return result


async def run_call(cli, call):
    saved = cli.reply_timeout
    if call.get("reply_timeout"):
        cli.reply_timeout = float(call["reply_timeout"])
    start = time.monotonic()
    task = asyncio.ensure_future(_one(cli, call))
    try:
        done, _ = await asyncio.wait({task}, timeout=float(call.get("limit", 30.0)))
        if done:
            result = task.result()
        else:
            task.cancel()
            await asyncio.wait({task}, timeout=2.0)
            result = {"id": call.get("id"), "ok": False, "exc_type": "LocalLimit",
                      "text": f"no outcome within {call.get('limit', 30.0)} s",
                      "remote": False, "timeout": False}
    finally:
        cli.reply_timeout = saved
    result["elapsed"] = round(time.monotonic() - start, 4)
    return result


async def run_calls(cli, calls):
    return [await run_call(cli, call) for call in calls]


async def wait_services(ctx, front, names, deadline):
    """Poll the broker until it lists ``names`` (a client's list is a connect-time snapshot)."""
    probe = Client(front, context=ctx, reply_timeout=2.0)
    try:
        await probe.connect()
        while True:
            services = await probe.Gate.get_services()
            if all(n in services for n in names):
                return services
            if time.monotonic() > deadline:
                raise RuntimeError(f"services {names} not registered; broker lists {services}")
            await asyncio.sleep(0.1)
    finally:
        probe.close()
        await asyncio.sleep(0.1)


async def main(args):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    common.install_stop(loop, stop)
    common.configure_settings(Settings, args.base_path, None)
    Settings.setup()
    ctx = Context()
    if args.wait_service:
        await wait_services(ctx, args.front, args.wait_service, time.monotonic() + args.wait_limit)
    cli = Client(args.front, context=ctx, reply_timeout=args.reply_timeout)
    await cli.connect()
    services = await cli.Gate.get_services()
    common.announce("client", gaterpc, front=args.front, services=common.encode(services))
    try:
        if args.calls is not None:
            print(common.dumps(await run_calls(cli, json.loads(args.calls))), flush=True)
        else:
            reader = asyncio.StreamReader(limit=1 << 28)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            while not stop.done():
                line_task = asyncio.ensure_future(reader.readline())
                await asyncio.wait({line_task, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not line_task.done():
                    line_task.cancel()
                    break
                line = line_task.result()
                if not line:
                    break
                if line.strip():
                    print(common.dumps(await run_calls(cli, json.loads(line))), flush=True)
    finally:
        cli.close()
        await asyncio.sleep(0.1)
        ctx.destroy(linger=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--front", required=True)
    parser.add_argument("--wait-service", action="append", default=[])
    parser.add_argument("--wait-limit", type=float, default=15.0)
    parser.add_argument("--reply-timeout", type=float, default=10.0)
    parser.add_argument("--base-path")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--calls")
    mode.add_argument("--serve", action="store_true")
    asyncio.run(main(parser.parse_args()))
