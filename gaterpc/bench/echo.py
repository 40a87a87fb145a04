"""The echo benchmark: N calls of ``echo("hello world", i)`` through a broker.

Run it as ``gaterpc bench``, ``python -m gaterpc bench`` or
``python bench/echo.py``; ``--help`` lists the options.  The default is
100,000 calls, 1,000 in flight, client | broker | worker as three processes
over ipc.

Every role runs in a child process started here (``roles.py`` for gaterpc,
ours or the original 0.2.11; ``raw.py`` for the raw-pyzmq baseline).  A
child prints JSON lines on stdout: ``ready`` when serving, then the client
waits for ``go`` on stdin, runs the calls and prints its ``result``.  The
harness samples CPU time (``/proc/<pid>/stat``) of every child right before
``go`` and right after the result, and peak RSS (``VmHWM``) after the run,
then ends every child by pid (SIGTERM, SIGKILL after a grace period).

The exit status is non-zero when a run fails: an error, a reply that does
not equal what was sent, fewer replies than calls, or the deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ("main", "run_benchmark", "build_parser", "BenchError")

HERE = Path(__file__).resolve().parent
ROLES_FILE = HERE / "roles.py"
LAYOUTS = ("3proc", "2proc", "inproc", "gate")
# gate spill-over: one slow local worker behind gate A, four idle ones behind gate B
LAYOUTS = LAYOUTS + ("gate-spill",)
IMPLS = ("ours", "original", "raw", "limit")  # plus "direct"/"metrics": ours, run another way
LOOPS = ("asyncio", "uvloop")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
GRACE = 3.0


class BenchError(RuntimeError):
    """A benchmark run failed (start-up, deadline, or a child died)."""


# --------------------------------------------------------------------------- processes

def _proc_cpu(pid: int) -> float | None:
    """user+sys CPU seconds of a live process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _proc_status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _proc_hwm_kib(pid: int) -> int | None:
    return _proc_status_kib(pid, "VmHWM:")


def _load_prctl():
    """libc's prctl, looked up here (not in the forked child, where dlopen could deadlock)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _parent_death_signal():
    """In the child, before exec: get SIGTERM if the harness dies (PR_SET_PDEATHSIG)."""
    _PRCTL(1, int(signal.SIGTERM))


class Child:
    """A role process: JSON lines from its stdout arrive in ``self.lines``."""

    def __init__(self, role: str, argv: list[str], env: dict, cwd: str, log_path: Path):
        self.role = role
        self.log_path = log_path
        self.lines: queue.Queue = queue.Queue()
        self.info: dict = {}
        self.exit_info: dict | None = None
        self._log = open(log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                env=env, cwd=cwd, text=True, bufsize=1,
                start_new_session=True,  # its own process group: leftovers of a role can be swept
                preexec_fn=_parent_death_signal if _PRCTL is not None else None,
            )
        except OSError:
            self._log.close()
            raise
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name=f"bench-{role}-stdout", daemon=True)
        self._reader.start()

    def _read(self):
        try:
            for line in self.proc.stdout:
                line = line.strip()
                if not line:
                    continue
                try:
                    self.lines.put(json.loads(line))
                except ValueError:
                    self.lines.put({"noise": line[:500]})
        finally:
            self.lines.put(None)

    def expect(self, key: str, deadline: float, on_other=None, watch=()) -> dict:
        """Wait for a line containing ``key``; fails on EOF, at the deadline, or when a
        process in ``watch`` dies meanwhile."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.role}: no '{key}' line before the deadline{self.log_tail()}")
            try:
                msg = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                for other in watch:
                    if other is not self and other.proc.poll() is not None:
                        raise BenchError(f"{other.role} (pid {other.pid}) exited with status "
                                         f"{other.proc.returncode} while waiting for {self.role}'s "
                                         f"'{key}'{other.log_tail()}")
                continue
            if msg is None:
                self.proc.wait(timeout=GRACE)
                raise BenchError(f"{self.role} (pid {self.pid}) exited with status {self.proc.returncode} "
                                 f"before '{key}'{self.log_tail()}")
            if key in msg:
                return msg
            if "exit" in msg:
                self.exit_info = msg
            if "starting" in msg:
                self.info.update(msg)
            if on_other is not None:
                on_other(msg)

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def cpu(self) -> float | None:
        return _proc_cpu(self.pid)

    def rss_kib(self) -> int | None:
        return _proc_status_kib(self.pid, "VmRSS:")

    def hwm_kib(self) -> int | None:
        return _proc_hwm_kib(self.pid)

    def log_tail(self, limit: int = 2000) -> str:
        try:
            self._log.flush()
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        text = text.strip()
        return f"\n--- {self.role} stderr (tail) ---\n{text[-limit:]}" if text else ""

    def terminate(self) -> None:
        """Close stdin and send SIGTERM (the role stops cleanly on it)."""
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def reap(self, deadline: float) -> None:
        """Wait until ``deadline``, then SIGKILL; always reaps and collects the last lines."""
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=GRACE)
        # Processes the role itself forked (executor or manager processes) and left behind:
        # they are in the role's own process group, whose id is the role's pid.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._reader.join(timeout=GRACE)
        while True:
            try:
                msg = self.lines.get_nowait()
            except queue.Empty:
                break
            if msg and "exit" in msg:
                self.exit_info = msg
        self._log.close()


