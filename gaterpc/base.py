"""Module-level pieces of ``gaterpc.core``.

``Context``, the socket/context helpers, ``generate_reply``, the ZAP argument
helpers and the two abstract bases.  Also the small shared helpers every role
uses to create its sockets.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import os
import sys
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from abc import ABC, abstractmethod
from types import GeneratorType
from typing import Any, AsyncGenerator, Mapping, Optional, Sequence, Union

import zmq
import zmq.asyncio
from zmq import constants as z_const

from gaterpc import iosched
from gaterpc.global_settings import Settings
from gaterpc.helpers import generator_to_agenerator, to_bytes
from gaterpc.protocol import exception_triple

__all__ = (
    "Context", "set_ctx", "set_sock", "generate_reply", "check_zap_args", "parse_zap_frame",
    "ABCWorker", "ABCService", "new_socket", "current_loop",
    "own_context", "live_context", "release_context", "hold_loop", "release_loop", "io_thread_policy",
)

logger = logging.getLogger("gaterpc")

_HWM = z_const.SocketOption.HWM


#: what ``io_thread_policy`` found (probed at its first call)
_BATCH_PROBED = False
_BATCH_POLICY: Optional[int] = None


def _probe_batch(result: list[int]) -> None:
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None:
        return
    try:
        # On Linux a scheduling policy is a thread's own: pid 0 is this thread only.
        os.sched_setscheduler(0, batch, os.sched_param(0))
        if os.sched_getscheduler(0) == batch:
            result.append(batch)
    except (OSError, AttributeError):
        pass


def io_thread_policy() -> Optional[int]:
    """``SCHED_BATCH`` if a thread of this process may take it (Linux), else None; probed once.

    Why: a libzmq I/O thread wakes for every message a socket hands it while
    it sleeps, and under the default policy each of those wake-ups preempts
    the thread that sent (the event loop, on the same core) in the middle
    of its burst: with many processes on few cores, most messages cost two
    context switches and a cold cache.  A ``SCHED_BATCH`` I/O thread still
    runs at once on an idle core, but does not preempt a busy one: the event
    loop finishes its burst and the I/O thread moves it in one go.  The price:
    a message may wait for the sender to finish what it is doing, which adds
    latency per hop when the host is not saturated (hence, by default, only while
    the process waits for cores: :mod:`gaterpc.iosched`).

    The policy is probed on a short-lived thread of our own first: libzmq
    aborts the process if it cannot apply a policy it was given.
    """
    global _BATCH_PROBED, _BATCH_POLICY
    if not _BATCH_PROBED:
        found: list[int] = []
        if sys.platform.startswith("linux"):
            probe = threading.Thread(target=_probe_batch, args=(found,), name="gaterpc-sched-probe")
            probe.start()
            probe.join()
        _BATCH_POLICY = found[0] if found else None
        _BATCH_PROBED = True
    return _BATCH_POLICY


class Context(zmq.asyncio.Context):
    """A ``zmq.asyncio.Context`` (keyword-only arguments, as the original).

    ``Settings.ZMQ_IO_THREAD_BATCH`` sets the scheduling policy of its I/O
    threads where the system allows it (:func:`io_thread_policy`): ``"auto"``
    (the default) moves them to ``SCHED_BATCH`` while this process's threads
    wait for a core as long as they run, and back when they do not
    (:mod:`gaterpc.iosched`); True keeps them under ``SCHED_BATCH``; False
    leaves them under the system's default policy.
    """

    #: its I/O threads follow the "auto" policy (set once the controller watches it)
    _gaterpc_auto: bool = False

    def __init__(self, *, io_threads: int = 1, shadow: int = 0) -> None:
        if shadow:
            super().__init__(shadow=shadow)
            return
        super().__init__(io_threads=io_threads)
        mode = Settings.ZMQ_IO_THREAD_BATCH
        if mode not in (False, True, "auto"):
            super().term()
            raise ValueError("Settings.ZMQ_IO_THREAD_BATCH must be True, False or \"auto\", "
                             f"not {mode!r}")
        if not mode:
            return
        policy = io_thread_policy()
        if policy is None:
            return
        auto = mode == "auto"
        try:
            # Before the first socket: libzmq starts its threads then.  In auto mode the
            # threads only get our name prefix; the controller sets their policy later.
            self.set(zmq.THREAD_NAME_PREFIX if auto else zmq.THREAD_SCHED_POLICY,
                     iosched.PREFIX if auto else policy)
        except (AttributeError, zmq.ZMQError) as exc:
            logger.debug("cannot set the I/O threads' name or scheduling policy: %s", exc)
            return
        if auto:
            self._gaterpc_auto = iosched.watch(self, policy)


def set_ctx(ctx: zmq.Context[Any], options: Optional[Mapping[int, Any]] = None) -> None:
    """Apply ``Settings.ZMQ_CONTEXT`` (updated with ``options``) to a context."""
    opts = dict(Settings.ZMQ_CONTEXT)
    if options:
        opts.update(options)
    for option, value in opts.items():
        if (option == zmq.THREAD_NAME_PREFIX and value != iosched.PREFIX
                and getattr(ctx, "_gaterpc_auto", False)):
            logger.warning("a THREAD_NAME_PREFIX of %r replaces gaterpc's: the I/O threads of this "
                           "context no longer follow Settings.ZMQ_IO_THREAD_BATCH = \"auto\"", value)
        try:
            ctx.set(option, value)
        except (AttributeError, zmq.ZMQError, TypeError) as exc:
            logger.error("cannot set context option %r: %s", option, exc)


def set_sock(sock: zmq.Socket[Any], options: Optional[Mapping[int, Any]] = None) -> None:
    """Apply ``Settings.ZMQ_SOCK`` (updated with ``options``, which win) to a socket."""
    opts = dict(Settings.ZMQ_SOCK)
    if options:
        opts.update(options)
    for option, value in opts.items():
        try:
            if option == _HWM and isinstance(value, int):
                sock.set_hwm(value)
            else:
                sock.set(option, value)
        except (AttributeError, zmq.ZMQError, TypeError, ValueError) as exc:
            logger.error("cannot set socket option %r: %s", option, exc)


def new_socket(
    ctx: zmq.Context[Any], socket_type: int, options: Optional[Mapping[int, Any]] = None
) -> zmq.Socket[bytes]:
    """A plain pyzmq socket from ``ctx`` with the library's options applied.

    The roles drive their sockets through :mod:`gaterpc.loopio`, so they use
    synchronous sockets even on our (``zmq.asyncio``) ``Context``.
    """
    sock: zmq.Socket[bytes] = ctx.socket(socket_type, socket_class=zmq.Socket)
    set_sock(sock, options)
    return sock


def own_executors(
    owner: Any,
    thread_executor: Optional[ThreadPoolExecutor],
    process_executor: Optional[ProcessPoolExecutor],
) -> None:
    """Give ``owner`` its executors: the ones passed in, or new default ones.

    Defaults as the original: threads ``min(32, cpu + 4)``, processes
    ``min(4, cpu + 1)`` (a process pool starts no process until used).
    """
    cpus = os.cpu_count() or 1
    owner._own_executors = (thread_executor is None, process_executor is None)
    owner.thread_executor = thread_executor or ThreadPoolExecutor(max_workers=min(32, cpus + 4))
    owner.process_executor = process_executor or ProcessPoolExecutor(max_workers=min(4, cpus + 1))


def shutdown_own_executors(owner: Any) -> None:
    """Shut down (without waiting) only the executors ``owner`` created itself."""
    own_thread, own_process = owner._own_executors
    if own_thread:
        owner.thread_executor.shutdown(wait=False, cancel_futures=True)
    if own_process:
        owner.process_executor.shutdown(wait=False, cancel_futures=True)


# -- what a role creates, it closes ------------------------------------------------------
#
# A role built without ``context=`` owns the Context it makes; a role built outside a
# running loop, when the thread has no usable loop, makes one (as the original's
# ``asyncio.get_event_loop()`` did).  Both used to stay open for ever.  Now the role
# terminates its own Context when it is closed or stopped, and a loop made here is
# closed once no role uses it and it is not running.  A Context or a loop the user
# made is never closed by the library.

#: loops made by :func:`current_loop` -> how many roles use each
_OWN_LOOPS: dict[asyncio.AbstractEventLoop, int] = {}
_OWN_LOOPS_LOCK = threading.Lock()


def own_context(owner: Any, context: Optional[zmq.Context[Any]]) -> zmq.Context[Any]:
    """``context``, or a new :class:`Context` that ``owner`` owns (see :func:`release_context`)."""
    if context is not None:
        owner._ctx_owned = False
        return context
    owner._ctx_owned = True
    return Context()


def live_context(owner: Any, ctx: zmq.Context[Any]) -> zmq.Context[Any]:
    """``ctx``, or a new one in its place when ``owner`` terminated its own (a role used again)."""
    if ctx.closed and getattr(owner, "_ctx_owned", False):
        ctx = Context()
        set_ctx(ctx)
    return ctx


def release_context(owner: Any, ctx: Optional[zmq.Context[Any]]) -> None:
    """Terminate ``ctx`` if ``owner`` created it (never a context the user passed).

    Sockets still open on it are closed with linger 0 first.  A socket the
    role closed with a linger (its last DISCONNECT or LEAVE) may hold the
    termination for at most that long (0.1-0.2 s), and only when its peer
    cannot take the message.
    """
    if ctx is None or not getattr(owner, "_ctx_owned", False) or ctx.closed:
        return
    for sock in list(getattr(ctx, "_sockets", None) or ()):
        if sock is not None and not sock.closed:
            sock.close(linger=0)
    try:
        ctx.term()
    except zmq.ZMQError as exc:  # pragma: no cover - term fails only on a broken context
        logger.debug("context termination failed: %s", exc)


def _policy_loop(policy: asyncio.AbstractEventLoopPolicy) -> Optional[asyncio.AbstractEventLoop]:
    """The loop set for this thread, without making one (None when there is none)."""
    local = getattr(policy, "_local", None)
    if local is not None and hasattr(local, "_loop"):
        loop: Optional[asyncio.AbstractEventLoop] = local._loop
        return loop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return policy.get_event_loop()
        except RuntimeError:
            return None


def current_loop(owner: Any = None) -> asyncio.AbstractEventLoop:
    """The running loop, else this thread's loop; a new one when there is none (or it is closed).

    A loop made here belongs to the library: when ``owner`` is given it
    counts as one of the loop's users (:func:`release_loop` gives it back).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        policy = asyncio.get_event_loop_policy()
        found = _policy_loop(policy)
        if found is None or found.is_closed():
            found = policy.new_event_loop()
            policy.set_event_loop(found)
            _OWN_LOOPS[found] = 0
        loop = found
    if owner is not None:
        hold_loop(owner, loop)
    return loop


