"""The CPU scheduling policy of a role process: ``normal`` (SCHED_OTHER) or ``batch`` (SCHED_BATCH).

Under SCHED_BATCH (Linux, no privilege needed) a woken process does not
preempt the one running: on a host with more busy processes than cores, each
process then runs longer per wake-up and handles more messages per wake-up,
so the cost per call falls and throughput rises.  A woken process may wait a
little longer for a core, so latency on an idle host does not improve.

On Linux the policy is a property of each thread, inherited by the threads
and processes created after it is set: set it before the ZeroMQ context
exists (libzmq's I/O threads), e.g. first thing in ``main``, or in a child's
``preexec_fn``.  Used by ``gaterpc broker|worker --sched`` and by
``gaterpc bench --sched``.
"""

from __future__ import annotations

import os

__all__ = ("POLICIES", "SchedUnavailable", "available", "set_policy", "policy_of", "thread_policies")

#: the policies offered, by name
POLICIES = ("normal", "batch")


class SchedUnavailable(OSError):
    """This platform cannot set the scheduling policy asked for."""


def _value(name: str) -> int:
    attr = {"normal": "SCHED_OTHER", "batch": "SCHED_BATCH"}.get(name)
    if attr is None:
        raise ValueError(f"unknown scheduling policy {name!r} (choose from {', '.join(POLICIES)})")
    value = getattr(os, attr, None)
    if value is None or not hasattr(os, "sched_setscheduler"):
        raise SchedUnavailable(f"the {name} scheduling policy ({attr}) is not available on this platform")
    return int(value)


def available(name: str = "batch") -> bool:
    """True when this platform can set the policy ``name``."""
    try:
        _value(name)
    except (ValueError, SchedUnavailable):
        return False
    return True


def set_policy(name: str, pid: int = 0) -> None:
    """Set the policy ``name`` on thread ``pid`` (0: the calling thread), priority 0.

    Raises :class:`SchedUnavailable` where the platform lacks it, ``OSError``
    when the kernel refuses."""
    os.sched_setscheduler(pid, _value(name), os.sched_param(0))


def policy_of(tid: int) -> str:
    """The policy of a thread (a process id names its main thread): "normal", "batch", or another name."""
    value = os.sched_getscheduler(tid)
    names = {getattr(os, attr, None): name for attr, name in (
        ("SCHED_OTHER", "normal"), ("SCHED_BATCH", "batch"), ("SCHED_IDLE", "idle"),
        ("SCHED_FIFO", "fifo"), ("SCHED_RR", "rr"))}
    return names.get(value, f"policy {value}")


def thread_policies(pid: int) -> dict[int, str]:
    """The policy of every thread of a live process (``/proc/<pid>/task``; its main thread elsewhere)."""
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        tids = [pid]
    out: dict[int, str] = {}
    for tid in tids:
        try:
            out[tid] = policy_of(tid)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    return out