def stop_all(children: list[Child]) -> None:
    """End every child by its pid: SIGTERM to all, SIGKILL to those alive after the grace period."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + GRACE
    for child in children:
        child.reap(deadline)


# --------------------------------------------------------------------------- configuration

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _endpoints(transport: str, tmp: Path, tag: str) -> tuple[str, str]:
    if transport == "ipc":
        return f"ipc://{tmp}/{tag}-front", f"ipc://{tmp}/{tag}-back"
    if transport == "tcp":
        front = _free_port()
        back = _free_port()
        while back == front:
            back = _free_port()
        return f"tcp://127.0.0.1:{front}", f"tcp://127.0.0.1:{back}"
    if transport == "inproc":
        return f"inproc://{tag}-front", f"inproc://{tag}-back"
    raise ValueError(transport)


def _package_root() -> Path:
    import gaterpc
    return Path(gaterpc.__file__).resolve().parent.parent


def _base_env(opts) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("GATERPC_NO_EXTENSIONS", None)
    env["PYTHONUNBUFFERED"] = "1"
    if opts.backend == "pure":
        env["GATERPC_NO_EXTENSIONS"] = "1"
    return env


def _command(impl: str, role: str, cfg: dict, opts, tmp: Path) -> tuple[list[str], dict, str]:
    """argv, env and cwd of one role process of implementation ``impl``."""
    env = _base_env(opts)
    cfg_json = json.dumps(cfg, separators=(",", ":"))
    if impl == "ours":
        env["PYTHONPATH"] = str(_package_root())
        return [sys.executable, "-m", "gaterpc.bench.roles", role, cfg_json], env, str(tmp)
    if impl == "raw":
        env["PYTHONPATH"] = str(_package_root())
        return [sys.executable, "-m", "gaterpc.bench.raw", role, cfg_json], env, str(tmp)
    if impl == "limit":
        env["PYTHONPATH"] = str(_package_root())
        env.pop("GATERPC_NO_EXTENSIONS", None)  # the limit always uses the compiled batch I/O
        return [sys.executable, "-m", "gaterpc.bench.limit", role, cfg_json], env, str(tmp)
    if impl == "original":
        # A directory holding only the role script: the original never sees our package.
        role_dir = tmp / "original-roles"
        if not (role_dir / "roles.py").exists():
            role_dir.mkdir(exist_ok=True)
            shutil.copyfile(ROLES_FILE, role_dir / "roles.py")
        env["PYTHONPATH"] = str(role_dir)
        return [str(opts.original_python), str(role_dir / "roles.py"), role, cfg_json], env, str(role_dir)
    raise ValueError(impl)


def _active_backend(opts) -> str | None:
    """Which twins our roles load with this environment: "compiled", "pure" or "mixed".

    Asked of a separate interpreter with the roles' environment, so that the role
    script itself stays on the public API."""
    argv, env, cwd = _command("ours", "broker", {}, opts, Path(tempfile.gettempdir()))
    code = ("import importlib\n"
            "flags = []\n"
            "for name in ('zmqio', 'frames', 'reqtable', 'lru'):\n"
            "    try:\n"
            "        flags.append(bool(importlib.import_module('gaterpc._speedups.' + name).USE_C))\n"
            "    except Exception:\n"
            "        pass\n"
            "print('compiled' if flags and all(flags) else 'mixed' if any(flags) else 'pure')\n")
    try:
        out = subprocess.run([argv[0], "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# --------------------------------------------------------------------------- one run

def _progress_printer(total: int, label: str = ""):
    """Progress on stderr: a bar on a terminal, else one line per 10% (visible when piped)."""
    width = 30
    start = time.monotonic()
    tty = sys.stderr.isatty() and not os.environ.get("CI")
    state = {"tenth": 0}

    def show(msg):
        if "progress" not in msg:
            return
        done = int(msg["progress"])
        frac = min(1.0, done / max(1, total))
        rate = done / max(1e-9, time.monotonic() - start)
        if tty:
            bar = "#" * int(frac * width)
            sys.stderr.write(f"\r  [{bar:<{width}}] {frac * 100:5.1f}%  {done}/{total}  {rate:,.0f}/s ")
        else:
            tenth = int(frac * 10)
            if tenth <= state["tenth"]:
                return
            state["tenth"] = tenth
            sys.stderr.write(f"  {label}{tenth * 10:3d}%  {done:,}/{total:,}  {rate:,.0f}/s\n")
        sys.stderr.flush()

    def clear():
        if tty:
            sys.stderr.write("\r" + " " * (width + 50) + "\r")
            sys.stderr.flush()

    return show, clear


def run_once(impl: str, opts, run_index: int = 0) -> dict:
    """Start the roles of ``opts.layout`` for ``impl``, run the workload once, measure, stop."""
    tmp = Path(tempfile.mkdtemp(prefix="gaterpc-bench-"))
    deadline = time.monotonic() + opts.timeout
    transport = opts.transport
    front, back = _endpoints(transport, tmp, f"b{run_index}")
    label = f"{impl}/{'uvloop' if opts.uvloop else 'asyncio'} " if impl != "limit" else "limit "
    show, clear = _progress_printer(opts.n, label) if opts.progress else (None, None)
    workers = max(1, opts.workers)
    cfg = {
        "front": front, "back": back, "base_path": str(tmp / "base"), "n": opts.n,
        "window": opts.window, "payload": opts.payload, "interface": opts.interface,
        "mode": opts.mode, "workers": workers, "uvloop": opts.uvloop, "timeout": opts.timeout,
        "progress": show is not None, "settle": 0.3 if workers > 1 else 0.0,
        "queued": 1000 * workers if opts.mode == "hol" else 0,
        "metrics": getattr(opts, "metrics", None),
    }
    if opts.hwm is not None:
        cfg["hwm"] = opts.hwm
    if opts.inject_mismatch is not None:
        cfg["inject_mismatch"] = opts.inject_mismatch
    children: list[Child] = []

    layout = "3proc" if impl == "direct" else opts.layout
    real_impl = "ours" if impl in ("direct", "metrics") else impl
    if impl == "metrics":
        cfg["metrics"] = opts.metrics or 1.0
    if layout == "gate":
        ports = set()
        while len(ports) < 2:
            ports.add(_free_port())
        cfg["gate_a_port"], cfg["gate_b_port"] = sorted(ports)
        cfg["gate_b_front"], cfg["gate_a_back"] = _endpoints(transport, tmp, f"g{run_index}")

    def spawn(role: str, label: str) -> Child:
        argv, env, cwd = _command(real_impl, role, cfg, opts, tmp)
        child = Child(label, argv, env, cwd, tmp / f"{label}.log")
        children.append(child)
        return child

    nclients = max(1, getattr(opts, "clients", 1) or 1)
    try:
        if layout in ("3proc", "gate"):
            if layout == "gate":
                for role in ("gate-b", "gate-a"):
                    g = spawn(role, role)
                    g.info = g.expect("ready", deadline, watch=children)
            else:
                broker = spawn("broker", "broker")
                broker.info = broker.expect("ready", deadline, watch=children)
            for k in range(workers):
                w = spawn("worker", f"worker{k + 1}" if workers > 1 else "worker")
                w.info = w.expect("ready", deadline, watch=children)
            clients = []
            share, extra = divmod(opts.n, nclients)
            base_cfg = dict(cfg)
            for k in range(nclients):
                cfg["n"] = share + (1 if k < extra else 0)
                clients.append(spawn("client", f"client{k + 1}" if nclients > 1 else "client"))
            cfg.clear()
            cfg.update(base_cfg)
        elif layout == "2proc":
            server = spawn("server", "broker+worker")
            server.info = server.expect("ready", deadline, watch=children)
            clients = [spawn("client", "client")]
        else:
            clients = [spawn("all", "broker+worker+client")]
        for client in clients:
            client.info.update(client.expect("ready", deadline, watch=children))
        cpu0 = {c.pid: c.cpu() for c in children}
        rss0 = {c.pid: c.rss_kib() for c in children}
        t0 = time.monotonic()
        for client in clients:
            client.send("go")
        results = []
        try:
            for k, client in enumerate(clients):
                results.append(client.expect("result", deadline, on_other=show if k == 0 else None,
                                             watch=children)["result"])
            if show is not None:
                show({"progress": sum(int(r.get("completed") or 0) for r in results)})
        finally:
            if clear is not None:
                clear()
        wall = time.monotonic() - t0
        cpu1 = {c.pid: c.cpu() for c in children}
        rss1 = {c.pid: c.rss_kib() for c in children}
        hwm = {c.pid: c.hwm_kib() for c in children}
    finally:
        stop_all(children)
        shutil.rmtree(tmp, ignore_errors=True)

    result = results[0] if len(results) == 1 else _combine(results)
    processes = []
    cpu_total = 0.0
    for c in children:
        cpu = None if cpu0[c.pid] is None or cpu1[c.pid] is None else cpu1[c.pid] - cpu0[c.pid]
        cpu_total += cpu or 0.0
        processes.append({
            "role": c.role, "pid": c.pid, "cpu_s": cpu,
            "peak_rss_mib": None if hwm[c.pid] is None else round(hwm[c.pid] / 1024, 1),
            "rss_before_mib": None if rss0[c.pid] is None else round(rss0[c.pid] / 1024, 1),
            "rss_after_mib": None if rss1[c.pid] is None else round(rss1[c.pid] / 1024, 1),
            "loop": c.info.get("loop"), "impl": c.info.get("impl"), "version": c.info.get("version"),
        })
    completed = int(result.get("completed") or 0)
    queued = None
    if opts.mode == "queue":
        b = next((c for c in children if c.role in ("broker", "broker+worker")), None)
        if b is not None and rss0[b.pid] is not None and rss1[b.pid] is not None:
            grown = (rss1[b.pid] - rss0[b.pid]) * 1024
            queued = {"broker_rss_before_mib": round(rss0[b.pid] / 1024, 1),
                      "broker_rss_queued_mib": round(rss1[b.pid] / 1024, 1),
                      "bytes_per_queued_request": grown / completed if completed else None}
    ok = (result.get("errors") == 0 and result.get("mismatches") == 0 and completed == opts.n)
    return {
        "impl": impl, "ok": ok, "layout": layout, "transport": transport, "mode": opts.mode,
        "n": opts.n, "window": result.get("window"), "payload": opts.payload,
        "interface": opts.interface, "uvloop_requested": opts.uvloop,
        "loop": None if impl == "limit" else ("uvloop" if opts.uvloop else "asyncio"),
        "backend": opts.backend if impl == "ours" else None, "workers": workers,
        "calls_per_s": result.get("rate"), "time_send_all_s": result.get("time_send_all"),
        "time_first_item_s": result.get("time_first_item"),
        "time_total_s": result.get("time_total"), "wall_s": wall,
        "latency_p50_ms": _ms(result.get("latency_p50")), "latency_p99_ms": _ms(result.get("latency_p99")),
        "latency_p999_ms": _ms(result.get("latency_p999")), "latency_max_ms": _ms(result.get("latency_max")),
        "latency_mean_ms": _ms(result.get("latency_mean")),
        "completed": completed, "errors": result.get("errors"), "mismatches": result.get("mismatches"),
        "first_errors": result.get("first_errors") or [],
        "cpu_s_total": cpu_total, "clients": nclients, "queued": queued, "hol": result.get("hol"),
        # payload bytes moved per second, both directions (the echo returns what it got)
        "payload_mb_per_s": (completed * opts.payload * 2 / result["time_total"] / 1e6)
        if opts.payload and result.get("time_total") else None,
        "client_rates": result.get("client_rates"), "fairness": result.get("fairness"),
        "cpu_us_per_call": (cpu_total / completed * 1e6) if completed else None,
        "processes": processes,
    }


def _combine(results: list) -> dict:
    """One result for several clients: calls/s over the slowest client's time; fairness min/max rate."""
    rates = [r.get("rate") or 0.0 for r in results]
    completed = sum(int(r.get("completed") or 0) for r in results)
    total = max(r.get("time_total") or 0.0 for r in results)
    send_all = max(r.get("time_send_all") or 0.0 for r in results)

    def median(key):
        vals = sorted(r[key] for r in results if r.get(key) is not None)
        return vals[(len(vals) - 1) // 2] if vals else None

    return {
        "window": results[0].get("window"), "rate": completed / total if total else None,
        "time_send_all": send_all, "time_total": total, "completed": completed,
        "errors": sum(int(r.get("errors") or 0) for r in results),
        "mismatches": sum(int(r.get("mismatches") or 0) for r in results),
        "first_errors": [e for r in results for e in (r.get("first_errors") or [])][:5],
        # percentiles: the median over clients of each client's percentile
        "latency_p50": median("latency_p50"), "latency_p99": median("latency_p99"),
        "latency_p999": median("latency_p999"),
        "latency_max": max((r.get("latency_max") or 0.0) for r in results),
        "latency_mean": median("latency_mean"),
        "client_rates": rates,
        "fairness": (min(rates) / max(rates)) if rates and max(rates) else None,
    }


def _ms(seconds):
    return None if seconds is None else seconds * 1000.0


def _median_of(impl: str, runs: list, failure: str | None) -> dict:
    """The run with the median calls/s (all rates kept), or the failure."""
    if failure is not None:
        return {"impl": impl, "ok": False, "failure": failure, "runs": runs}
    ranked = sorted(runs, key=lambda x: x["calls_per_s"] or 0.0)
    chosen = dict(ranked[(len(ranked) - 1) // 2]) if all(r["ok"] for r in runs) else dict(runs[-1])
    chosen["ok"] = all(r["ok"] for r in runs)
    chosen["repeat"] = len(runs)
    chosen["calls_per_s_all"] = [r["calls_per_s"] for r in runs]
    return chosen


def run_repeated(impl: str, opts) -> dict:
    """``opts.repeat`` runs of one implementation; the one with the median calls/s is reported."""
    runs = []
    for r in range(opts.repeat):
        try:
            runs.append(run_once(impl, opts, r))
        except (BenchError, OSError) as exc:
            return _median_of(impl, runs, str(exc))
        if not runs[-1]["ok"]:
            break
    return _median_of(impl, runs, None)


def run_interleaved(plan: list, opts) -> list:
    """Run every ``(impl, loop)`` of ``plan`` once per repetition, in turn (A B C A B C ...).

    Interleaving spreads the machine's drift over every entry alike; each
    entry reports the run with its median calls/s."""
    import copy

    runs: dict = {key: [] for key in plan}
    failures: dict = {}
    for r in range(opts.repeat):
        for key in plan:
            if key in failures or (runs[key] and not runs[key][-1]["ok"]):
                continue
            impl, loop = key
            o = copy.copy(opts)
            o.uvloop = loop == "uvloop"
            try:
                runs[key].append(run_once(impl, o, r))
            except (BenchError, OSError) as exc:
                failures[key] = str(exc)
    out = []
    for key in plan:
        res = _median_of(key[0], runs[key], failures.get(key))
        res["loop"] = key[1]
        out.append(res)
    return out


# --------------------------------------------------------------------------- report

def _fmt(v, spec=",.0f", none="-"):
    return none if v is None else format(v, spec)


def run_gate_spill(opts) -> dict:
    """``--layout gate-spill``: calls/s of one slow local worker alone, then of the cluster.

    Gate A (its client and one slow worker of capacity 1) and gate B (four
    workers of the same speed) run in two processes; the client measures A
    with spilling off, then with ``gate.spill_after = 0`` (a request that
    finds A's worker busy goes to B at once when B has spare capacity)."""
    tmp = Path(tempfile.mkdtemp(prefix="gaterpc-bench-"))
    deadline = time.monotonic() + opts.timeout
    front, back = _endpoints(opts.transport, tmp, "s")
    b_front, a_back = _endpoints(opts.transport, tmp, "t")
    ports = set()
    while len(ports) < 2:
        ports.add(_free_port())
    port_a, port_b = sorted(ports)
    cfg = {"front": front, "back": back, "gate_b_front": b_front, "gate_a_back": a_back,
           "gate_a_port": port_a, "gate_b_port": port_b, "base_path": str(tmp / "base"),
           "n": opts.n, "window": max(opts.window, 16), "timeout": opts.timeout,
           "remote_workers": 4, "spill_after": 0.0, "uvloop": False, "mode": "calls"}
    children: list[Child] = []
    result: dict = {}
    failure = None
    try:
        for role in ("spill-b", "spill-a"):
            argv, env, cwd = _command("ours", role, cfg, opts, tmp)
            children.append(Child(role, argv, env, cwd, tmp / f"{role}.log"))
        children[0].expect("ready", deadline, watch=children)
        result = children[1].expect("result", deadline, watch=children)["result"]
    except Exception as exc:  # a role failed or timed out: report it
        failure = f"{exc}; log tail: {children[-1].log_tail() if children else ''}"
    finally:
        stop_all(children)
        shutil.rmtree(tmp, ignore_errors=True)
    local = result.get("local_calls_per_s")
    cluster = result.get("cluster_calls_per_s")
    ratio = cluster / local if local and cluster else None
    return {"gate_spill": True, "config": {"n": opts.n, "window": cfg["window"], "transport": opts.transport,
                                           "backend": opts.backend, "remote_workers": 4},
            "result": result, "ratio": ratio, "failure": failure,
            "ok": failure is None and result.get("errors") == 0}


def format_gate_spill(report: dict) -> str:
    cfg, res = report["config"], report["result"]
    out = [f"gaterpc gate spill-over benchmark: n={cfg['n']:,} window={cfg['window']} "
           f"transport={cfg['transport']} backend={cfg['backend']}: gate A with 1 slow worker "
           f"(capacity 1), gate B with {cfg['remote_workers']} like it"]
    if report.get("failure"):
        out.append(f"FAILED: {report['failure']}")
        return "\n".join(out)
    out.append(f"local worker alone (spilling off): {_fmt(res.get('local_calls_per_s'))} calls/s")
    out.append(f"cluster (gate.spill_after = 0):    {_fmt(res.get('cluster_calls_per_s'))} calls/s, "
               f"{res.get('spilled', 0):,} calls spilled to gate B, {res.get('errors')} errors")
    out.append(f"cluster / local: {_fmt(report.get('ratio'), '.2f')}x")
    return "\n".join(out)


def format_report(report: dict) -> str:
    if report.get("gate_spill"):
        return format_gate_spill(report)
    out = []
    cfg = report["config"]
    out.append(f"gaterpc echo benchmark: mode={cfg['mode']} n={cfg['n']:,} window={cfg['window']} "
               f"layout={cfg['layout']} transport={cfg['transport']} payload={cfg['payload']} "
               f"interface={cfg['interface']} loop={cfg['loop']} backend={cfg['backend']}"
               f"{'' if cfg.get('backend_active') in (None, cfg['backend']) else ' (active: ' + cfg['backend_active'] + ')'} "
               f"workers={cfg['workers']} clients={cfg.get('clients', 1)} repeat={cfg['repeat']}")
    rate_name = "items/s" if cfg["mode"] == "stream" else "calls/s"
    header = (f"{'impl':<9} {'loop':<8} {rate_name:>9} {'send all s':>10} {'total s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'p99.9 ms':>9} {'CPU us/call':>11} {'status':>8}")
    out.append(header)
    out.append("-" * len(header))
    for res in report["results"]:
        loop = res.get("loop") or "-"
        if res.get("skipped"):
            out.append(f"{res['impl']:<9} {loop:<8} {res['failure']}")
            continue
        if "failure" in res and "calls_per_s" not in res:
            out.append(f"{res['impl']:<9} {loop:<8} FAILED: {res['failure'].splitlines()[0]}")
            continue
        status = "ok" if res["ok"] else "FAILED"
        out.append(
            f"{res['impl']:<9} {loop:<8} {_fmt(res['calls_per_s']):>9} {_fmt(res['time_send_all_s'], '.3f'):>10} "
            f"{_fmt(res['time_total_s'], '.3f'):>8} {_fmt(res['latency_p50_ms'], '.3f'):>8} "
            f"{_fmt(res['latency_p99_ms'], '.3f'):>8} {_fmt(res['latency_p999_ms'], '.3f'):>9} "
            f"{_fmt(res['cpu_us_per_call'], ',.0f'):>11} {status:>8}")
    for res in report["results"]:
        h = res.get("hol")
        if h:
            out.append(f"{res['impl']:<9} {res.get('loop') or '-':<8} echo p50 {_fmt(_ms(h['p50_unloaded']), '.3f')} ms "
                       f"unloaded, {_fmt(_ms(h['p50_loaded']), '.3f')} ms with {h['queued_slow_calls']:,} slow "
                       f"calls queued for another service: {_fmt(h['ratio'], '.2f')}x")
        q = res.get("queued")
        if q:
            out.append(f"{res['impl']:<9} {res.get('loop') or '-':<8} broker RSS {q['broker_rss_before_mib']} MiB "
                       f"-> {q['broker_rss_queued_mib']} MiB with {res['completed']:,} requests queued: "
                       f"{_fmt(q['bytes_per_queued_request'], ',.0f')} bytes per queued request")
        if res.get("payload_mb_per_s") is not None:
            out.append(f"{res['impl']:<9} {res.get('loop') or '-':<8} payload MB/s (both directions) "
                       f"{res['payload_mb_per_s']:,.1f}")
        if res.get("fairness") is not None:
            rates = ", ".join(f"{r:,.0f}" for r in res.get("client_rates") or [])
            out.append(f"{res['impl']:<9} {res.get('loop') or '-':<8} fairness (slowest/fastest client) "
                       f"{res['fairness']:.2f}; per client calls/s: {rates}")
    out.append("")
    out.append(f"{'impl':<9} {'process':<22} {'CPU s':>7} {'CPU us/call':>11} {'peak RSS MiB':>12}  loop")
    for res in report["results"]:
        done = res.get("completed") or 0
        for p in res.get("processes", []):
            per_call = p["cpu_s"] / done * 1e6 if done and p.get("cpu_s") is not None else None
            out.append(f"{res['impl']:<9} {p['role']:<22} {_fmt(p['cpu_s'], '.2f'):>7} "
                       f"{_fmt(per_call, ',.1f'):>11} {_fmt(p['peak_rss_mib'], '.1f'):>12}  {p.get('loop') or '-'}")
    for res in report["results"]:
        if not res.get("ok"):
            detail = res.get("failure") or "; ".join(res.get("first_errors") or []) or (
                f"completed {res.get('completed')} of {res.get('n')}")
            out.append(f"\n{res['impl']} FAILED: {detail}")
    for res in report["results"]:
        want = res.get("loop")
        seen = {p.get("loop") for p in res.get("processes", []) if p.get("loop")}
        if want and seen and not all(want in (s or "") for s in seen):
            out.append(f"\nwarning: {res['impl']} asked for {want} but ran on {', '.join(sorted(seen))}")
    if report.get("ratios"):
        out.append("")
        out.append("ratios (like for like: same event loop, same run):")
        for name, value in report["ratios"].items():
            if isinstance(value, str):
                text = value
            elif "% of" in name:
                text = f"{value * 100:.0f}%"
            else:
                text = f"{value:.2f}x"
            out.append(f"  {name}: {text}")
    return "\n".join(out)


# --------------------------------------------------------------------------- entry points

def build_parser(prog: str = "gaterpc bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Echo benchmark: N calls of echo('hello world', i) through a gaterpc broker.")
    p.add_argument("-n", type=int, default=None,
                   help="number of calls (stream: items); default 100000 (latency mode: 10000)")
    p.add_argument("--window", type=int, default=1000, help="calls in flight (default 1000)")
    p.add_argument("--payload", type=int, default=0, metavar="BYTES",
                   help="add a payload string of that many bytes to each call")
    p.add_argument("--interface", choices=("async", "sync"), default="async",
                   help="the worker's echo is 'async def' or plain 'def'")
    p.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default=None,
                   help="event loop of every role (ours, original and raw alike); 'both' runs each "
                        "implementation on each loop and compares like with like (default: uvloop "
                        "when installed)")
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=None,
                   help="same as --loop uvloop / --loop asyncio")
    p.add_argument("--backend", choices=("compiled", "pure"), default="compiled",
                   help="pure: GATERPC_NO_EXTENSIONS=1 in the role processes")
    p.add_argument("--workers", type=int, default=1, metavar="K", help="number of workers (processes in 3proc)")
    p.add_argument("--clients", type=int, default=1, metavar="M",
                   help="number of client processes (3proc layout); -n is split among them and the "
                        "report adds fairness = slowest client's calls/s over the fastest's")
    p.add_argument("--layout", choices=LAYOUTS, default="3proc",
                   help="3proc: client | broker | worker; 2proc: client | broker+worker; inproc: one process")
    p.add_argument("--transport", choices=("ipc", "tcp", "inproc"), default="ipc",
                   help="ipc (default), tcp on 127.0.0.1, or inproc (inproc layout only)")
    p.add_argument("--mode", choices=("throughput", "latency", "stream", "queue", "hol"), default="throughput",
                   help="queue: -n calls to one worker with one unit of capacity that holds it, so all "
                        "but one wait in the broker; reports the broker's RSS and bytes per queued request. "
                        "hol: sequential echo p50 unloaded, then with 1,000 slow calls per worker queued "
                        "for another service on the same broker (head-of-line blocking check)")
    p.add_argument("--hwm", type=int, default=None, metavar="N",
                   help="ZeroMQ high-water mark of gaterpc's sockets (Settings.ZMQ_SOCK; 0 = unlimited); "
                        "default: the library's, raised for windows above 1,500. The raw baseline's "
                        "sockets are always unlimited")
    p.add_argument("--impl", choices=IMPLS, default="ours",
                   help="what to measure: our gaterpc, the original 0.2.11, or the raw-pyzmq baseline")
    p.add_argument("--vs-original", action="store_true", help="also run the original gaterpc 0.2.11")
    p.add_argument("--vs-raw", action="store_true", help="also run the raw-pyzmq baseline")
    p.add_argument("--vs-direct", action="store_true",
                   help="with --layout gate: also run ours directly (client | broker | worker) in the same "
                        "run, for the forwarded/direct ratio")
    p.add_argument("--vs-limit", action="store_true",
                   help="also run the limit row: the same three processes as libzmq loops doing no RPC "
                        "work (C proxy broker, C reflector worker, compiled batch-I/O client)")
    p.add_argument("--metrics", type=float, default=None, metavar="S",
                   help="ours: every role serves its metrics on 127.0.0.1 and is scraped every S seconds "
                        "(the cost of metrics, to compare with a run without)")
    p.add_argument("--vs-metrics", action="store_true",
                   help="also run ours with metrics served and scraped (every --metrics S seconds, default "
                        "1), in the same run: the cost of metrics as a ratio")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--repeat", type=int, default=1, metavar="R", help="report the median of R runs")
    p.add_argument("--timeout", type=float, default=180.0, metavar="S", help="deadline of each run (s)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (there is none anyway when stderr is not a terminal)")
    # Test hook (raw baseline only): the worker answers call number I with a wrong value.
    p.add_argument("--inject-mismatch", type=int, default=None, metavar="I", help=argparse.SUPPRESS)
    return p


def _resolve(opts, parser) -> None:
    if opts.n is None:
        opts.n = 10_000 if opts.mode == "latency" else 100_000
    if opts.layout == "gate" and (opts.impl != "ours" or opts.vs_original or opts.vs_raw or opts.vs_limit):
        parser.error("--layout gate runs our roles only (add --vs-direct for the direct comparison)")
    if opts.vs_direct and opts.layout != "gate":
        parser.error("--vs-direct goes with --layout gate")
    if opts.clients > 1 and opts.layout not in ("3proc", "gate"):
        parser.error("--clients needs --layout 3proc")
    if opts.n < 1 or opts.window < 1 or opts.repeat < 1 or opts.workers < 1 or opts.payload < 0 \
            or opts.clients < 1:
        parser.error("-n, --window, --repeat and --workers must be positive, --payload non-negative")
    if opts.timeout <= 0:
        parser.error("--timeout must be positive")
    if opts.transport == "inproc" and opts.layout != "inproc":
        parser.error("--transport inproc needs --layout inproc")
    if opts.mode in ("latency", "stream", "hol"):
        opts.window = 1
    if opts.mode in ("queue", "hol") and (opts.layout != "3proc" or opts.impl != "ours" or opts.vs_original
                                 or opts.vs_raw or opts.vs_limit):
        parser.error("--mode queue and --mode hol run our roles only, in the 3proc layout")
    if opts.loop is None and opts.uvloop is not None:
        opts.loop = "uvloop" if opts.uvloop else "asyncio"
    if opts.loop is None:
        try:
            import uvloop  # noqa: F401
            opts.loop = "uvloop"
        except ImportError:
            opts.loop = "asyncio"
    opts.uvloop = opts.loop == "uvloop"
    if (opts.vs_limit or opts.impl == "limit") and (opts.layout != "3proc" or opts.mode == "stream"):
        parser.error("the limit row needs --layout 3proc and a throughput or latency mode")
    opts.original_python = None


def run_benchmark(opts) -> dict:
    """Run the selected implementation and the comparisons; return the report dict.

    Every (implementation, loop) pair runs ``--repeat`` times, interleaved;
    ratios are computed only between runs on the same event loop."""
    if opts.layout == "gate-spill":
        return run_gate_spill(opts)
    impls = [opts.impl]
    for flag, name in ((opts.vs_original, "original"), (opts.vs_raw, "raw"), (opts.vs_limit, "limit"),
                       (opts.vs_direct, "direct"), (opts.vs_metrics, "metrics")):
        if flag and name not in impls:
            impls.append(name)
    loops = list(LOOPS) if opts.loop == "both" else [opts.loop]
    results = []
    ratios = {}
    active = _active_backend(opts) if "ours" in impls else None
    plan = []
    for impl in impls:
        if impl == "original":
            if opts.mode == "stream" and impl != opts.impl:
                results.append({"impl": impl, "ok": True, "skipped": True,
                                "failure": "n/a: the original cannot stream to its client"})
                ratios[f"{opts.impl} / original"] = "n/a (the original cannot stream to its client)"
                continue
            from gaterpc.bench.origenv import OriginalEnvError, ensure_original_env
            try:
                opts.original_python = ensure_original_env()
            except OriginalEnvError as exc:
                results.append({"impl": impl, "ok": False, "failure": str(exc)})
                continue
        if impl == "limit":
            plan.append((impl, None))
        else:
            plan.extend((impl, loop) for loop in loops)
    results.extend(run_interleaved(plan, opts))
    for res in results:
        if res["impl"] == "ours":
            res["backend_active"] = active
    by_key = {(r["impl"], r.get("loop")): r for r in results}
    base_impl = opts.impl
    limit = by_key.get(("limit", None))
    for loop in loops:
        base = by_key.get((base_impl, loop))
        if base is None or base_impl == "limit":
            continue
        for impl in impls:
            if impl in (base_impl, "limit"):
                continue
            other = by_key.get((impl, loop))
            if other is None or other.get("skipped"):
                continue
            name = f"{base_impl} / {impl} on {loop} (calls/s)"
            if base.get("calls_per_s") and other.get("calls_per_s"):
                ratios[name] = base["calls_per_s"] / other["calls_per_s"]
            else:
                ratios[name] = "n/a (a run failed)"
        if limit is not None:
            name = f"{base_impl} on {loop} as % of the limit (calls/s)"
            if base.get("calls_per_s") and limit.get("calls_per_s"):
                ratios[name] = base["calls_per_s"] / limit["calls_per_s"]
            else:
                ratios[name] = "n/a (a run failed)"
    config = {k: getattr(opts, k) for k in ("n", "window", "payload", "interface", "loop", "backend",
                                             "metrics", "workers", "clients", "layout", "transport", "mode", "repeat", "timeout")}
    config["uvloop"] = opts.loop
    config["python"] = sys.version.split()[0]
    config["backend_active"] = active
    return {"config": config, "results": results, "ratios": ratios,
            "ok": all(r.get("ok") for r in results)}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, prog: str = "gaterpc bench") -> int:
    parser = build_parser(prog)
    opts = parser.parse_args(argv)
    _resolve(opts, parser)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so that the children are ended and the temp dir removed.
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_benchmark(opts)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(format_report(report))
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(prog="python -m gaterpc.bench.echo"))
