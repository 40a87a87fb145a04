"""``Settings.ZMQ_IO_THREAD_BATCH``: the I/O threads of gaterpc's contexts under SCHED_BATCH (Linux):
always (True), never (False), or while the process waits for cores ("auto", the default)."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from typing import Iterator, Optional

import pytest
import zmq

from gaterpc import iosched
from gaterpc.base import Context, io_thread_policy, set_ctx
from gaterpc.global_settings import Settings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or io_thread_policy() is None,
                                reason="SCHED_BATCH for a thread: Linux, where the system allows it")


def _policies() -> dict[int, tuple[str, int]]:
    """Thread id -> (name, scheduling policy), for every thread of this process."""
    out: dict[int, tuple[str, int]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        out[int(tid)] = (name, int(stat.rsplit(")", 1)[1].split()[38]))  # field 41 of stat: policy
    return out


def _new_threads_policies(batch: Optional[bool]) -> tuple[list[int], int]:
    """Policies of the threads a context starts with its first socket, and the caller's policy.

    ``batch``: ``Settings.ZMQ_IO_THREAD_BATCH`` for that context (None: as it is).
    """
    before = set(_policies())
    had, old = "ZMQ_IO_THREAD_BATCH" in vars(Settings), Settings.ZMQ_IO_THREAD_BATCH
    if batch is not None:
        Settings.ZMQ_IO_THREAD_BATCH = batch
    try:
        ctx = Context()
    finally:  # Settings as it was (a class default stays a class default)
        if had:
            Settings.ZMQ_IO_THREAD_BATCH = old
        else:
            vars(Settings).pop("ZMQ_IO_THREAD_BATCH", None)
    sock = ctx.socket(zmq.DEALER, socket_class=zmq.Socket)
    try:
        sock.connect("inproc://gaterpc-policy-test")
        # libzmq applies the policy, then names the thread ("ZMQbg/..."), then runs it.
        deadline = time.monotonic() + 10.0
        while True:
            # its reaper and its one I/O thread (auto mode may also start a controller thread)
            new = [v for tid, v in _policies().items() if tid not in before and "ZMQbg/" in v[0]]
            if len(new) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return [policy for _, policy in new], os.sched_getscheduler(0)
    finally:
        sock.close(linger=0)
        ctx.term()


def test_io_threads_run_batch_and_caller_does_not() -> None:
    policies, caller = _new_threads_policies(True)
    assert policies, "the context started no thread"
    assert set(policies) == {os.SCHED_BATCH}, policies
    assert caller == os.SCHED_OTHER  # the probe changed its own thread only


def test_setting_off_keeps_the_default_policy() -> None:
    policies, caller = _new_threads_policies(False)
    assert policies, "the context started no thread"
    assert set(policies) == {os.SCHED_OTHER}, policies
    assert caller == os.SCHED_OTHER


def test_auto_by_default_starts_under_the_default_policy() -> None:
    assert Settings.ZMQ_IO_THREAD_BATCH == "auto"
    policies, caller = _new_threads_policies(None)
    assert policies, "the context started no thread"
    assert set(policies) == {os.SCHED_OTHER}, policies
    assert caller == os.SCHED_OTHER


# --- auto mode (gaterpc.iosched) ---------------------------------------------------------------

W = 100_000_000  # a window of 0.1 s, in ns


def test_decide_quiet_contended_and_the_band_between() -> None:
    ran = W // 5  # busy: ran 20% of the window
    enter, leave = iosched.ENTER, iosched.LEAVE
    assert leave < enter
    band = int(ran * (enter + leave) / 2)  # waited between the two thresholds
    # quiet: the default policy, whatever the ratio
    assert iosched.decide(False, 0, 0, W) is False
    assert iosched.decide(True, int(0.01 * W), int(0.01 * W), W) is False
    # starved of cores (ran little, waited long): contention, not quiet
    assert iosched.decide(False, int(0.01 * W), W // 2, W) is True
    # busy and waiting ENTER times as long as it runs: batch
    assert iosched.decide(False, ran, int(ran * enter), W) is True
    # inside the band: stays as it is; below it: leaves
    assert iosched.decide(False, ran, band, W) is False
    assert iosched.decide(True, ran, band, W) is True
    assert iosched.decide(True, ran, int(ran * leave) - 1, W) is False
    # a window of no length decides nothing but the default
    assert iosched.decide(True, 10, 10, 0) is False


def _io_tids(ctl: iosched.Controller) -> list[int]:
    return [tid for tid, name in ctl.names().items() if name.startswith(f"{iosched.PREFIX}/ZMQbg/IO/")]


def _auto_context() -> tuple[Context, zmq.Socket[bytes], iosched.Controller]:
    assert Settings.ZMQ_IO_THREAD_BATCH == "auto"
    ctx = Context()
    sock = ctx.socket(zmq.DEALER, socket_class=zmq.Socket)
    sock.connect("inproc://gaterpc-auto-policy-test")
    ctl = iosched.controller()
    assert ctl is not None and ctl.running()
    deadline = time.monotonic() + 10.0
    while not _io_tids(ctl) and time.monotonic() < deadline:  # libzmq names it just after start
        time.sleep(0.01)
    return ctx, sock, ctl


@contextlib.contextmanager
def _driven() -> Iterator[tuple[list[int], iosched.Controller]]:
    """A context of ours with its I/O thread started, the process's own controller stopped
    (it leaves the threads to the test), and a controller of the test's, not started."""
    ctx, sock, ctl = _auto_context()
    try:
        tids = _io_tids(ctl)
        assert tids, "no I/O thread named with gaterpc's prefix"
        ctl.stop()
        yield tids, iosched.Controller(os.SCHED_BATCH)
    finally:
        sock.close(linger=0)
        ctx.term()


