"""Roles of the echo benchmark: broker, worker, client, and combinations.

Usage (one role per process)::

    python roles.py ROLE CONFIG_JSON

``ROLE`` is ``broker``, ``worker``, ``client``, ``server`` (broker and the
workers in one process) or ``all`` (broker, workers and client in one
process).  ``CONFIG_JSON`` is the configuration written by the harness
(``gaterpc.bench.echo``).

This file is deliberately self-contained and written against the public API
only (``gaterpc.core``, ``gaterpc.utils``, ``gaterpc.global_settings``): the
harness runs the very same file with the original gaterpc's interpreter
(from a copy in a temporary directory, so that our package is never on its
``sys.path``) and with ours.

Protocol with the harness, one JSON object per line on stdout:

* ``{"ready": ROLE, ...}`` once the role is serving (the client: once the
  service is registered and it is connected);
* the client (and ``all``) then waits for one line on stdin (``go``) before
  it starts the measured run, optionally prints ``{"progress": done}``
  lines, and finally prints ``{"result": {...}}``;
* every role ends on SIGTERM/SIGINT (or when stdin closes for the client),
  printing ``{"exit": ROLE, "rusage": {...}}``.

Logs go to stderr (warnings and errors only).

Annotations are for the type checker only (``from __future__ import
annotations``; the names of our package they use are imported under
``TYPE_CHECKING``), so the original's interpreter never evaluates them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator, Optional

import gaterpc
from gaterpc.core import AMajordomo, Client, Context, Service, Worker
from gaterpc.global_settings import Settings
from gaterpc.utils import interface

if TYPE_CHECKING:
    from gaterpc.core import Gate
    from gaterpc.metrics import MetricsServer

SERVICE = "EchoBench"
SLOW_SERVICE = "SlowBench"
WORD = "hello world"

QUIET_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING",
                            "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {
        "gaterpc": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
        "asyncio": {"level": "ERROR", "handlers": ["stderr"], "propagate": False},
        "multiprocessing": {"level": "ERROR", "handlers": ["stderr"], "propagate": False},
        "commands": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
    },
}


class AsyncEchoWorker(Worker):
    @interface
    async def echo(self, *args: Any) -> tuple[Any, ...]:
        return args

    @interface
    async def gen(self, n: int, payload: Optional[str] = None) -> AsyncIterator[Any]:
        if payload is None:
            for i in range(n):
                yield i
        else:
            for i in range(n):
                yield [i, payload]


    @interface
    async def hold(self, i: int) -> int:
        """Queue mode: occupy the worker's only capacity unit (until the harness ends us)."""
        await asyncio.sleep(3600)
        return i


class SyncEchoWorker(Worker):
    @interface
    def echo(self, *args: Any) -> tuple[Any, ...]:
        return args

    @interface
    def gen(self, n: int, payload: Optional[str] = None) -> Iterator[Any]:
        if payload is None:
            yield from range(n)
        else:
            for i in range(n):
                yield [i, payload]


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def implementation() -> str:
    """``"ours"`` when the imported gaterpc has our compiled-backend package, else ``"original"``."""
    return "ours" if importlib.util.find_spec("gaterpc._speedups") is not None else "original"


def rusage() -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"utime": ru.ru_utime, "stime": ru.ru_stime, "maxrss_kib": ru.ru_maxrss}


def configure(cfg: dict[str, Any]) -> None:
    """Settings for every role; must run inside the main coroutine (setup() needs the loop)."""
    Settings.configure("BASE_PATH", Path(cfg["base_path"]))
    Settings.WORKER_ADDR = cfg["back"]
    Settings.MESSAGE_MAX = max(5000, 2 * int(cfg["window"]) + 10)
    if cfg["mode"] in ("queue", "hol"):
        # Every request waits at the broker: let it queue them all, for the whole run.
        Settings.MESSAGE_MAX = int(cfg["n"]) + int(cfg.get("queued", 0)) + 10
        Settings.TIMEOUT = float(cfg["timeout"])
    # A ROUTER drops what exceeds its high-water mark: raise it for large windows, or
    # set it as asked (0 = unlimited); otherwise keep the library's default.
    hwm = cfg.get("hwm")
    if hwm is None and 2 * int(cfg["window"]) + 10 > 3000:
        hwm = 2 * int(cfg["window"]) + 10
    if hwm is not None:
        import zmq
        Settings.ZMQ_SOCK.update({zmq.constants.SocketOption.HWM: int(hwm)})
    io_threads = cfg.get("io_threads") or "default"
    if io_threads != "default" and implementation() == "ours":
        # The policy of ZeroMQ's I/O threads (a setting of ours; the original has none).
        setattr(Settings, "ZMQ_IO_THREAD_BATCH", {"normal": False, "batch": True, "auto": "auto"}[io_threads])
    Settings.configure("LOGGING", QUIET_LOGGING)
    Settings.setup()


