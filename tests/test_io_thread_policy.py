"""``Settings.ZMQ_IO_THREAD_BATCH``: the I/O threads of gaterpc's contexts under SCHED_BATCH (Linux), opt-in."""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

import pytest
import zmq

from gaterpc.base import Context, io_thread_policy
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
            new = [v for tid, v in _policies().items() if tid not in before]
            if (new and all(name.startswith("ZMQbg") for name, _ in new)) or time.monotonic() > deadline:
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


def test_off_by_default() -> None:
    assert Settings.ZMQ_IO_THREAD_BATCH is False
    policies, caller = _new_threads_policies(None)
    assert policies, "the context started no thread"
    assert set(policies) == {os.SCHED_OTHER}, policies
    assert caller == os.SCHED_OTHER
