"""The ``gaterpc`` command (also ``python -m gaterpc``).

Commands::

    gaterpc --version
    gaterpc broker --frontend ADDR --backend ADDR [--gate PORT ...]   run a broker (or a Gate)
    gaterpc worker MODULE:CLASS --backend ADDR [--service NAME]        serve a Worker subclass
    gaterpc call ADDR SERVICE.METHOD [ARG ...] [-k NAME=VALUE ...]     call a method, print JSON
    gaterpc info ADDR [--json]                                         services of a broker
    gaterpc bench ...                                                  the echo benchmark
    gaterpc bench soak|fuzz|hugedata|codec|speedups ...                the other benchmarks

``broker`` and ``worker`` run until SIGTERM or SIGINT and then shut down
gracefully (:func:`gaterpc.serve.serve`) and exit 0.  ``--sched batch``
runs them under SCHED_BATCH (:mod:`gaterpc.sched`), set before anything else.  Logs go to stderr
(``--log-format text|json``), to a file as well with ``--log-file``.

``call`` and ``info`` print on stdout.  Arguments (``ARG`` and the
``VALUE`` of ``-k``) are parsed as JSON when they are valid JSON, else
taken as strings (``42`` is a number, ``'"42"'`` and ``abc`` are strings).
A result is printed as one JSON line; a stream as one JSON line per item,
as each arrives.  Bytes are printed as ``{"$bytes": "<base64>"}``; map keys
that are not strings are printed with ``str()``.

Exit status of ``call``/``info``: 0 success, 1 remote error (type and
message on stderr), 2 usage error, 3 timeout or broker unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import logging
import logging.config
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, Optional, Sequence

from gaterpc import __version__

if TYPE_CHECKING:
    from gaterpc.client import Client
    from gaterpc.global_settings import GlobalSettings
    from gaterpc.worker import Worker

_Remaining = Callable[[], float]
_Body = Callable[["Client", _Remaining], Awaitable[int]]

__all__ = ("main", "build_parser", "parse_value", "to_json")

EXIT_OK, EXIT_REMOTE, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3

logger = logging.getLogger("gaterpc.cli")


class UsageError(Exception):
    """A bad command line value (exit status 2)."""


# --------------------------------------------------------------------------- values

def parse_value(text: str) -> Any:
    """A command line value: its JSON value when ``text`` is valid JSON, else ``text``."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _jsonable(value: Any, depth: int = 0) -> Any:
    if depth > 100:
        raise ValueError("the value is nested too deeply to print")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def to_json(value: Any) -> str:
    """``value`` as one JSON line (bytes as ``{"$bytes": base64}``)."""
    return json.dumps(_jsonable(value), ensure_ascii=False)


