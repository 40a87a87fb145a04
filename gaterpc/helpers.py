"""Small helpers shared by every role.

Byte conversion of frames, identity derivation, address checks, dotted-path
resolution, the ``interface`` marker, executor and async-generator helpers,
the lazily started multiprocessing manager, the epoll event-loop policy and
the datagram protocol used by gate discovery.

Importing this module starts nothing: no process, loop or socket.
"""

from __future__ import annotations

import asyncio
import inspect
import selectors
import struct
import sys
import threading
import uuid
from functools import partial
from importlib import import_module
from typing import Any, AsyncGenerator, Callable, Iterable, Optional, overload

__all__ = (
    "to_bytes",
    "from_bytes",
    "name2uuid",
    "check_socket_addr",
    "resolve_module_attr",
    "singleton",
    "encrypt",
    "decrypt",
    "interface",
    "run_in_executor",
    "generator_to_agenerator",
    "throw_exception_agenerator",
    "SyncManager",
    "UnixEPollEventLoopPolicy",
    "MulticastProtocol",
)

_pack_b = struct.Struct("!b").pack
_pack_h = struct.Struct("!h").pack
_pack_i = struct.Struct("!i").pack
_pack_d = struct.Struct("!d").pack
_UNPACK_BY_LEN = {
    1: struct.Struct("!b").unpack,
    2: struct.Struct("!h").unpack,
    4: struct.Struct("!i").unpack,
    8: struct.Struct("!d").unpack,
}


def to_bytes(s: Any, fmt: Optional[str] = None) -> bytes:
    """Convert a frame value to bytes.

    ``bytes`` are returned as is, ``str`` is UTF-8 encoded, anything else
    goes through ``struct.pack(fmt, s)``.  Without ``fmt`` a float uses
    ``"!d"`` and an int the smallest of ``"!b"``, ``"!h"``, ``"!i"``;
    other values raise ``TypeError``.
    """
    if type(s) is bytes:
        return s
    if type(s) is str:
        return s.encode("utf-8")
    if isinstance(s, bytes):
        return s
    if isinstance(s, str):
        return s.encode("utf-8")
    if fmt is not None:
        return struct.pack(fmt, s)
    if isinstance(s, float):
        return _pack_d(s)
    if isinstance(s, int):
        if -128 <= s <= 127:
            return _pack_b(s)
        if -32768 <= s <= 32767:
            return _pack_h(s)
        try:
            return _pack_i(s)
        except struct.error as e:
            raise TypeError(f"{s!r} does not fit in 32 bits; pass an explicit fmt") from e
    # Same error type as struct would give for an unsupported value.
    raise TypeError(f"cannot convert {type(s).__name__} to bytes without a struct format")


def from_bytes(b: bytes, to_num: bool = False) -> Any:
    """Decode a frame: UTF-8 text, or (``to_num``) a number chosen by length.

    Lengths 1, 2, 4 are signed big-endian ints, 8 is a double; other
    lengths raise ``TypeError``.
    """
    if not to_num:
        return b.decode("utf-8")
    unpack = _UNPACK_BY_LEN.get(len(b))
    if unpack is None:
        raise TypeError("The length of the original byte string is not matching.")
    return unpack(b)[0]


def name2uuid(name: str) -> uuid.UUID:
    """The deterministic identity of a component: ``uuid5(NAMESPACE_DNS, name)``."""
    return uuid.uuid5(uuid.NAMESPACE_DNS, name)


_SUPPORTED_PROTOCOLS = frozenset(("inproc", "ipc", "tcp", "pgm", "epgm"))


class SocketAddressError(ValueError, SystemError):
    """A ZeroMQ address gaterpc cannot use.

    A ``ValueError`` (bad input); also a ``SystemError``, the class the
    original raised, so ``except SystemError`` in existing code still works.
    """


_ADDR_FORMS = "expected tcp://HOST:PORT, ipc://PATH or inproc://NAME"


@overload
def check_socket_addr(addr: None) -> None: ...
@overload
def check_socket_addr(addr: str) -> str: ...


def check_socket_addr(addr: Optional[str]) -> Optional[str]:
    """Validate the transport of a ZeroMQ address and return it unchanged.

    ``None`` passes through.  An address that is not a string, has no
    ``scheme://``, uses an unsupported transport (or ``ipc`` on Windows)
    raises :class:`SocketAddressError` (a ``ValueError`` and, as in the
    original, a ``SystemError``) whose message shows the expected forms
    ``tcp://HOST:PORT``, ``ipc://PATH``, ``inproc://NAME`` (an unsupported
    scheme keeps the original's message ``The protocol "udp" is not
    supported.``).
    """
    if addr is None:
        return None
    if not isinstance(addr, str):
        raise SocketAddressError(f"a ZeroMQ address must be a str, not {type(addr).__name__}: {_ADDR_FORMS}")
    protocol, sep, rest = addr.partition("://")
    if not sep:
        raise SocketAddressError(f"{addr!r} is not a ZeroMQ address (no scheme): {_ADDR_FORMS}")
    if protocol == "ipc" and sys.platform == "win32":
        raise SocketAddressError("ipc protocol does not work on Windows.")
    if protocol not in _SUPPORTED_PROTOCOLS:
        raise SocketAddressError(f'The protocol "{protocol}" is not supported.')
    if not rest:
        raise SocketAddressError(f"{addr!r} has nothing after {protocol}://: {_ADDR_FORMS}")
    return addr