def test_step_moves_the_io_threads_and_leaves_after_calm_windows() -> None:
    with _driven() as (tids, ctl):
        names = ctl.names()

        def sample(t: int, ran: int, waited: int) -> tuple[int, dict[int, tuple[int, int]], dict[int, str]]:
            return t, {1: (ran, waited)}, names

        t, ran, waited = 0, 0, 0
        before = sample(t, ran, waited)
        # contended: runs 20% of the window, waits twice as long
        assert iosched.ENTER <= 2
        t, ran, waited = t + W, ran + W // 5, waited + 2 * W // 5
        ctl.step(before, before := sample(t, ran, waited))
        assert ctl.batch and {os.sched_getscheduler(tid) for tid in tids} == {os.SCHED_BATCH}
        # calm windows: it leaves after CALM of them in a row, not before
        for k in range(1, iosched.CALM + 1):
            t, ran = t + W, ran + W // 5
            ctl.step(before, before := sample(t, ran, waited))
            if k < iosched.CALM:
                assert ctl.batch and {os.sched_getscheduler(tid) for tid in tids} == {os.SCHED_BATCH}, k
        assert not ctl.batch and {os.sched_getscheduler(tid) for tid in tids} == {os.SCHED_OTHER}
        assert ctl.switches == 2


def _hog() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time\nt = time.monotonic() + 60\n"
                             "while time.monotonic() < t: pass"])


def test_auto_follows_real_contention_and_returns() -> None:
    """More busy processes than cores: this process's I/O thread goes to SCHED_BATCH while
    it is busy, and back to the default policy once it is quiet."""
    ctx, sock, ctl = _auto_context()
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        tids = _io_tids(ctl)
        assert tids, ctl.names()
        hogs = [_hog() for _ in range(2 * (os.cpu_count() or 1) + 2)]
        deadline = time.monotonic() + 20.0
        while not ctl.batch and time.monotonic() < deadline:
            pass  # busy, as a loaded event loop is: the hogs make this thread wait
        assert ctl.batch, "the controller never saw this process wait for a core"
        assert {os.sched_getscheduler(tid) for tid in tids} == {os.SCHED_BATCH}
        for h in hogs:
            h.kill()
            h.wait(10)
        deadline = time.monotonic() + 20.0
        while ctl.batch and time.monotonic() < deadline:
            time.sleep(0.05)  # quiet
        assert not ctl.batch
        assert {os.sched_getscheduler(tid) for tid in tids} == {os.SCHED_OTHER}
    finally:
        for h in hogs:
            if h.poll() is None:
                h.kill()
                h.wait(10)
        sock.close(linger=0)
        ctx.term()


def test_controller_ends_with_the_last_context_and_a_new_one_starts() -> None:
    ctx, sock, ctl = _auto_context()
    sock.close(linger=0)
    ctx.term()
    deadline = time.monotonic() + 10.0
    while ctl.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not ctl.running() and ctl.done
    ctx2, sock2, ctl2 = _auto_context()
    try:
        assert ctl2 is not ctl and ctl2.running()
    finally:
        sock2.close(linger=0)
        ctx2.term()


@pytest.mark.parametrize("value", ["yes", "batch", 2, None])
def test_a_bad_setting_is_a_clear_error(value: object) -> None:
    Settings.ZMQ_IO_THREAD_BATCH = value  # restored by the suite's settings fixture
    with pytest.raises(ValueError, match="ZMQ_IO_THREAD_BATCH must be True, False or \"auto\""):
        Context()


def test_a_policy_chosen_by_somebody_else_is_left_alone() -> None:
    """An I/O thread found under another policy than the default (a whole process under
    ``--sched batch``, say) is neither moved to batch nor back to the default."""
    with _driven() as (tids, ctl):
        os.sched_setscheduler(tids[0], os.SCHED_IDLE, os.sched_param(0))
        ctl.apply(True)
        assert os.sched_getscheduler(tids[0]) == os.SCHED_IDLE
        ctl.apply(False)
        assert os.sched_getscheduler(tids[0]) == os.SCHED_IDLE