def _split_kv(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UsageError(f"{what} must look like NAME=VALUE, got {text!r}")
    return name, value


def _plain(text: Optional[str]) -> tuple[Optional[str], Optional[tuple[str, str]]]:
    if text is None:
        return None, None
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise UsageError(f"--plain must look like USER:PASSWORD, got {text!r}")
    return "PLAIN", (user, password)


def _addr(text: str, option: str) -> str:
    from gaterpc.helpers import check_socket_addr

    try:
        return check_socket_addr(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _import_on_path(name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    return importlib.import_module(name)


# --------------------------------------------------------------------------- set-up

def _setup(args: argparse.Namespace, default_level: str = "INFO") -> GlobalSettings:
    """Import ``--settings`` then configure console logging."""
    from gaterpc.global_settings import Settings
    from gaterpc.log import console_logging_config

    if getattr(args, "settings", None):
        try:
            _import_on_path(args.settings)
        except ImportError as exc:
            raise UsageError(f"--settings: cannot import {args.settings!r}: {exc}") from None
    level = getattr(args, "log_level", None) or default_level
    try:
        config = console_logging_config(level, getattr(args, "log_format", "text") or "text",
                                        getattr(args, "log_file", None))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    logging.config.dictConfig(config)
    return Settings


def _add_metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics (/metrics) on HOST:PORT, e.g. 127.0.0.1:9464; "
                        "off unless given")


def _start_metrics(args: argparse.Namespace, *roles: Any) -> Any:
    """The metrics endpoint asked for with ``--metrics`` (``None`` without it)."""
    if not getattr(args, "metrics", None):
        return None
    from gaterpc.metrics import parse_hostport, start_metrics_server

    try:
        parse_hostport(args.metrics)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    server = start_metrics_server(args.metrics, roles)
    logger.info("metrics on %s", server.url)
    return server


def _add_sched(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sched", choices=("normal", "batch"), default=None,
                   help="CPU scheduling policy (Linux), set before anything starts (default: as started, "
                        "ZeroMQ's I/O threads adapting to contention). "
                        "batch (SCHED_BATCH): more throughput on a host with more busy processes than cores; "
                        "a woken role waits a little longer for a core, so latency on an idle host does not "
                        "improve. normal: every thread, ZeroMQ's I/O threads included, under the default policy")


def _apply_sched(args: argparse.Namespace) -> None:
    """``--sched``: set the policy of this process before any ZeroMQ context (its I/O threads
    inherit it).  ``normal`` also keeps the I/O threads there: the adaptive I/O-thread policy
    (``Settings.ZMQ_IO_THREAD_BATCH = "auto"``) is turned off, unless a ``--settings`` module
    sets it again."""
    name = getattr(args, "sched", None)
    if name is None:
        return
    from gaterpc.sched import SchedUnavailable, set_policy

    try:
        set_policy(name)
    except SchedUnavailable as exc:
        raise UsageError(f"--sched {name}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"--sched {name}: the kernel refused it: {exc.strerror or exc}") from None
    if name == "normal":
        from gaterpc.global_settings import Settings

        Settings.configure("ZMQ_IO_THREAD_BATCH", False)


def _add_common(p: argparse.ArgumentParser, logs: bool = True) -> None:
    p.add_argument("--settings", metavar="MODULE",
                   help="import MODULE first (it sets gaterpc.global_settings.Settings attributes)")
    if logs:
        p.add_argument("--log-level", default="INFO", metavar="LEVEL",
                       help="DEBUG, INFO (default), WARNING, ERROR")
        p.add_argument("--log-format", default="text", choices=("text", "json"),
                       help="console log format: text (default) or json (one object per line)")
        p.add_argument("--log-file", metavar="FILE", help="also write the logs to FILE (rotated daily)")


# --------------------------------------------------------------------------- broker

def _read_plain_users(path: str) -> dict[str, str]:
    """``user:password`` per line; blank lines and lines starting with ``#`` are ignored."""
    users: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--zap-plain: cannot read {path!r}: {exc.strerror or exc}") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip():
            raise UsageError(f"--zap-plain: {path}:{n}: expected 'user:password'")
        users[user.strip()] = password
    if not users:
        raise UsageError(f"--zap-plain: {path} has no 'user:password' line")
    return users


async def _run_broker(args: argparse.Namespace) -> int:
    from gaterpc.base import Context
    from gaterpc.broker import AMajordomo
    from gaterpc.global_settings import Settings
    from gaterpc.helpers import name2uuid
    from gaterpc.serve import serve

    frontend = _addr(args.frontend, "--frontend")
    backend = _addr(args.backend, "--backend")
    peers: list[tuple[bytes, str]] = []
    for item in args.connect_gate or ():
        name, addr = _split_kv(item, "--connect-gate")
        peers.append((name2uuid(name).bytes, _addr(addr, "--connect-gate")))
    if peers and args.gate is None:
        raise UsageError("--connect-gate needs --gate PORT")
    users = _read_plain_users(args.zap_plain) if args.zap_plain else None
    ctx = Context()
    roles: list[Any] = []
    zap = None
    if users is not None:
        from gaterpc.zap import AsyncZAPService

        zap_addr = args.zap_addr or f"inproc://gaterpc-zap-{os.getpid()}"
        zap = AsyncZAPService(addr=_addr(zap_addr, "--zap-addr"), context=ctx)
        zap.configure_plain(Settings.ZAP_DEFAULT_DOMAIN, users)
        zap.start()
    broker: AMajordomo
    gate = None
    if args.gate is not None:
        from gaterpc.gate import Gate

        broker = gate = Gate(args.gate, identity=args.identity, context=ctx, heartbeat=args.heartbeat,
                      multicast=args.multicast, cluster_name=args.cluster, gate_bind=args.gate_bind,
                      multicast_interface=args.multicast_interface)
    else:
        broker = AMajordomo(identity=args.identity, context=ctx, heartbeat=args.heartbeat)
    broker.bind_frontend(frontend)
    broker.bind_backend(backend)
    if zap is not None:
        broker.connect_zap(zap_addr=zap.addr)
    broker.run()
    if gate is not None:  # peers need --gate (checked above)
        for gate_id, addr in peers:
            await gate.connect_gate(gate_id, addr)
    kind = "gate" if args.gate is not None else "broker"
    logger.info("%s serving: frontend %s, backend %s%s%s", kind, frontend, backend,
                f", gate port {args.gate}" if args.gate is not None else "",
                ", PLAIN authentication" if zap is not None else "")
    roles.append(broker)
    if zap is not None:
        roles.append(zap)
    metrics_server = _start_metrics(args, broker)
    try:
        await serve(*roles, grace=0)
    finally:
        if metrics_server is not None:
            metrics_server.close()
    logger.info("%s stopped", kind)
    ctx.destroy(linger=0)
    return EXIT_OK


# --------------------------------------------------------------------------- worker

def _load_class(spec: str) -> type[Worker]:
    from gaterpc.worker import Worker

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"the worker class must be given as MODULE:CLASS, got {spec!r}")
    try:
        module = _import_on_path(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attr!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, Worker)):
        raise UsageError(f"{spec} is not a subclass of gaterpc.core.Worker")
    return obj


async def _run_worker(args: argparse.Namespace) -> int:
    from gaterpc.base import Context
    from gaterpc.serve import serve
    from gaterpc.worker import Service

    cls = _load_class(args.worker_class)
    backend = _addr(args.backend, "--backend")
    mechanism, credentials = _plain(args.plain)
    if args.grace < 0:
        raise UsageError("--grace must be >= 0")
    ctx = Context()
    service = Service(name=args.service or cls.__name__,
                      **({"description": args.description} if args.description else {}))
    worker = service.create_worker(cls, backend, workers_heartbeat=args.heartbeat, context=ctx,
                                   zap_mechanism=mechanism, zap_credentials=credentials,
                                   max_allowed_request=args.max_requests)
    logger.info("worker of %s serving on %s (%s)", service.name, backend, args.worker_class)
    metrics_server = _start_metrics(args, worker)
    try:
        await serve(worker, grace=args.grace)
    finally:
        if metrics_server is not None:
            metrics_server.close()
    logger.info("worker of %s stopped", service.name)
    ctx.destroy(linger=0)
    return EXIT_OK


# --------------------------------------------------------------------------- call / info

def _err(message: str) -> None:
    sys.stderr.write(f"gaterpc: {message}\n")
    sys.stderr.flush()


def _remote_message(exc: BaseException) -> str:
    rtype = getattr(exc, "remote_type", None)
    if rtype:
        text = getattr(exc, "remote_repr", None) or ""
        tb = (getattr(exc, "remote_traceback", None) or "").rstrip()
        return f"remote error {rtype}: {text}" + (f"\n{tb}" if tb else "")
    return f"remote error: {exc}"


class _Deadline(Exception):
    pass


async def _with_client(args: argparse.Namespace, body: _Body) -> int:
    """Connect a client to ``args.addr`` and run ``body(client, remaining)``; map failures to exit codes."""
    from gaterpc.base import Context
    from gaterpc.client import Client
    from gaterpc.exceptions import RemoteException

    addr = _addr(args.addr, "ADDR")
    mechanism, credentials = _plain(args.plain)
    timeout = args.timeout
    if timeout <= 0:
        raise UsageError("--timeout must be > 0")
    loop = asyncio.get_running_loop()
    start = loop.time()
    ctx = Context()
    client = Client(addr, context=ctx, reply_timeout=timeout, zap_mechanism=mechanism,
                    zap_credentials=credentials)

    def remaining() -> float:
        left: float = timeout - (loop.time() - start)
        if left <= 0:
            raise _Deadline()
        return left

    try:
        try:
            await asyncio.wait_for(client.connect(), remaining())
        except (asyncio.TimeoutError, TimeoutError, _Deadline):
            _err(f"no answer from the broker at {addr} within {timeout:g} s "
                 f"(waited {loop.time() - start:.1f} s): is it running, is the address right?")
            return EXIT_TIMEOUT
        return await body(client, remaining)
    except (asyncio.TimeoutError, TimeoutError, _Deadline):
        _err(f"timeout: no complete reply from {addr} within {timeout:g} s "
             f"(waited {loop.time() - start:.1f} s)")
        return EXIT_TIMEOUT
    except RemoteException as exc:
        _err(_remote_message(exc))
        return EXIT_REMOTE
    finally:
        client.close()
        ctx.destroy(linger=0)


async def _run_call(args: argparse.Namespace) -> int:
    from gaterpc.streams import StreamReply

    service, dot, method = args.target.rpartition(".")
    if not dot or not service or not method:
        raise UsageError(f"the method must be given as SERVICE.METHOD, got {args.target!r}")
    call_args = [parse_value(a) for a in args.args]
    kwargs: dict[str, Any] = {}
    for item in args.kwargs or ():
        name, value = _split_kv(item, "-k")
        kwargs[name] = parse_value(value)

    async def body(client: Client, remaining: _Remaining) -> int:
        try:
            result = await asyncio.wait_for(client.knock(service, method, *call_args, **kwargs), remaining())
        except AttributeError as exc:
            _err(f"{exc} (at {args.addr})")
            return EXIT_REMOTE
        out = sys.stdout
        if isinstance(result, StreamReply) or hasattr(result, "__anext__"):
            iterator = result.__aiter__()
            try:
                while True:
                    try:
                        # each item must come within --timeout of the previous one
                        item = await asyncio.wait_for(iterator.__anext__(), args.timeout)
                    except StopAsyncIteration:
                        break
                    out.write(to_json(item) + "\n")
                    out.flush()
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:  # noqa: BLE001 - the stream is abandoned anyway
                        pass
            return EXIT_OK
        out.write(to_json(result) + "\n")
        out.flush()
        return EXIT_OK

    return await _with_client(args, body)


async def collect_info(client: Client) -> dict[str, Any]:
    """``{"broker": {...}, "services": {name: {"workers": N or None, ...}}, "internal_service": name}``.

    Uses the broker's internal service: ``get_services``, ``info`` and
    ``query_service``.  Per-service figures the broker reports in
    ``info()["services"][name]`` (when that is a map) are merged in as
    they are; ``workers`` is ``None`` when the broker does not say.
    """
    from gaterpc.global_settings import Settings

    from gaterpc.exceptions import RemoteException

    internal = Settings.MDP_INTERNAL_SERVICE
    names = await client.knock(internal, "get_services")
    info = await client.knock(internal, "info")
    info = info if isinstance(info, dict) else {}
    details = info.get("services")
    details = details if isinstance(details, dict) else {}
    try:  # our brokers' per-service figures (the original's broker has no "stats")
        stats = await client.knock(internal, "stats")
    except RemoteException:
        stats = None
    if isinstance(stats, dict):
        per_service = stats.get("services")
        if isinstance(per_service, dict):
            details = {**per_service, **details}
        for key in ("workers", "errors", "peers"):
            if key in stats:
                info.setdefault(f"total_{key}" if key == "workers" else key, stats[key])
    services: dict[str, dict[str, Any]] = {}
    for name in names if isinstance(names, list) else ():
        if not isinstance(name, str) or name == internal:
            continue
        entry: dict[str, Any] = {"workers": None}
        query = await client.knock(internal, "query_service", name)
        if isinstance(query, dict):
            entry.update(query)
        elif query is not None:
            entry["description"] = query
        extra = details.get(name)
        if isinstance(extra, dict):
            entry.update(extra)
        services[name] = entry
    broker = {k: v for k, v in info.items() if k != "services"}
    my_id = broker.pop("my_id", None)
    if isinstance(my_id, (bytes, bytearray)):
        broker["id"] = bytes(my_id).hex()
    elif my_id is not None:
        broker["id"] = my_id
    return {"broker": broker, "services": services, "internal_service": internal}


async def _run_info(args: argparse.Namespace) -> int:
    async def body(client: Client, remaining: _Remaining) -> int:
        data = await asyncio.wait_for(collect_info(client), remaining())
        data["broker"]["address"] = args.addr
        out = sys.stdout
        if args.json:
            out.write(to_json(data) + "\n")
        else:
            b = data["broker"]
            out.write(f"broker {b['address']}" + (f"  id {b['id']}" if "id" in b else "") + "\n")
            for k, v in b.items():
                if k not in ("address", "id"):
                    out.write(f"  {k}: {to_json(v)}\n")
            if not data["services"]:
                out.write("no services\n")
            for name, entry in data["services"].items():
                workers = entry.get("workers")
                figures = "  ".join(f"{k}={to_json(v)}" for k, v in entry.items()
                                    if k not in ("workers", "description"))
                out.write(f"{name}  workers={'?' if workers is None else workers}"
                          + (f"  {figures}" if figures else "")
                          + (f"  ({entry['description']})" if entry.get("description") else "") + "\n")
        out.flush()
        return EXIT_OK

    return await _with_client(args, body)


# --------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser of every command but ``bench`` (which has its own)."""
    from gaterpc.serve import DEFAULT_GRACE

    parser = argparse.ArgumentParser(
        prog="gaterpc",
        description="gaterpc: run a broker, gate or worker; call a method; inspect a broker.",
        epilog="'gaterpc bench --help' describes the echo benchmark.")
    parser.add_argument("--version", action="version", version=f"gaterpc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    b = sub.add_parser("broker", help="run a broker, or a Gate with --gate",
                       description="Run a broker (AMajordomo), or a Gate when --gate is given, "
                                   "until SIGTERM/SIGINT.")
    b.add_argument("--frontend", required=True, metavar="ADDR", help="client-facing address, e.g. tcp://127.0.0.1:5555")
    b.add_argument("--backend", required=True, metavar="ADDR", help="worker-facing address, e.g. ipc:///run/gaterpc/backend")
    b.add_argument("--identity", metavar="NAME", help="broker/gate identity (peers name it in --connect-gate)")
    b.add_argument("--heartbeat", type=int, metavar="MS", help="heartbeat interval in milliseconds")
    b.add_argument("--gate", type=int, metavar="PORT", help="run a Gate whose gate socket binds this TCP port")
    b.add_argument("--gate-bind", metavar="ADDR", help="interface address of the gate socket (default all)")
    b.add_argument("--multicast", action=argparse.BooleanOptionalAction, default=False,
                   help="find peer gates by UDP multicast (default: off)")
    b.add_argument("--multicast-interface", metavar="IF", help="IPv4 address of the multicast interface")
    b.add_argument("--cluster", metavar="NAME", help="gate cluster name")
    b.add_argument("--connect-gate", action="append", metavar="ID=ADDR",
                   help="connect to the peer gate whose --identity is ID at ADDR (tcp://HOST:PORT); repeatable")
    b.add_argument("--zap-plain", metavar="FILE",
                   help="authenticate clients and workers with PLAIN users from FILE ('user:password' lines)")
    b.add_argument("--zap-addr", metavar="ADDR",
                   help="address of the in-process ZAP service (default inproc://gaterpc-zap-<pid>)")
    _add_sched(b)
    _add_common(b)
    _add_metrics(b)

    w = sub.add_parser("worker", help="serve a Worker subclass",
                       description="Import MODULE:CLASS (the current directory is on sys.path) and serve "
                                   "it until SIGTERM/SIGINT, then finish the requests in flight.")
    w.add_argument("worker_class", metavar="MODULE:CLASS")
    w.add_argument("--backend", required=True, metavar="ADDR", help="the broker's backend address")
    w.add_argument("--service", metavar="NAME", help="service name (default: the class name)")
    w.add_argument("--description", metavar="TEXT", help="service description")
    w.add_argument("--grace", type=float, default=DEFAULT_GRACE, metavar="SECONDS",
                   help=f"time to finish requests in flight after SIGTERM (default {DEFAULT_GRACE:g})")
    w.add_argument("--heartbeat", type=int, metavar="MS", help="heartbeat interval in milliseconds")
    w.add_argument("--max-requests", type=int, metavar="N", help="requests in flight at most (capacity)")
    w.add_argument("--plain", metavar="USER:PASSWORD", help="PLAIN ZAP credentials")
    _add_sched(w)
    _add_common(w)
    _add_metrics(w)

    c = sub.add_parser("call", help="call a method and print the result as JSON",
                       description="Call SERVICE.METHOD on the broker at ADDR. Each ARG and VALUE is JSON "
                                   "when it parses as JSON, else a string. Exit status: 0 ok, 1 remote "
                                   "error, 2 usage error, 3 timeout or broker unreachable.")
    c.add_argument("addr", metavar="ADDR", help="the broker's frontend address")
    c.add_argument("target", metavar="SERVICE.METHOD")
    c.add_argument("args", nargs="*", metavar="ARG")
    c.add_argument("-k", "--kwarg", dest="kwargs", action="append", metavar="NAME=VALUE",
                   help="keyword argument; repeatable")
    c.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="give up after this long (default 10); for a stream, per item")
    c.add_argument("--plain", metavar="USER:PASSWORD", help="PLAIN ZAP credentials")
    _add_common(c, logs=False)

    i = sub.add_parser("info", help="list a broker's services",
                       description="Services of the broker at ADDR, from its internal service.")
    i.add_argument("addr", metavar="ADDR", help="the broker's frontend address")
    i.add_argument("--json", action="store_true", help='one JSON object: {"services": {"NAME": {"workers": N, ...}}, ...}')
    i.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="give up after this long (default 10)")
    i.add_argument("--plain", metavar="USER:PASSWORD", help="PLAIN ZAP credentials")
    _add_common(i, logs=False)

    sub.add_parser("bench", help="benchmarks: the echo benchmark ('gaterpc bench --help'), 'gaterpc bench "
                                 "soak' (churn and memory), 'fuzz' (endpoint fuzzing), 'hugedata' (HugeData "
                                 "transfers), 'codec' (HugeData codecs in-process), 'speedups' (compiled "
                                 "twins against pure)",
                   add_help=False)
    return parser


