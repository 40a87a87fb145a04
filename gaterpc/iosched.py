"""Adaptive scheduling policy of ZeroMQ's I/O threads (``Settings.ZMQ_IO_THREAD_BATCH = "auto"``).

A libzmq I/O thread sleeps between messages and is woken by each message a
socket hands it.  Under Linux's default policy the woken thread preempts the
thread that sent, usually the event loop on the same core, in the middle of
its burst.  On an idle host that is what keeps a single call fast.  On a host
with more busy processes than cores it costs two context switches and a cold
cache for most messages, and the CPU per call grows by a quarter or more.
``SCHED_BATCH`` I/O threads do not preempt: the loop finishes its burst and
the I/O thread moves it in one go, at the price of some latency per hop on an
idle host (``gaterpc.base.io_thread_policy``).

Auto mode picks per process, from what the kernel says of the process's own
threads (``/proc/self/task/*/schedstat``).  Once a window (``INTERVAL``) it
compares the time they spent runnable but waiting for a core with the time
they ran (the I/O threads included: measuring the loop alone would see its
own effect, since batch I/O threads stop preempting it, and flap).  A process
whose threads wait at least 0.6 times as long as they run (``ENTER``) shares
its cores with more work than they can take: its I/O threads go to
``SCHED_BATCH``.  After ``CALM`` windows in a row below ``LEAVE`` (0.5), or
quiet (running and waiting together under ``BUSY`` of the window; a thread
starved of cores runs little but waits long, which is contention, not
quiet), they return to the default policy.  The starting point of the
first window is sampled when the controller starts, so a process that gets
busy is judged at the end of its first busy window (within 0.1 s of the
load), not its second.  Measured on
two 2-core VMs: 8 clients and 4 workers through one broker wait 2 to 5
times as long as they run; one client, broker and worker at full speed
(1,000 calls in flight) 0.7 to 1.3 times, the client least (all three gain
from batch I/O threads: 1.08x the calls/s on uvloop with ``ENTER`` at 0.6
instead of 1.0, where the client stayed under the default policy); 10 or
50 calls in flight gain too, in latency as well; one call at a time 0.1 to
0.4 times, which keeps the default policy and its lower latency.  Only the
I/O threads of gaterpc's own contexts are touched: they carry the name
prefix ``PREFIX``.

Cost: one daemon thread per process that wakes ten times a second and reads
the process's CPU time (one system call); unless the process was idle since
(``IDLE``), or its I/O threads are under batch, it also reads a few small
files under ``/proc`` (about 40 µs, 0.04% of a core).  Nothing on the path
of a message.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from typing import Any, Optional

logger = logging.getLogger("gaterpc")

__all__ = ("PREFIX", "Controller", "decide", "watch", "controller")

#: ``ZMQ_THREAD_NAME_PREFIX`` of gaterpc's contexts in auto mode: their I/O threads are
#: named ``"<PREFIX>/ZMQbg/IO/<n>"`` (``ps -L``, ``top -H``), which tells them from the
#: threads of other contexts in the same process.
PREFIX = 4207
_IO_NAME = f"{PREFIX}/ZMQbg/IO/"

#: seconds between two samples
INTERVAL = 0.1
#: a window counts as quiet when the measured threads ran and waited for less than this
#: share of it together
BUSY = 0.05
#: under the default policy /proc is not read after a window in which the process's CPU
#: time grew by less than this share of it (an idle process costs a system call a window)
IDLE = 0.01

#: to SCHED_BATCH when waiting / running >= ENTER (busy windows only); back below LEAVE
ENTER = 0.6
LEAVE = 0.5
#: back to the default policy after this many windows in a row below LEAVE (or quiet)
CALM = 3


def decide(batch: bool, ran_ns: int, waited_ns: int, window_ns: int) -> bool:
    """The policy for the next window: True for ``SCHED_BATCH``.

    ``batch``: the policy now; ``ran_ns``/``waited_ns``: the time the measured threads
    ran and waited for a core during a window of ``window_ns``.
    """
    if window_ns <= 0 or ran_ns + waited_ns < BUSY * window_ns:
        return False  # quiet: latency matters more than CPU per call
    # (a thread starved of cores ran little and waited long: that is contention, not quiet)
    ratio = waited_ns / max(ran_ns, 1)
    if batch:
        return ratio >= LEAVE
    return ratio >= ENTER


def _tids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except (OSError, ValueError):
        return []


def _name(tid: int) -> Optional[str]:
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:  # ended meanwhile
        return None


def _schedstat(tid: int) -> Optional[tuple[int, int]]:
    """(ns run, ns waited on a run queue) of one thread of this process, None if gone."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            ran, waited, _ = f.read().split()
        return int(ran), int(waited)
    except (OSError, ValueError):
        return None


