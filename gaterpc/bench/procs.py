"""The role processes of the benchmarks: start, watch, measure and end them by pid.

A :class:`Child` is one role process started with its own process group; the
JSON lines it prints on stdout arrive in ``Child.lines``.  The harness reads
its CPU time (``/proc/<pid>/stat``), the time its threads waited for a core
(``/proc/<pid>/task/*/schedstat``) and RSS (``/proc/<pid>/status``) and ends
it with SIGTERM, then SIGKILL after a grace period (:func:`stop_all`).  Also
here: the endpoints of a run and the command line of each role of each
implementation (ours, the original 0.2.11, the raw asyncio and raw synchronous
baselines, the limit and the floor).
Used by the echo benchmark (``echo.py``) and the soak (``soak.py``).
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
from typing import Any, Callable, Iterable, Optional

from gaterpc.sched import set_policy, thread_policies

HERE = Path(__file__).resolve().parent
ROLES_FILE = HERE / "roles.py"
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


def _proc_wait(pid: int) -> float | None:
    """Seconds the threads of a live process have spent ready to run but waiting for a core
    (the second field of ``/proc/<pid>/task/<tid>/schedstat``, summed over the threads that
    exist now; None where the kernel does not keep these statistics)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total, seen = 0, False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
            seen = True
        except (OSError, ValueError, IndexError):  # ended meanwhile, or no schedstat
            continue
    return total / 1e9 if seen else None


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


def _load_prctl() -> Optional[Callable[..., int]]:
    """libc's prctl, looked up here (not in the forked child, where dlopen could deadlock)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _parent_death_signal() -> None:
    """In the child, before exec: get SIGTERM if the harness dies (PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGTERM))


def _preexec(sched: Optional[str]) -> Optional[Callable[[], None]]:
    """The child's set-up before exec: the parent-death signal, and the scheduling policy ``sched``
    (set there, before the role's ZeroMQ context starts its I/O threads, which inherit it)."""
    if sched is None:
        return _parent_death_signal if _PRCTL is not None else None

    def setup() -> None:
        _parent_death_signal()
        set_policy(sched)

    return setup


class Child:
    """A role process: JSON lines from its stdout arrive in ``self.lines``."""

    def __init__(self, role: str, argv: list[str], env: dict[str, str], cwd: str, log_path: Path,
                 sched: Optional[str] = None) -> None:
        self.role = role
        #: the scheduling policy asked for ("normal", "batch"; None: as the harness runs)
        self.sched = sched
        #: the policies the harness read from the child's threads (check_sched)
        self.sched_seen: set[str] = set()
        #: other threads than the main one may run under batch (unless ``--io-threads normal``: ZeroMQ's
        #: I/O threads of ours are put under SCHED_BATCH by the library itself)
        self.io_threads_batch = False
        self.log_path = log_path
        # decoded JSON lines; None once stdout is closed
        self.lines: queue.Queue[Optional[dict[str, Any]]] = queue.Queue()
        self.info: dict[str, Any] = {}
        self.exit_info: Optional[dict[str, Any]] = None
        self._log = open(log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                env=env, cwd=cwd, text=True, bufsize=1,
                start_new_session=True,  # its own process group: leftovers of a role can be swept
                preexec_fn=_preexec(sched),
            )
        except OSError:
            self._log.close()
            raise
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name=f"bench-{role}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
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

    def expect(self, key: str, deadline: float, on_other: Optional[Callable[[dict[str, Any]], object]] = None,
               watch: Iterable[Child] = ()) -> dict[str, Any]:
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
            if self.proc.stdin is not None:
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def check_sched(self) -> None:
        """Read the scheduling policy of every thread of the live child; BenchError if one is not
        the policy asked for.  What was read is kept in ``sched_seen``."""
        seen = thread_policies(self.pid)
        self.sched_seen.update(seen.values())
        if self.sched is None:
            return
        wrong = {tid: name for tid, name in seen.items()
                 if name != self.sched and not (self.io_threads_batch and tid != self.pid and name == "batch")}
        if wrong or not seen:
            detail = ", ".join(f"thread {tid}: {name}" for tid, name in sorted(wrong.items())) or "no thread read"
            raise BenchError(f"{self.role} (pid {self.pid}) was to run under the {self.sched} scheduling "
                             f"policy, but {detail}")

    def cpu(self) -> float | None:
        return _proc_cpu(self.pid)

    def waited(self) -> float | None:
        return _proc_wait(self.pid)

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
        if not self._reader.is_alive() and self.proc.stdout is not None:
            self.proc.stdout.close()
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
    """A TCP port of 127.0.0.1 free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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


def _base_env(opts: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("GATERPC_NO_EXTENSIONS", None)
    env["PYTHONUNBUFFERED"] = "1"
    if opts.backend == "pure":
        env["GATERPC_NO_EXTENSIONS"] = "1"
    return env


def _command(impl: str, role: str, cfg: dict[str, Any], opts: argparse.Namespace,
             tmp: Path) -> tuple[list[str], dict[str, str], str]:
    """argv, env and cwd of one role process of implementation ``impl``."""
    env = _base_env(opts)
    cfg_json = json.dumps(cfg, separators=(",", ":"))
    if impl == "ours":
        env["PYTHONPATH"] = str(_package_root())
        return [sys.executable, "-m", "gaterpc.bench.roles", role, cfg_json], env, str(tmp)
    if impl in ("raw", "raw-sync"):
        env["PYTHONPATH"] = str(_package_root())
        if impl == "raw-sync":  # the same program, its synchronous roles
            cfg_json = json.dumps(dict(cfg, sync=True, uvloop=False), separators=(",", ":"))
        return [sys.executable, "-m", "gaterpc.bench.raw", role, cfg_json], env, str(tmp)
    if impl in ("limit", "floor"):
        env["PYTHONPATH"] = str(_package_root())
        env.pop("GATERPC_NO_EXTENSIONS", None)  # the limit and the floor always use the compiled batch I/O
        if impl == "floor":  # the same program, broker and worker as Python loops
            cfg_json = json.dumps(dict(cfg, floor=True), separators=(",", ":"))
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


def _active_backend(opts: argparse.Namespace) -> str | None:
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