def test_a_forked_child_runs_its_own_controller() -> None:
    ctx, sock, ctl = _auto_context()
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no controller until it builds a context of its own
            ok = iosched.controller() is None
            try:
                c = Context()
                s = c.socket(zmq.DEALER, socket_class=zmq.Socket)
                child_ctl = iosched.controller()
                ok = ok and child_ctl is not None and child_ctl.running() and child_ctl.pid == os.getpid()
                s.close(linger=0)
                c.term()
            except BaseException:
                ok = False
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
        os.close(write)
        try:
            ready, _, _ = select.select([read], [], [], 30.0)
            got = os.read(read, 1) if ready else b"timeout"
        finally:
            os.close(read)
            if not ready:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert got == b"1"
        assert iosched.controller() is ctl and ctl.running()  # the parent's is untouched
    finally:
        sock.close(linger=0)
        ctx.term()


def test_a_starved_window_is_contention_and_a_quiet_one_calm() -> None:
    """Ran little but waited long (starved of cores): stays under batch; ran and waited
    little (quiet): counts towards leaving."""
    with _driven() as (tids, ctl):
        names = ctl.names()
        ctl.apply(True)
        t = ran = waited = 0
        before: tuple[int, dict[int, tuple[int, int]], dict[int, str]] = (t, {1: (ran, waited)}, names)
        for _ in range(2 * iosched.CALM):  # starved: 1% run, 90% waiting
            t, ran, waited = t + W, ran + W // 100, waited + 9 * W // 10
            ctl.step(before, before := (t, {1: (ran, waited)}, names))
        assert ctl.batch and {os.sched_getscheduler(tid) for tid in tids} == {os.SCHED_BATCH}
        for k in range(iosched.CALM):  # quiet: 1% run, 1% waiting
            t, ran, waited = t + W, ran + W // 100, waited + W // 100
            ctl.step(before, before := (t, {1: (ran, waited)}, names))
        assert not ctl.batch and {os.sched_getscheduler(tid) for tid in tids} == {os.SCHED_OTHER}
        assert ctl.switches == 1


def test_a_window_after_idle_ones_is_judged_by_its_active_part() -> None:
    """Samples are skipped while the process is idle; the first busy window after them
    compares with the sample before them, over the time the process was active."""
    with _driven() as (_, ctl):
        names = ctl.names()
        before = (0, {1: (0, 0)}, names)
        after = (100 * W, {1: (W // 5, 2 * W // 5)}, names)  # 10 s later, all of it in the last 0.1 s
        ctl.step(before, after)  # over the whole 10 s it looks quiet
        assert not ctl.batch
        active = iosched.Controller(os.SCHED_BATCH)
        active.step(before, after, W)  # over the active 0.1 s it is contended
        assert active.batch
        active.apply(False)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("mode, prefix, warned", [
    ("auto", 9, True),                  # the user's prefix hides our I/O threads: said once
    ("auto", iosched.PREFIX, False),    # ours again: nothing to say
    (False, 9, False),                  # auto mode off: the prefix is the user's business
])
def test_a_prefix_of_the_users_own_is_reported(mode: object, prefix: int, warned: bool) -> None:
    Settings.ZMQ_IO_THREAD_BATCH = mode  # restored by the suite's settings fixture
    handler = _Records()
    log = logging.getLogger("gaterpc")
    log.addHandler(handler)
    ctx = Context()
    try:
        set_ctx(ctx, {zmq.THREAD_NAME_PREFIX: prefix})
    finally:
        log.removeHandler(handler)
        ctx.term()
    hits = [m for m in handler.messages if "THREAD_NAME_PREFIX" in m]
    assert bool(hits) is warned, handler.messages
    if warned:
        assert "ZMQ_IO_THREAD_BATCH" in hits[0] and "9" in hits[0]


def test_the_first_busy_window_is_judged_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """The starting point is sampled when the controller starts, so the first busy
    window of a process is judged when it ends, not only used as a starting point."""
    waits: list[float] = []
    steps: list[tuple[int, int]] = []

    class Stop:
        def wait(self, timeout: float) -> bool:  # records the wait, never sleeps; ends the loop
            waits.append(timeout)
            return len(waits) > 3

        def set(self) -> None:
            pass

    class Clock:  # every window busy: the process's CPU time grows with the wall clock
        now = 0

        def monotonic_ns(self) -> int:
            self.now += W
            return self.now

        def process_time_ns(self) -> int:
            return self.now

    ctl = iosched.Controller(os.SCHED_BATCH)
    ctl._stop = Stop()  # type: ignore[assignment]
    monkeypatch.setattr(iosched, "time", Clock())
    monkeypatch.setattr(ctl, "alive", lambda: True)
    monkeypatch.setattr(ctl, "sample", lambda: (len(waits), {}, {}))
    monkeypatch.setattr(ctl, "step", lambda before, after, active=None: steps.append((before[0], after[0])))
    ctl._run()
    assert waits == [iosched.INTERVAL] * 4, waits
    # judged at the end of the first window, from the sample taken at the start
    assert steps[:2] == [(0, 1), (1, 2)], steps