class Controller:
    """The per-process thread that moves gaterpc's I/O threads between the two policies."""

    def __init__(self, batch_policy: int) -> None:
        self.batch_policy = batch_policy
        self.batch = False
        #: how many times the policy changed (both ways), for tests and the curious
        self.switches = 0
        self.pid = os.getpid()
        self._contexts: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._stop = threading.Event()
        # I/O thread id -> policy last given to it (-1: found under another policy, left alone)
        self._applied: dict[int, int] = {}
        self._calm = 0  # windows in a row that asked to leave SCHED_BATCH
        self._names: dict[int, str] = {}  # thread id -> name, of ZeroMQ's threads
        self._thread: Optional[threading.Thread] = None
        #: the thread has ended or is ending: ``watch`` starts a new controller
        self.done = False

    def add(self, ctx: Any) -> None:
        self._contexts.add(ctx)

    def alive(self) -> bool:
        return any(not getattr(c, "closed", True) for c in list(self._contexts))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gaterpc-iosched", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def names(self) -> dict[int, str]:
        """Thread id -> name, for every thread of this process.

        The name of a ZeroMQ thread is read once (libzmq names its threads once,
        just after they start with their creator's name); others at every call.
        """
        names: dict[int, str] = {}
        for tid in _tids():
            name = self._names.get(tid)
            if name is None:
                name = _name(tid)
                if name is None:
                    continue
                if "ZMQbg/" in name:
                    self._names[tid] = name
            names[tid] = name
        for tid in [t for t in self._names if t not in names]:
            del self._names[tid]
        return names

    def apply(self, batch: bool, names: Optional[dict[int, str]] = None) -> None:
        """Give every I/O thread of gaterpc's contexts the policy (new ones included).

        Only threads found under the default policy are moved, and only back to it:
        a policy somebody else chose (``gaterpc broker --sched batch``, a real-time
        one) is left alone.
        """
        policy = self.batch_policy if batch else os.SCHED_OTHER
        threads = self.names() if names is None else names
        for tid in [t for t in self._applied if t not in threads]:
            del self._applied[tid]
        for tid, name in threads.items():
            if not name.startswith(_IO_NAME):
                continue
            now = self._applied.get(tid)
            if now is None:
                try:
                    if os.sched_getscheduler(tid) != os.SCHED_OTHER:
                        self._applied[tid] = -1  # not ours to change
                        continue
                except OSError:  # ended meanwhile
                    continue
                now = os.SCHED_OTHER
            if now == policy or now == -1:
                continue
            try:
                os.sched_setscheduler(tid, policy, os.sched_param(0))
            except OSError as exc:  # ended meanwhile, or refused: leave it as it is
                logger.debug("cannot set the scheduling policy of thread %d: %s", tid, exc)
            self._applied[tid] = policy
        self.batch = batch

    def sample(self) -> tuple[int, dict[int, tuple[int, int]], dict[int, str]]:
        """(now in ns, {thread id: (ran, waited)}, {thread id: name}); measured are the
        threads of the process but ZeroMQ's reaper and this controller's own."""
        me = threading.get_native_id()
        names = self.names()
        stats: dict[int, tuple[int, int]] = {}
        for tid, name in names.items():
            if tid == me or "ZMQbg/Reap" in name:
                continue
            st = _schedstat(tid)
            if st is not None:
                stats[tid] = st
        return time.monotonic_ns(), stats, names

    def step(self, before: tuple[int, dict[int, tuple[int, int]], dict[int, str]],
             after: tuple[int, dict[int, tuple[int, int]], dict[int, str]],
             active_ns: Optional[int] = None) -> None:
        """Decide from two samples and apply what changed.

        ``active_ns``: the part of the time between the samples in which the process
        was not idle (the rest were idle windows, which add nothing to either sum).
        """
        ran = waited = 0
        for tid, (r1, w1) in after[1].items():
            r0, w0 = before[1].get(tid, (r1, w1))
            ran += r1 - r0
            waited += w1 - w0
        window = after[0] - before[0]
        if active_ns is not None:
            window = min(window, active_ns)
        self._settle(decide(self.batch, ran, waited, window), after[2], ran, waited, window)

    def _settle(self, batch: bool, names: Optional[dict[int, str]], ran: int, waited: int,
                window: int) -> None:
        if self.batch and not batch:
            self._calm += 1
            batch = self._calm < CALM  # leave after CALM calm windows in a row
        else:
            self._calm = 0
        if batch != self.batch:
            self.switches += 1
            logger.debug("ZeroMQ I/O threads to %s (ran %.0f%%, waited %.0f%% of %.2f s)",
                         "SCHED_BATCH" if batch else "the default policy",
                         100 * ran / max(window, 1), 100 * waited / max(window, 1), window / 1e9)
            self.apply(batch, names)
        elif batch and names is not None:
            self.apply(True, names)  # I/O threads started since (a new context) follow

    def _run(self) -> None:
        # Under the default policy, the process's CPU time (every thread, one cheap system
        # call) tells an idle window, and /proc is read only when the process ran.  Under
        # batch every window is sampled: a process starved of cores runs little, and only
        # its waiting tells that from quiet.  Idle windows add nothing to what a
        # sample counts, so a sample taken before them still serves as the start of
        # the window that follows them.
        # The starting point of the first busy window is taken now, so that a process
        # that gets busy is judged at the end of its first busy window, not its second.
        try:
            before: Optional[tuple[int, dict[int, tuple[int, int]], dict[int, str]]] = self.sample()
        except Exception:
            before = None
        t0, cpu0 = time.monotonic_ns(), time.process_time_ns()
        active = 0  # ns of not-idle windows since ``before``
        while not self._stop.wait(INTERVAL):
            with _lock:  # watch() either sees done, or adds its context before this check
                if not self.alive():
                    self.done = True
                    break
            try:
                t1, cpu1 = time.monotonic_ns(), time.process_time_ns()
                idle = cpu1 - cpu0 < IDLE * (t1 - t0)
                tick = t1 - t0
                t0, cpu0 = t1, cpu1
                if idle and not self.batch:
                    continue
                active += tick
                after = self.sample()
                if before is not None:
                    self.step(before, after, active)
                before, active = after, 0
            except Exception:  # never take the process down for a scheduling hint
                logger.debug("I/O thread policy step failed", exc_info=True)
        if self.batch:
            try:
                self.apply(False)
            except Exception:
                pass
        self.done = True


_lock = threading.Lock()
_controller: Optional[Controller] = None


def controller() -> Optional[Controller]:
    """This process's controller, if auto mode started one."""
    c = _controller
    return c if c is not None and c.pid == os.getpid() else None


def watch(ctx: Any, batch_policy: Optional[int]) -> bool:
    """Put ``ctx`` (a context of ours, named with ``PREFIX``) under auto mode; start the
    controller of this process if it is not running.  False where it cannot work
    (not Linux, no ``SCHED_BATCH``, no ``/proc/self/task/*/schedstat``)."""
    global _controller
    if batch_policy is None or not sys.platform.startswith("linux"):
        return False
    if _schedstat(threading.get_native_id()) is None:
        return False
    with _lock:
        c = _controller
        if c is None or c.pid != os.getpid() or c.done or not c.running():
            c = Controller(batch_policy)  # a forked child starts its own
            _controller = c
            c.add(ctx)
            c.start()
        else:
            c.add(ctx)
    return True


def _after_fork_in_child() -> None:
    # The controller's thread is not in the child, and it may have held the lock.
    global _lock, _controller
    _lock = threading.Lock()
    _controller = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