def hold_loop(owner: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Count ``owner`` as a user of ``loop`` if the library made it (once per owner)."""
    if loop in _OWN_LOOPS and getattr(owner, "_held_loop", None) is not loop:
        release_loop(owner)
        with _OWN_LOOPS_LOCK:
            if loop not in _OWN_LOOPS:
                return
            _OWN_LOOPS[loop] += 1
        owner._held_loop = loop


def release_loop(owner: Any) -> None:
    """``owner`` no longer uses its loop: close it if the library made it and nobody else uses it."""
    loop = getattr(owner, "_held_loop", None)
    if loop is None:
        return
    owner._held_loop = None
    with _OWN_LOOPS_LOCK:
        users = _OWN_LOOPS.get(loop)
        if users is None:
            return
        users = max(users - 1, 0)
        _OWN_LOOPS[loop] = users
    if users == 0:
        _close_own_loop(loop)


def _close_own_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a loop the library made, as ``asyncio.run`` closes its own.

    Not while it (or any loop of this thread) runs: then it stays registered
    and is closed by the next release or at exit.  Tasks still pending are
    cancelled and given a moment to finish first.
    """
    if loop.is_closed():
        _OWN_LOOPS.pop(loop, None)
        return
    if loop.is_running() or asyncio._get_running_loop() is not None:
        return
    try:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
        if _OWN_LOOPS.get(loop, 1):
            return  # a role was made while the tasks finished: it uses the loop now
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        if not loop.is_running() and not _OWN_LOOPS.get(loop, 1):
            _OWN_LOOPS.pop(loop, None)
            policy = asyncio.get_event_loop_policy()
            if _policy_loop(policy) is loop:
                policy.set_event_loop(None)
            loop.close()


@atexit.register
def _close_idle_loops() -> None:
    """At exit: close the loops the library made that no role uses any more."""
    for loop, users in list(_OWN_LOOPS.items()):
        if users == 0:
            try:
                _close_own_loop(loop)
            except Exception:  # pragma: no cover - best effort at exit
                pass


async def generate_reply(
    result: Any = None, exception: Optional[BaseException] = None
) -> Union[dict[str, Any], AsyncGenerator[Any, None], Any]:
    """Build the single-reply envelope (streams and HugeData pass through)."""
    from gaterpc.hugedata import HugeData

    triple = exception_triple(exception) if exception is not None else None
    if isinstance(result, GeneratorType):
        return generator_to_agenerator(result)
    if inspect.isasyncgen(result) or isinstance(result, HugeData):
        return result
    return {"result": result, "exception": triple}


_MECHANISMS = (b"NULL", b"PLAIN", b"CURVE")


def check_zap_args(
    mechanism: Union[str, bytes, None], credentials: Optional[Sequence[Union[str, bytes]]]
) -> tuple[Union[str, bytes, None], Any]:
    """Normalise ZAP arguments: ``(mechanism_bytes, credentials_tuple)``.

    Raises ``RuntimeError`` for CURVE (as the original), ``ValueError`` for an
    unknown mechanism, a NULL mechanism with credentials, or PLAIN without
    exactly two credentials.
    """
    if not mechanism:
        return mechanism, credentials
    if isinstance(mechanism, str):
        mechanism = mechanism.encode("utf-8")
    if credentials is None:
        credentials = ()
    if mechanism == Settings.ZAP_MECHANISM_CURVE:
        raise RuntimeError(f'The "{mechanism!r}" mechanism is not implemented yet.')
    if mechanism not in (Settings.ZAP_MECHANISM_NULL, Settings.ZAP_MECHANISM_PLAIN, Settings.ZAP_MECHANISM_CURVE):
        raise ValueError(
            f'mechanism can only be "{Settings.ZAP_MECHANISM_NULL!r}" or '
            f'"{Settings.ZAP_MECHANISM_PLAIN!r}" or "{Settings.ZAP_MECHANISM_CURVE!r}"')
    credentials = tuple(credentials)
    if mechanism == Settings.ZAP_MECHANISM_NULL and credentials:
        raise ValueError("the NULL mechanism takes no credentials")
    if mechanism == Settings.ZAP_MECHANISM_PLAIN and len(credentials) != 2:
        raise ValueError("the PLAIN mechanism takes exactly two credentials: (username, password)")
    return mechanism, credentials


def zap_frames_of(
    mechanism: Union[str, bytes, None], credentials: Sequence[Any]
) -> tuple[Optional[tuple[Any, ...]], tuple[bytes, ...]]:
    """``(zap_frames, zap_frames_bytes)`` for a component, or ``(None, ())``."""
    if not mechanism:
        return None, ()
    frames = (mechanism, *credentials)
    return frames, tuple(to_bytes(f) for f in frames)


def parse_zap_frame(messages: Sequence[bytes]) -> Optional[tuple[bytes, Any, Sequence[bytes]]]:
    """Split ZAP frames off the front of ``messages``.

    Returns ``(mechanism, credentials, rest)`` -- credentials ``None`` for
    NULL, ``(user, password)`` for PLAIN, the key frame for CURVE -- or
    ``None`` when the first frame is not a known mechanism or frames are
    missing.
    """
    if not messages:
        return None
    mechanism = messages[0]
    if mechanism == Settings.ZAP_MECHANISM_NULL:
        return mechanism, None, messages[1:]
    if mechanism == Settings.ZAP_MECHANISM_PLAIN:
        if len(messages) < 3:
            return None
        return mechanism, (messages[1], messages[2]), messages[3:]
    if mechanism == Settings.ZAP_MECHANISM_CURVE:
        if len(messages) < 2:
            return None
        return mechanism, messages[1], messages[2:]
    return None


class ABCWorker(ABC):
    """What the broker needs to know about a worker."""

    identity: bytes
    service: object
    heartbeat_liveness: int
    heartbeat: int
    expiry: float
    max_allowed_request: int

    @abstractmethod
    def is_alive(self) -> bool:
        """True while the worker is usable."""


class ABCService(ABC):
    """A named group of workers."""

    name: str
    running: bool
    description: str
    workers: dict[bytes, Any]
    idle_workers: object

    @abstractmethod
    def add_worker(self, worker: Any) -> None:
        """Add a worker to the service."""

    @abstractmethod
    def remove_worker(self, worker: Any) -> None:
        """Remove a worker from the service."""

    @abstractmethod
    def get_workers(self) -> Any:
        """The workers of the service."""

    @abstractmethod
    async def acquire_idle_worker(self) -> Any:
        """Wait for a worker with spare capacity."""

    @abstractmethod
    async def release_worker(self, worker: Any) -> None:
        """Give a unit of capacity back."""