_RUNNERS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {"broker": _run_broker, "worker": _run_worker, "call": _run_call, "info": _run_info}


# ``gaterpc bench NAME ...`` runs ``gaterpc.bench.<module>.main(rest of the arguments)``.
_BENCH_MODULES = {"soak": "soak", "fuzz": "fuzz", "hugedata": "hugedata", "codec": "hugedata_codec",
                  "speedups": "speedups"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "bench":
        if len(args) > 1 and args[1] in _BENCH_MODULES:
            import importlib

            bench_module = importlib.import_module(f"gaterpc.bench.{_BENCH_MODULES[args[1]]}")
            return int(bench_module.main(args[2:]) or 0)
        from gaterpc.bench.echo import main as bench_main

        return bench_main(args[1:], prog="gaterpc bench")
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if ns.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        _apply_sched(ns)  # first: before --settings, logging or any Context
        if ns.command in ("call", "info"):
            _setup(ns, default_level="WARNING")
        else:
            _setup(ns)
            if ns.sched is not None:
                logger.info("CPU scheduling policy: %s", ns.sched)
        return asyncio.run(_RUNNERS[ns.command](ns))
    except UsageError as exc:
        _err(f"{ns.command}: {exc}")
        return EXIT_USAGE
    except OSError as exc:  # e.g. an address already in use (zmq.ZMQError is an OSError)
        _err(f"{ns.command}: {exc}")
        return EXIT_REMOTE
    except KeyboardInterrupt:
        return 130