def start_broker(cfg: dict[str, Any], ctx: Context) -> AMajordomo:
    broker = AMajordomo(context=ctx)
    broker.bind_backend(cfg["back"])
    broker.bind_frontend(cfg["front"])
    broker.run()
    return broker


def start_gate(cfg: dict[str, Any], ctx: Context, name: str) -> Gate:
    """Gate layout: ``gate-a`` (the clients' frontend) or ``gate-b`` (the workers' backend)."""
    from gaterpc.core import Gate  # ours only: the gate layout is not run for the original

    mine, other = ("a", "b") if name == "gate-a" else ("b", "a")
    gate = Gate(int(cfg[f"gate_{mine}_port"]), identity=f"bench-gate-{mine}", context=ctx,
                multicast=False, gate_bind="127.0.0.1")
    gate.bind_frontend(cfg["front"] if mine == "a" else cfg["gate_b_front"])
    gate.bind_backend(cfg["back"] if mine == "b" else cfg["gate_a_back"])
    gate.run()
    return gate


async def join_gate(gate: Gate, cfg: dict[str, Any], name: str) -> None:
    from gaterpc.utils import name2uuid

    other = "b" if name == "gate-a" else "a"
    await gate.connect_gate(name2uuid(f"bench-gate-{other}").bytes, f"tcp://127.0.0.1:{cfg[f'gate_{other}_port']}")


def start_workers(cfg: dict[str, Any], ctx: Context, count: int) -> list[Worker]:
    cls: type[Worker] = SyncEchoWorker if cfg["interface"] == "sync" or cfg["mode"] == "queue" else AsyncEchoWorker
    if cfg["mode"] == "queue":
        cls = AsyncEchoWorker
    service = Service(name=SERVICE, description="echo benchmark")
    workers: list[Worker] = []
    capacity = 1 if cfg["mode"] == "queue" else None
    if cfg["mode"] == "hol":
        # A second service on the same broker, each of its workers held by one slow call.
        slow = Service(name=SLOW_SERVICE, description="slow calls")
        for _ in range(count):
            held = slow.create_worker(AsyncEchoWorker, cfg["back"], context=ctx, max_allowed_request=1)
            held.run()
            workers.append(held)
    for _ in range(count):
        worker = service.create_worker(cls, cfg["back"], context=ctx, max_allowed_request=capacity)
        worker.run()
        workers.append(worker)
    return workers


def percentile(sorted_values: list[float], q: float) -> Optional[float]:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


