"""Module-level pieces of ``gaterpc.core``.

``Context``, the socket/context helpers, ``generate_reply``, the ZAP argument
helpers and the two abstract bases.  Also the small shared helpers every role
uses to create its sockets.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from abc import ABC, abstractmethod
from types import GeneratorType
from typing import Any, AsyncGenerator, Mapping, Optional, Sequence, Union

import zmq
import zmq.asyncio
from zmq import constants as z_const

from gaterpc.global_settings import Settings
from gaterpc.helpers import generator_to_agenerator, to_bytes
from gaterpc.protocol import exception_triple

__all__ = (
    "Context", "set_ctx", "set_sock", "generate_reply", "check_zap_args", "parse_zap_frame",
    "ABCWorker", "ABCService", "new_socket", "current_loop",
)

logger = logging.getLogger("gaterpc")

_HWM = z_const.SocketOption.HWM


class Context(zmq.asyncio.Context):
    """A ``zmq.asyncio.Context`` (keyword-only arguments, as the original)."""

    def __init__(self, *, io_threads: int = 1, shadow: int = 0) -> None:
        if shadow:
            super().__init__(shadow=shadow)
        else:
            super().__init__(io_threads=io_threads)


def set_ctx(ctx: zmq.Context[Any], options: Optional[Mapping[int, Any]] = None) -> None:
    """Apply ``Settings.ZMQ_CONTEXT`` (updated with ``options``) to a context."""
    opts = dict(Settings.ZMQ_CONTEXT)
    if options:
        opts.update(options)
    for option, value in opts.items():
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


def current_loop() -> asyncio.AbstractEventLoop:
    """The running loop, else the policy's loop (construction outside a loop)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    policy = asyncio.get_event_loop_policy()
    try:
        return policy.get_event_loop()
    except RuntimeError:
        # e.g. after asyncio.run() cleared the current loop: give this thread a new one
        loop = policy.new_event_loop()
        policy.set_event_loop(loop)
        return loop


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