def resolve_module_attr(s: str) -> Any:
    """Resolve a dotted path ``"pkg.module.attr"``, importing modules as needed.

    An ``ImportError`` is raised as ``ValueError("Cannot resolve <s>: ...")``.
    """
    parts = s.split(".")
    used = parts.pop(0)
    try:
        found = import_module(used)
        for frag in parts:
            used = f"{used}.{frag}"
            try:
                found = getattr(found, frag)
            except AttributeError:
                import_module(used)
                found = getattr(found, frag)
        return found
    except ImportError as e:
        raise ValueError(f"Cannot resolve {s}: {e}") from e


def singleton(cls: Callable[..., Any]) -> Callable[..., Any]:
    """Return a factory creating one instance of ``cls`` and reusing it afterwards.

    Arguments of calls after the first are ignored.
    """
    instance: list[Any] = []
    lock = threading.Lock()

    def get_instance(*args: Any, **kwargs: Any) -> Any:
        if instance:
            return instance[0]
        with lock:
            if not instance:
                instance.append(cls(*args, **kwargs))
        return instance[0]

    get_instance.__doc__ = f"Return the process-wide instance of {getattr(cls, '__qualname__', cls)!s}."
    get_instance.__wrapped__ = cls  # type: ignore[attr-defined]  # attribute set on a function object
    return get_instance


def encrypt(data: Any) -> Any:
    """Placeholder kept for compatibility: returns ``data`` unchanged."""
    return data


def decrypt(hash_str: Any) -> Any:
    """Placeholder kept for compatibility: returns ``hash_str`` unchanged."""
    return hash_str


_EXECUTORS = ("none", "thread", "process")


def _mark(func: Callable[..., Any], executor: str) -> Callable[..., Any]:
    # Marker attributes set on the function object.
    func.__interface__ = True  # type: ignore[attr-defined]
    func.__executor__ = executor  # type: ignore[attr-defined]
    return func


def interface(arg: Any) -> Any:
    """Mark a method as remotely callable.

    ``@interface`` marks a plain function (executor ``"none"``);
    ``@interface("none" | "thread" | "process")`` returns a decorator.  The
    function itself is returned, with ``__interface__ = True`` and
    ``__executor__`` set.  Anything else raises ``TypeError(type(arg))``.
    """
    if isinstance(arg, str):
        if arg not in _EXECUTORS:
            raise TypeError(type(arg))
        executor = arg

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            return _mark(func, executor)

        return decorator
    if inspect.isfunction(arg):
        return _mark(arg, "none")
    raise TypeError(type(arg))


def run_in_executor(loop: asyncio.AbstractEventLoop, executor: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> "asyncio.Future[Any]":
    """``loop.run_in_executor`` that also forwards keyword arguments."""
    return loop.run_in_executor(executor, partial(func, *args, **kwargs))


async def generator_to_agenerator(generator: Iterable[Any]) -> AsyncGenerator[Any, None]:
    """Yield the items of a synchronous iterable from an async generator."""
    for item in generator:
        yield item


async def throw_exception_agenerator(ag: Any, exc: BaseException) -> None:
    """``await ag.athrow(exc)``, ignoring ``StopAsyncIteration``."""
    try:
        await ag.athrow(exc)
    except StopAsyncIteration:
        pass


_manager_lock = threading.Lock()


class _LazySyncManager:
    """Proxy to a ``multiprocessing.Manager()`` started on first attribute access."""

    __slots__ = ("_manager",)

    def __init__(self) -> None:
        object.__setattr__(self, "_manager", None)

    def _get_manager(self) -> Any:
        manager = object.__getattribute__(self, "_manager")
        if manager is None:
            with _manager_lock:
                manager = object.__getattribute__(self, "_manager")
                if manager is None:
                    from multiprocessing import Manager

                    manager = Manager()
                    object.__setattr__(self, "_manager", manager)
        return manager

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get_manager(), name)


SyncManager = _LazySyncManager()
"""Process-wide multiprocessing manager, started on first use (``SyncManager.Queue()``)."""


_BaseEventLoopPolicy = asyncio.DefaultEventLoopPolicy


class _EPollSelectorEventLoop(asyncio.SelectorEventLoop):
    """Selector event loop that always uses ``selectors.EpollSelector``."""

    def __init__(self, selector: Optional[selectors.BaseSelector] = None) -> None:
        if selector is None:
            selector = selectors.EpollSelector()
        super().__init__(selector)


class UnixEPollEventLoopPolicy(_BaseEventLoopPolicy):
    """Default event-loop policy whose new loops use an epoll selector (Linux)."""

    _loop_factory = _EPollSelectorEventLoop

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop_factory()


class MulticastProtocol(asyncio.DatagramProtocol):
    """Datagram protocol handing every datagram to ``recv_callback(data, addr)``."""

    def __init__(self, recv_callback: Callable[[bytes, Any], Any]) -> None:
        self.transport: Optional[asyncio.DatagramTransport] = None
        self.recv_callback = recv_callback

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint always gets a DatagramTransport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.recv_callback(data, addr)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.transport is not None:
            self.transport.close()