async def wait_service(ctx: Context, front: str, deadline: float) -> list[str]:
    """Poll the broker's service list until SERVICE appears (bounded by ``deadline``)."""
    while True:
        probe = Client(front, context=ctx, reply_timeout=2.0)
        try:
            await probe.connect()
            for _ in range(1000):
                services: list[str] = await probe.knock("Gate", "get_services")
                if SERVICE in services:
                    return services
                if time.monotonic() > deadline:
                    raise RuntimeError(f"service {SERVICE} not registered; the broker lists {services}")
                await asyncio.sleep(0.05)
        except (TimeoutError, asyncio.TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError("the broker did not answer get_services in time") from None
        finally:
            probe.close()
            await asyncio.sleep(0.05)


def start_metrics(cfg: dict[str, Any], *roles: Any) -> Optional[MetricsServer]:
    """``--metrics S`` (ours only): serve the roles' metrics on 127.0.0.1 and scrape every S seconds,
    as an operator's Prometheus would, so that the run pays the whole cost of metrics."""
    if not cfg.get("metrics") or implementation() != "ours":
        return None
    import atexit
    import subprocess

    from gaterpc import metrics

    server = metrics.start_metrics_server("127.0.0.1:0", roles)
    # The scraper is another process, as an operator's Prometheus is: the role
    # pays for answering each scrape, not for being its HTTP client as well.
    scraper = subprocess.Popen([sys.executable, "-c", _SCRAPER, server.url, str(float(cfg["metrics"])),
                                str(os.getpid())], stdin=subprocess.DEVNULL)

    def stop_scraper() -> None:
        scraper.kill()
        scraper.wait(timeout=10)

    atexit.register(stop_scraper)
    return server


#: Scrape URL every PERIOD seconds while the process PARENT lives (a day at most).
_SCRAPER = """
import os, sys, time, urllib.request
url, period, parent = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 86400
while time.monotonic() < deadline:
    time.sleep(period)
    try:
        os.kill(parent, 0)
    except OSError:
        break
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            resp.read()
    except OSError:
        pass
"""


async def read_line(loop: asyncio.AbstractEventLoop) -> str:
    return await loop.run_in_executor(None, sys.stdin.readline)


def stream_index(item: Any, payload: Optional[str]) -> Optional[int]:
    """The index carried by a stream item (``i`` or ``[i, payload]``), or None if malformed."""
    if payload is None:
        return item if isinstance(item, int) and not isinstance(item, bool) else None
    if isinstance(item, (list, tuple)) and len(item) == 2 and item[1] == payload and isinstance(item[0], int):
        return item[0]
    return None


class Recorder:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.errors = 0
        self.mismatches = 0
        self.done = 0
        self.samples: list[float] = []
        self.first_errors: list[str] = []

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(text)

    def mismatch(self, i: int, got: Any, expected: Any) -> None:
        self.mismatches += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"call {i}: got {got!r:.200} expected {expected!r:.200}")


async def run_calls(cfg: dict[str, Any], cli: Client, rec: Recorder, deadline: float) -> dict[str, Any]:
    """Throughput / latency mode: ``n`` echo calls, ``window`` in flight."""
    n = int(cfg["n"])
    window = 1 if cfg["mode"] == "latency" else max(1, min(int(cfg["window"]), n))
    payload = "x" * int(cfg["payload"]) if cfg["payload"] else None
    knock = cli.knock
    perf = time.perf_counter
    samples = rec.samples
    state: dict[str, Any] = {"next": 0, "sent_all": None}
    t_start = perf()

    async def lane() -> None:
        while True:
            i = state["next"]
            if i >= n:
                return
            state["next"] = i + 1
            if i == n - 1:
                state["sent_all"] = perf() - t_start
            if payload is None:
                expected = [WORD, i]
                t0 = perf()
                try:
                    reply = await knock(SERVICE, "echo", WORD, i)
                except Exception as exc:
                    rec.error(f"call {i}: {type(exc).__name__}: {exc}")
                    continue
            else:
                expected = [WORD, i, payload]
                t0 = perf()
                try:
                    reply = await knock(SERVICE, "echo", WORD, i, payload)
                except Exception as exc:
                    rec.error(f"call {i}: {type(exc).__name__}: {exc}")
                    continue
            samples.append(perf() - t0)
            rec.done += 1
            if reply != expected and not (isinstance(reply, (list, tuple)) and list(reply) == expected):
                rec.mismatch(i, reply, expected)
            if perf() > deadline:
                rec.error(f"deadline reached after {rec.done} calls")
                state["next"] = n

    await asyncio.gather(*(lane() for _ in range(window)))
    total = perf() - t_start
    return {"calls": n, "window": window, "time_send_all": state["sent_all"], "time_total": total,
            "rate": rec.done / total if total > 0 else None}


