"""Soak benchmark: many calls with clients and workers coming and going.

Run it as ``python -m gaterpc.bench.soak`` (``--help`` lists the options).
The default is 1,000,000 echo calls, 1,000 in flight, with 1,000 client
churns and 200 worker churns spread evenly over the run:

* one broker process;
* ``--worker-hosts`` processes hosting ``--workers`` workers between them; a
  worker churn stops one worker (it says DISCONNECT) and starts a new one
  with a new identity, and every tenth churn kills a whole host process with
  SIGKILL (its workers vanish without a word, the broker expires them) and
  starts a new host;
* one client process running the calls through one client at a time; a
  client churn replaces it with a new client (new identity); every other
  churn closes the old client at once with its calls in flight (a vanished
  client, as far as the broker knows), the others let its calls finish.

Calls that fail because their worker or client went away count as errors
(they are expected); the run fails only on a deadline, a dead role, or
memory.  At every 10% of progress it prints every process's RSS; it exits
with status 1 when the broker's RSS after the warm-up (the first 10%) grows
by more than ``--max-growth`` (10%), 2 on a deadline or a failed role.

Processes talk over ipc:// in a temporary directory and are ended by pid.
The roles reuse the echo benchmark's (``gaterpc.bench.roles``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set

if TYPE_CHECKING:
    from gaterpc.bench.procs import Child
    from gaterpc.client import Client as ClientType
    from gaterpc.worker import Worker

__all__ = ("main", "build_parser")


def _rss_kib(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- roles

async def _role_main(role: str, cfg: Dict[str, Any]) -> None:
    from gaterpc.bench import roles
    from gaterpc.core import Client, Context, Service
    from gaterpc.global_settings import Settings

    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    Settings.HEARTBEAT = int(cfg["heartbeat"])
    roles.configure(cfg)
    ctx = Context()
    try:
        if role == "broker":
            broker = roles.start_broker(cfg, ctx)
            roles.emit({"ready": role, "pid": os.getpid()})
            await stop
            broker.stop()
        elif role == "workers":
            service = Service(name=roles.SERVICE, description="soak")
            cls = roles.AsyncEchoWorker
            workers: List[Worker] = []

            def start_one() -> None:
                w = service.create_worker(cls, cfg["back"], context=ctx)
                w.run()
                workers.append(w)

            for _ in range(int(cfg["per_host"])):
                start_one()
            roles.emit({"ready": role, "pid": os.getpid()})

            async def commands() -> None:
                while True:
                    line = await roles.read_line(loop)
                    if not line:
                        return
                    if line.strip() == "churn" and workers:
                        old = workers.pop(0)
                        old.stop()
                        start_one()
            cmd = loop.create_task(commands())
            await asyncio.wait({cmd, stop}, return_when=asyncio.FIRST_COMPLETED)
            cmd.cancel()
            for w in workers:
                w.stop()
        else:
            await _clients(cfg, ctx, loop, stop, roles, Client)
        await asyncio.sleep(0.05)
    finally:
        ctx.destroy(linger=0)


async def _clients(
    cfg: Dict[str, Any],
    ctx: Any,
    loop: asyncio.AbstractEventLoop,
    stop: asyncio.Future[None],
    roles: ModuleType,
    Client: type[ClientType],
) -> None:
    calls = int(cfg["calls"])
    window = max(1, min(int(cfg["window"]), calls))
    churns = int(cfg["client_churns"])
    deadline = time.monotonic() + float(cfg["timeout"])
    await roles.wait_service(ctx, cfg["front"], deadline)

    async def new_client() -> ClientType:
        c = Client(cfg["front"], context=ctx, reply_timeout=float(cfg["reply_timeout"]))
        await c.connect()
        return c

    state: Dict[str, Any] = {"next": 0, "done": 0, "errors": 0, "client": await new_client(), "first_errors": [],
             "kinds": {}, "first_of_kind": {}}
    roles.emit({"ready": "clients", "pid": os.getpid()})
    word = roles.WORD

    async def lane() -> None:
        while True:
            i = state["next"]
            if i >= calls or time.monotonic() > deadline:
                return
            state["next"] = i + 1
            try:
                reply = await state["client"].knock(roles.SERVICE, "echo", word, i)
                if list(reply) != [word, i]:
                    raise ValueError(f"call {i}: got {reply!r:.100}")
            except Exception as exc:  # noqa: BLE001 - counted and reported
                state["errors"] += 1
                kind = "closed client" if "client was closed" in str(exc) else type(exc).__name__
                if "ServiceUnAvailableError" in str(exc):
                    kind = "worker lost"
                text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                if kind not in state["kinds"]:
                    # the first error of each kind, so that a rare one is never hidden by the many
                    state["first_of_kind"][kind] = f"call {i}: {text}"
                state["kinds"][kind] = state["kinds"].get(kind, 0) + 1
                if len(state["first_errors"]) < 5:
                    state["first_errors"].append(text)
            state["done"] += 1

    async def churner() -> None:
        step = calls / (churns + 1)
        for k in range(1, churns + 1):
            while state["done"] < k * step:
                if state["next"] >= calls:
                    return
                await asyncio.sleep(0.005)
            old = state["client"]
            state["client"] = await new_client()
            if k % 2:
                old.close()  # at once, calls in flight: the broker sees a vanished client
            else:
                retiring.add(loop.create_task(retire(old)))

    retiring: Set[asyncio.Task[None]] = set()

    async def retire(old: ClientType) -> None:
        """Close ``old`` once its calls in flight are answered (bounded by the reply timeout)."""
        end = time.monotonic() + float(cfg["reply_timeout"])
        while old.replies and time.monotonic() < end:
            await asyncio.sleep(0.02)
        old.close()

    async def progress() -> None:
        while True:
            roles.emit({"progress": state["done"], "errors": state["errors"]})
            await asyncio.sleep(0.1)

    ticker = loop.create_task(progress())
    churn_task = loop.create_task(churner())
    t0 = time.monotonic()
    lanes: asyncio.Future[Any] = asyncio.gather(*(lane() for _ in range(window)))
    await asyncio.wait({lanes, stop}, return_when=asyncio.FIRST_COMPLETED)
    churn_task.cancel()
    ticker.cancel()
    for t in retiring:
        t.cancel()
    elapsed = time.monotonic() - t0
    roles.emit({"progress": state["done"], "errors": state["errors"]})
    roles.emit({"result": {"calls": state["done"], "errors": state["errors"], "time": elapsed,
                           "rate": state["done"] / elapsed if elapsed > 0 else None,
                           "first_errors": state["first_errors"], "error_kinds": state["kinds"],
                           "first_of_kind": state["first_of_kind"]}})
    state["client"].close()
    await asyncio.wait({stop}, timeout=float(cfg["timeout"]))


# --------------------------------------------------------------------------- harness

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaterpc bench soak", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1_000_000, help="echo calls in all (default 1,000,000)")
    p.add_argument("--window", type=int, default=1000, help="calls in flight (default 1000)")
    p.add_argument("--client-churns", type=int, default=1000, help="client replacements (default 1000)")
    p.add_argument("--worker-churns", type=int, default=200, help="worker replacements (default 200)")
    p.add_argument("--workers", type=int, default=4, help="workers at any time (default 4)")
    p.add_argument("--worker-hosts", type=int, default=2, help="processes hosting them (default 2)")
    p.add_argument("--heartbeat", type=int, default=1000, help="heartbeat of every role, ms (default 1000)")
    p.add_argument("--reply-timeout", type=float, default=30.0, help="client reply timeout, s (default 30)")
    p.add_argument("--max-growth", type=float, default=0.10,
                   help="allowed growth of the broker's RSS after the warm-up (default 0.10)")
    p.add_argument("--timeout", type=float, default=3600.0, help="deadline of the whole run, s (default 3600)")
    p.add_argument("--backend", choices=("compiled", "pure"), default="compiled",
                   help="our backend in the roles (default compiled)")
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    return p


def _start(role: str, cfg: Dict[str, Any], opts: argparse.Namespace, tmp: Path, n: int) -> Child:
    from gaterpc.bench.procs import Child, _package_root
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_package_root())
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("GATERPC_NO_EXTENSIONS", None)
    if opts.backend == "pure":
        env["GATERPC_NO_EXTENSIONS"] = "1"
    argv = [sys.executable, "-m", "gaterpc.bench.soak", "--role", role,
            "--config", json.dumps(cfg, separators=(",", ":"))]
    return Child(f"{role}-{n}", argv, env, str(tmp), tmp / f"{role}-{n}.log")


def run(opts: argparse.Namespace, out: Callable[[str], object] = print) -> int:
    from gaterpc.bench.procs import BenchError, stop_all

    if opts.calls < 10 or opts.window < 1 or opts.workers < 1 or opts.worker_hosts < 1:
        raise SystemExit("--calls must be >= 10; --window, --workers and --worker-hosts >= 1")
    hosts_n = min(opts.worker_hosts, opts.workers)
    deadline = time.monotonic() + opts.timeout
    children: List[Child] = []
    with tempfile.TemporaryDirectory(prefix="gaterpc-soak-") as tmp_s:
        tmp = Path(tmp_s)
        cfg = {"front": f"ipc://{tmp}/front", "back": f"ipc://{tmp}/back", "base_path": str(tmp / "base"),
               "window": opts.window, "calls": opts.calls, "client_churns": opts.client_churns,
               "heartbeat": opts.heartbeat, "reply_timeout": opts.reply_timeout,
               "timeout": opts.timeout, "interface": "async", "mode": "throughput"}
        counter = [0]

        def start(role: str, extra: Optional[Dict[str, Any]] = None) -> Child:
            counter[0] += 1
            child = _start(role, dict(cfg, **(extra or {})), opts, tmp, counter[0])
            children.append(child)
            child.expect("ready", min(deadline, time.monotonic() + 60), watch=children)
            return child

        try:
            broker = start("broker")
            per_host = [opts.workers // hosts_n + (1 if i < opts.workers % hosts_n else 0)
                        for i in range(hosts_n)]
            hosts = [start("workers", {"per_host": k}) for k in per_host]
            clients = start("clients")
            out(f"soak: {opts.calls} calls, window {opts.window}, {opts.client_churns} client churns, "
                f"{opts.worker_churns} worker churns, {opts.workers} workers in {hosts_n} processes")
            worker_step = opts.calls / (opts.worker_churns + 1)
            worker_churns = 0
            next_report = 1
            warm_rss: Optional[int] = None
            later: List[int] = []
            result: Optional[Dict[str, Any]] = None
            done = errors = 0
            t0 = time.monotonic()
            while result is None:
                if time.monotonic() > deadline:
                    raise BenchError(f"deadline: {done} of {opts.calls} calls after {opts.timeout:.0f} s")
                try:
                    msg = clients.lines.get(timeout=0.5)
                except queue.Empty:
                    for c in [broker, clients]:
                        if c.proc.poll() is not None:
                            raise BenchError(f"{c.role} exited with {c.proc.returncode}{c.log_tail()}")
                    continue
                if msg is None:
                    raise BenchError(f"the client process ended early{clients.log_tail()}")
                if "result" in msg:
                    result = msg["result"]
                    done, errors = result["calls"], result["errors"]
                elif "progress" in msg:
                    done, errors = msg["progress"], msg["errors"]
                else:
                    continue
                # worker churns, spread over the run
                while worker_churns < opts.worker_churns and done >= (worker_churns + 1) * worker_step:
                    worker_churns += 1
                    i = worker_churns % len(hosts)
                    if worker_churns % 10 == 0:
                        victim = hosts[i]
                        os.kill(victim.pid, signal.SIGKILL)
                        victim.reap(time.monotonic() + 5)
                        children.remove(victim)
                        hosts[i] = start("workers", {"per_host": per_host[i]})
                    else:
                        hosts[i].send("churn")
                # every 10%: the RSS of every process
                while next_report <= 10 and done >= opts.calls * next_report / 10:
                    procs = [("broker", broker), ("clients", clients)] + \
                            [(f"workers{i + 1}", h) for i, h in enumerate(hosts)]
                    rss = {name: _rss_kib(c.pid) for name, c in procs}
                    elapsed = time.monotonic() - t0
                    out(f"{next_report * 10:3d}%  calls {done}  errors {errors}  "
                        f"worker churns {worker_churns}  {done / max(elapsed, 1e-9):,.0f} calls/s  RSS KiB "
                        + "  ".join(f"{k}={v}" for k, v in rss.items()))
                    if next_report == 1:
                        warm_rss = rss["broker"]
                    elif rss["broker"] is not None:
                        later.append(rss["broker"])
                    next_report += 1
            out(f"done: {result['calls']} calls, {result['errors']} errors, {result['time']:.1f} s, "
                f"{result['rate'] or 0:,.0f} calls/s; client churns {opts.client_churns}, "
                f"worker churns {worker_churns}")
            if result.get("error_kinds"):
                out("errors by cause (expected with churn): "
                    + ", ".join(f"{k} {v}" for k, v in sorted(result["error_kinds"].items())))
            if result["first_errors"]:
                out("first errors: " + " | ".join(result["first_errors"]))
            for kind, text in sorted((result.get("first_of_kind") or {}).items()):
                out(f"first {kind}: {text}")
            if warm_rss and later:
                peak = max(later)
                growth = (peak - warm_rss) / warm_rss
                out(f"broker RSS after warm-up {warm_rss} KiB, peak later {peak} KiB ({growth * 100:+.1f}%)")
                if growth > opts.max_growth:
                    out(f"FAIL: the broker's RSS grew by more than {opts.max_growth * 100:.0f}%")
                    return 1
            return 0
        finally:
            stop_all(children)


def main(argv: Optional[Sequence[str]] = None) -> int:
    opts = build_parser().parse_args(argv)
    if opts.role:
        asyncio.run(_role_main(opts.role, json.loads(opts.config)))
        return 0
    from gaterpc.bench.procs import BenchError
    try:
        return run(opts)
    except BenchError as exc:
        print(f"soak failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