async def run_stream(cfg: dict[str, Any], cli: Client, rec: Recorder, deadline: float) -> dict[str, Any]:
    """Stream mode: one call whose reply is a generator of ``n`` items."""
    n = int(cfg["n"])
    payload = "x" * int(cfg["payload"]) if cfg["payload"] else None
    perf = time.perf_counter
    t_start = perf()
    first = None
    try:
        if payload is None:
            stream = await cli.knock(SERVICE, "gen", n)
        else:
            stream = await cli.knock(SERVICE, "gen", n, payload)
        first = perf() - t_start
        i = 0
        expected_index = 0
        async for item in stream:
            # Items must arrive in order, each exactly once: a gap (lost items) or a
            # reordering counts one mismatch and resynchronises on the item received.
            index = stream_index(item, payload)
            if index != expected_index:
                rec.mismatch(i, item, expected_index if payload is None else [expected_index, payload])
            expected_index = (index if index is not None else expected_index) + 1
            i += 1
            rec.done = i
            if i > n:
                rec.error("more items than requested")
                break
            if (i & 1023) == 0 and perf() > deadline:
                rec.error(f"deadline reached after {i} items")
                break
        if i < n:
            rec.error(f"stream ended after {i} of {n} items")
    except Exception as exc:
        rec.error(f"stream: {type(exc).__name__}: {exc}")
    total = perf() - t_start
    return {"calls": n, "window": 1, "time_first_item": first, "time_send_all": None,
            "time_total": total, "rate": rec.done / total if total > 0 else None}


async def run_queue(cfg: dict[str, Any], cli: Client, rec: Recorder, deadline: float) -> dict[str, Any]:
    """Queue mode: ``n`` calls to a worker with one unit of capacity that holds it: every call
    but the first waits in the broker.  Reports once all are sent and have had time to arrive."""
    n = int(cfg["n"])
    perf = time.perf_counter
    t_start = perf()
    loop = asyncio.get_running_loop()
    calls: list[asyncio.Task[Any]] = []
    for i in range(n):
        calls.append(loop.create_task(cli.knock(SERVICE, "hold", i)))
        if (i & 1023) == 1023:
            await asyncio.sleep(0)  # let the client's socket move what is queued
        rec.done = i + 1
    sent_all = perf() - t_start
    await asyncio.sleep(float(cfg.get("queue_settle", 2.0)))
    setattr(cli, "_bench_pending", calls)  # kept alive until the harness ends the process
    return {"calls": n, "window": n, "time_send_all": sent_all, "time_total": perf() - t_start,
            "rate": n / sent_all if sent_all > 0 else None}


async def run_hol(cfg: dict[str, Any], cli: Client, rec: Recorder, deadline: float) -> dict[str, Any]:
    """Head-of-line mode: sequential echo latency, unloaded, then with ``queued`` slow calls
    waiting for the slow service on the same broker.  Reports both p50s."""
    n = int(cfg["n"])
    perf = time.perf_counter
    loop = asyncio.get_running_loop()

    async def sequential(count: int) -> list[float]:
        samples: list[float] = []
        for i in range(count):
            t0 = perf()
            try:
                reply = await cli.knock(SERVICE, "echo", WORD, i)
            except Exception as exc:
                rec.error(f"call {i}: {type(exc).__name__}: {exc}")
                continue
            samples.append(perf() - t0)
            if list(reply) != [WORD, i]:
                rec.mismatch(i, reply, [WORD, i])
            rec.done += 1
            if perf() > deadline:
                rec.error("deadline reached")
                break
        samples.sort()
        return samples

    t_start = perf()
    unloaded = await sequential(n // 2)
    held = [loop.create_task(cli.knock(SLOW_SERVICE, "hold", i)) for i in range(int(cfg["queued"]))]
    await asyncio.sleep(1.0)  # let them reach the broker and queue
    loaded = await sequential(n - n // 2)
    setattr(cli, "_bench_pending", held)
    rec.samples.extend(loaded)
    total = perf() - t_start
    p_unloaded = percentile(unloaded, 0.5)
    p_loaded = percentile(loaded, 0.5)
    return {"calls": n, "window": 1, "time_send_all": None, "time_total": total,
            "rate": rec.done / total if total > 0 else None,
            "hol": {"queued_slow_calls": len(held), "p50_unloaded": p_unloaded, "p50_loaded": p_loaded,
                    "ratio": (p_loaded / p_unloaded) if p_unloaded and p_loaded else None}}


async def progress_task(rec: Recorder, n: int) -> None:
    while True:
        await asyncio.sleep(0.2)
        emit({"progress": rec.done, "of": n})


async def client_phase(cfg: dict[str, Any], ctx: Context,
                       loop: asyncio.AbstractEventLoop) -> Optional[dict[str, Any]]:
    deadline = time.monotonic() + float(cfg["timeout"])
    await wait_service(ctx, cfg["front"], deadline)
    cli = Client(cfg["front"], context=ctx, reply_timeout=float(cfg["timeout"]))
    await cli.connect()
    start_metrics(cfg, cli)
    # One warm-up call (not measured), also proves the service answers.
    warm = await cli.knock(SERVICE, "echo", WORD, -1)
    if list(warm) != [WORD, -1]:
        raise RuntimeError(f"warm-up echo returned {warm!r}")
    if cfg.get("settle"):
        await asyncio.sleep(float(cfg["settle"]))
    emit({"ready": "client", "impl": implementation(), "version": getattr(gaterpc, "__version__", None)})
    line = await read_line(loop)
    if line.strip() != "go":
        cli.close()
        return None
    rec = Recorder(cfg)
    ticker = loop.create_task(progress_task(rec, int(cfg["n"]))) if cfg.get("progress") else None
    ru0 = rusage()
    run_deadline = time.perf_counter() + float(cfg["timeout"])
    if cfg["mode"] == "stream":
        result = await run_stream(cfg, cli, rec, run_deadline)
    elif cfg["mode"] == "queue":
        result = await run_queue(cfg, cli, rec, run_deadline)
    elif cfg["mode"] == "hol":
        result = await run_hol(cfg, cli, rec, run_deadline)
    else:
        result = await run_calls(cfg, cli, rec, run_deadline)
    ru1 = rusage()
    if ticker is not None:
        ticker.cancel()
    samples = sorted(rec.samples)
    result.update(
        completed=rec.done, errors=rec.errors, mismatches=rec.mismatches, first_errors=rec.first_errors,
        latency_p50=percentile(samples, 0.50), latency_p99=percentile(samples, 0.99),
        latency_p999=percentile(samples, 0.999), latency_max=samples[-1] if samples else None,
        latency_mean=(sum(samples) / len(samples)) if samples else None,
        client_cpu=(ru1["utime"] + ru1["stime"]) - (ru0["utime"] + ru0["stime"]),
    )
    emit({"result": result})
    cli.close()
    return result


def stop_on_signals(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """A future that SIGTERM or SIGINT resolves."""
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    return stop


async def main(role: str, cfg: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    stop = stop_on_signals(loop)
    configure(cfg)
    ctx = Context()
    broker: Optional[AMajordomo] = None
    workers: list[Worker] = []
    try:
        if role in ("broker", "server", "all"):
            broker = start_broker(cfg, ctx)
        if role in ("gate-a", "gate-b"):
            gate = start_gate(cfg, ctx, role)
            broker = gate
            await join_gate(gate, cfg, role)
        if role in ("worker", "server", "all"):
            workers = start_workers(cfg, ctx, int(cfg["workers"]) if role != "worker" else 1)
        start_metrics(cfg, *([broker] if broker is not None else []), *workers)
        await asyncio.sleep(0.05)
        info = {"impl": implementation(), "version": getattr(gaterpc, "__version__", None),
                "loop": type(loop).__module__ + "." + type(loop).__name__, "pid": os.getpid()}
        if role in ("client", "all"):
            emit(dict(info, starting=role))
            client = loop.create_task(client_phase(cfg, ctx, loop))
            waiting: set[asyncio.Future[Any]] = {client, stop}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if client.done():
                client.result()  # re-raise a failure of the client phase
                # Done: wait (bounded) for the harness to read the CPU figures and end us.
                await asyncio.wait({stop}, timeout=float(cfg["timeout"]))
            else:
                client.cancel()
        else:
            emit(dict(info, ready=role))
            await stop
    finally:
        for worker in workers:
            worker.stop()
        if broker is not None:
            broker.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)
        emit({"exit": role, "rusage": rusage()})


# --------------------------------------------------------------------------- gate spill-over layout
# ``gaterpc bench --layout gate-spill`` (ours only): gate A with one slow local
# worker and the client, gate B with four idle workers of the same speed.  The
# client measures A's local worker alone (spilling off), then the cluster
# (A spills requests it cannot serve at once to B).


class SlowEchoWorker(Worker):
    @interface
    async def echo(self, *args: Any) -> tuple[Any, ...]:
        await asyncio.sleep(SPILL_WORK_S)
        return args


SPILL_WORK_S = 0.005


def start_spill_gate(cfg: dict[str, Any], ctx: Context, name: str) -> tuple[Gate, list[Worker]]:
    from gaterpc.core import Gate

    mine = "a" if name == "spill-a" else "b"
    gate = Gate(int(cfg[f"gate_{mine}_port"]), identity=f"bench-gate-{mine}", context=ctx,
                multicast=False, gate_bind="127.0.0.1")
    gate.bind_frontend(cfg["front"] if mine == "a" else cfg["gate_b_front"])
    gate.bind_backend(cfg["gate_a_back"] if mine == "a" else cfg["back"])
    gate.run()
    service = Service(name=SERVICE, description="echo benchmark (slow)")
    workers: list[Worker] = []
    for _ in range(1 if mine == "a" else int(cfg["remote_workers"])):
        w = service.create_worker(SlowEchoWorker, cfg["gate_a_back"] if mine == "a" else cfg["back"],
                                  context=ctx, max_allowed_request=1)
        w.run()
        workers.append(w)
    return gate, workers


async def spill_phase(cli: Client, n: int, window: int, deadline: float) -> tuple[float, int]:
    """``n`` echo calls, ``window`` at a time; returns (calls/s, errors)."""
    sem = asyncio.Semaphore(window)
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        async with sem:
            try:
                got = await cli.knock(SERVICE, "echo", WORD, i)
                if list(got) != [WORD, i]:
                    errors += 1
            except Exception:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), deadline - time.monotonic())
    return n / (time.perf_counter() - t0), errors


async def spill_main(role: str, cfg: dict[str, Any]) -> None:
    from gaterpc.counters import events_snapshot
    from gaterpc.utils import name2uuid

    loop = asyncio.get_running_loop()
    stop = stop_on_signals(loop)
    configure(cfg)
    ctx = Context()
    gate, workers = start_spill_gate(cfg, ctx, role)
    try:
        other = "b" if role == "spill-a" else "a"
        await gate.connect_gate(name2uuid(f"bench-gate-{other}").bytes,
                                f"tcp://127.0.0.1:{cfg[f'gate_{other}_port']}")
        if role == "spill-b":
            emit({"ready": role, "pid": os.getpid()})
            await stop
            return
        deadline = time.monotonic() + float(cfg["timeout"])
        await gate.wait_for_service(SERVICE, timeout=float(cfg["timeout"]))
        while SERVICE not in gate.gate_cluster.services:  # B's workers are known
            if time.monotonic() > deadline:
                raise RuntimeError("gate B's workers never became known")
            await asyncio.sleep(0.05)
        cli = Client(cfg["front"], context=ctx, reply_timeout=float(cfg["timeout"]))
        await cli.connect()
        n, window = int(cfg["n"]), int(cfg["window"])
        gate.spill_after = float("inf")  # local worker alone
        local, err_local = await spill_phase(cli, max(50, n // 5), window, deadline)
        gate.spill_after = float(cfg["spill_after"])
        before = events_snapshot().get("gate_spilled", 0)
        cluster, err_cluster = await spill_phase(cli, n, window, deadline)
        spilled = events_snapshot().get("gate_spilled", 0) - before
        cli.close()
        emit({"result": {"local_calls_per_s": local, "cluster_calls_per_s": cluster,
                         "spilled": spilled, "errors": err_local + err_cluster}})
        await asyncio.wait({stop}, timeout=float(cfg["timeout"]))
    finally:
        for w in workers:
            w.stop()
        gate.stop()
        await asyncio.sleep(0.05)
        ctx.destroy(linger=0)


def run(argv: list[str]) -> None:
    role, cfg = argv[0], json.loads(argv[1])
    if role in ("spill-a", "spill-b"):
        asyncio.run(spill_main(role, cfg))
        return
    if cfg.get("uvloop"):
        try:
            import uvloop
        except ImportError:
            # Never run on another loop than asked: ratios compare like with like.
            raise SystemExit("uvloop was asked for but is not installed in this environment")
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main(role, cfg))


if __name__ == "__main__":
    run(sys.argv[1:])
