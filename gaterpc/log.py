"""Logging helpers: colour formatter and non-blocking queue logging.

Records logged through :class:`AQueueHandler` are formatted on the calling
thread and put on an unbounded queue with ``put_nowait``; a background
thread owned by a listener writes them with the real handler (e.g. a
``TimedRotatingFileHandler``).  No log call ever blocks the event loop on
file I/O.

Unlike the original, :class:`AQueueListener` needs no running event loop:
it keeps its documented API (``queue``, ``add_handlers``, ``remove_handler``,
``dequeue``/``handle`` coroutines, ``start``, ``stop``...) but writes on a
thread, so logging works outside a loop and across several event loops
(fixes S1 and L2).  Listeners survive ``fork()``: the child gets a fresh
queue and starts its own thread on first use.  At interpreter exit the
queues are drained before ``logging.shutdown`` closes the handlers.

:class:`JsonFormatter` and :func:`console_logging_config` are what the
``gaterpc`` command line uses: logs on the console (stderr) as text or as
one JSON object per line, through the same queue logging, plus a file only
when ``--log-file`` is given.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import logging.handlers
import os
import queue
import threading
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, Iterable, Optional, Tuple, Type, Union

from gaterpc.helpers import resolve_module_attr, singleton

if TYPE_CHECKING:
    from queue import SimpleQueue

_ExcInfo = Union[
    Tuple[Type[BaseException], BaseException, Optional[TracebackType]],
    Tuple[None, None, None],
]

__all__ = (
    "ColorFormatter",
    "AQueueHandler",
    "AQueueListener",
    "QueueListener",
    "singleton_aqueue_listener",
    "singleton_queue_listener",
    "JsonFormatter",
    "console_logging_config",
)

_COLOR_NAMES = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")
_FOREGROUND = {name: f"3{i}" for i, name in enumerate(_COLOR_NAMES)}
_BACKGROUND = {name: f"4{i}" for i, name in enumerate(_COLOR_NAMES)}
_OPTIONS = {"bold": "1", "underscore": "4", "blink": "5", "reverse": "7", "conceal": "8"}
_RESET = "0"


class ColorFormatter(logging.Formatter):
    """``logging.Formatter`` that colours the message by level with ANSI codes.

    The colour is applied to the formatted output only; the record's
    ``msg`` is restored afterwards, so other handlers see it unchanged.
    """

    @staticmethod
    def colorize(text: Any = "", opts: Iterable[str] = (), **kwargs: str) -> str:
        """Wrap ``text`` in ANSI codes (``fg=``/``bg=`` colour names, ``opts``).

        ``colorize(opts=("reset",))`` returns the reset sequence; the
        ``"noreset"`` option leaves the colour switched on after the text.
        """
        opts = tuple(opts)
        if text == "" and opts == ("reset",):
            return f"\x1b[{_RESET}m"
        codes = []
        for key, value in kwargs.items():
            if key == "fg":
                codes.append(_FOREGROUND[value])
            elif key == "bg":
                codes.append(_BACKGROUND[value])
        codes.extend(_OPTIONS[o] for o in opts if o in _OPTIONS)
        body = f"{text or ''}"
        if "noreset" not in opts:
            body = f"{body}\x1b[{_RESET}m"
        return f"\x1b[{';'.join(codes)}m{body}"

    @classmethod
    def set_color(cls, levelname: str, msg: Any) -> Any:
        """Colour ``msg`` for ``levelname``; unknown levels are returned unchanged."""
        if levelname in ("CRITICAL", "FATAL"):
            return cls.colorize(msg, fg="red", opts=("bold", "reverse"))
        if levelname == "ERROR":
            return cls.colorize(msg, fg="red", opts=("bold",))
        if levelname in ("WARN", "WARNING"):
            return cls.colorize(msg, fg="yellow", opts=("bold",))
        if levelname == "INFO":
            return cls.colorize(msg, fg="green")
        if levelname == "DEBUG":
            return cls.colorize(msg, fg="magenta", opts=("bold",))
        return msg

    def format(self, record: logging.LogRecord) -> str:
        original = record.msg
        record.msg = self.set_color(record.levelname, original)
        try:
            return super().format(record)
        finally:
            record.msg = original

    def formatException(self, ei: _ExcInfo) -> str:  # noqa: N802 (stdlib name)
        return self.colorize(super().formatException(ei), fg="red", opts=("bold", "reverse"))


class _FlushMarker:
    """Queue item that makes the listener thread set an event once reached."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


_listeners: "weakref.WeakSet[QueueListener]" = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()
_shutting_down = False


def _install_process_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
    # Registered after ``logging`` registered ``logging.shutdown``, so it runs
    # first at exit: queued records are written before handlers close.
    atexit.register(_stop_all_listeners)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_reset_listeners_after_fork)


def _stop_all_listeners() -> None:
    global _shutting_down
    _shutting_down = True
    for listener in list(_listeners):
        listener._shutdown()


def _reset_listeners_after_fork() -> None:
    for listener in list(_listeners):
        listener._after_fork()


class QueueListener(logging.handlers.QueueListener):
    """Thread-based listener that writes queued records with registered handlers.

    ``handlers`` are registered by name; a record carrying ``h_name`` is
    given only to the handler of that name (honouring its level when
    ``respect_handler_level``), a record without it to every handler.
    The thread is started at construction (and again lazily if needed,
    e.g. in a forked child); ``stop()`` drains the queue and joins it.
    """

    queue: SimpleQueue[Any]

    def __init__(self, handlers: Optional[Iterable[logging.Handler]] = None, respect_handler_level: bool = True) -> None:
        super().__init__(queue.SimpleQueue(), respect_handler_level=respect_handler_level)
        self._handlers: dict[Optional[str], logging.Handler] = {}
        self._lock = threading.Lock()
        if handlers:
            self.add_handlers(handlers)
        _install_process_hooks()
        _listeners.add(self)
        self.start()

    # -- registration -------------------------------------------------------
    def add_handlers(self, handlers: Iterable[logging.Handler]) -> None:
        """Register handlers (by ``handler.name``; unnamed ones get a name)."""
        with self._lock:
            for handler in handlers:
                if not handler.name:
                    handler.name = f"QueueHandler{id(handler)}-handler"
                self._handlers[handler.name] = handler
            self.handlers = tuple(self._handlers.values())

    def remove_handler(self, handler: logging.Handler) -> None:
        """Unregister ``handler``; records addressed to it are dropped afterwards."""
        with self._lock:
            if self._handlers.get(handler.name) is handler:
                del self._handlers[handler.name]
            self.handlers = tuple(self._handlers.values())

    # -- thread -------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (no-op if it is already running)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._owner_pid = os.getpid()
            thread = threading.Thread(target=self._monitor, name=f"{type(self).__name__}-{id(self):x}", daemon=True)
            self._thread = thread
            thread.start()

    def stop(self) -> None:
        """Write everything queued so far, then stop the thread and join it."""
        thread = self._thread
        if thread is None:
            return
        self.enqueue_sentinel()
        if thread is not threading.current_thread():
            thread.join()
        self._thread = None

    def enqueue(self, record: Any) -> None:
        """Queue ``record`` without blocking (starting the thread if needed)."""
        if self._thread is None or self._owner_pid != os.getpid():
            if _shutting_down:
                # No new threads at exit: write synchronously instead.
                self._dispatch(record)
                return
            self.start()
        self.queue.put_nowait(record)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (at most ``timeout`` s) until records queued so far are written."""
        thread = self._thread
        if thread is None or thread is threading.current_thread() or not thread.is_alive():
            return True
        marker = _FlushMarker()
        self.queue.put_nowait(marker)
        return marker.event.wait(timeout)

    def _monitor(self) -> None:
        q = self.queue
        sentinel: object = getattr(self, "_sentinel")  # private in the stdlib, absent from its stubs
        while True:
            record = q.get()
            if record is sentinel:
                break
            if type(record) is _FlushMarker:
                record.event.set()
                continue
            try:
                self._dispatch(record)
            except Exception:  # noqa: BLE001 - the writer thread must survive
                pass

    def _shutdown(self) -> None:
        if self._thread is not None and self._owner_pid == os.getpid():
            try:
                self.stop()
            except Exception:  # noqa: BLE001
                pass

    def _after_fork(self) -> None:
        # The parent's thread does not exist here and its queue may be
        # inconsistent: start afresh on the next record.
        self.queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = None

    # -- dispatch -----------------------------------------------------------
    def handle(self, record: logging.LogRecord) -> None:
        """Give ``record`` to the handler named by ``record.h_name`` (or all)."""
        self._dispatch(record)

    def _dispatch(self, record: logging.LogRecord) -> None:
        record = self.prepare(record)
        name = getattr(record, "h_name", None)
        if name is None:
            targets: Iterable[logging.Handler] = self.handlers
        else:
            handler = self._handlers.get(name)
            if handler is None:
                return
            targets = (handler,)
        for handler in targets:
            if not self.respect_handler_level or record.levelno >= handler.level:
                handler.handle(record)


class AQueueListener(QueueListener):
    """The listener used by the default logging configuration.

    Same API as the original's asyncio listener (``dequeue`` and ``handle``
    are coroutines), but the records are written on a thread, so it works
    with or without a running event loop and across event loops.
    """

    # dequeue and handle are coroutines here, as in the original's listener.
    async def dequeue(self, block: bool = True) -> Any:  # type: ignore[override]
        """Wait for the next queued item without blocking the event loop."""
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            if not block:
                raise
        return await asyncio.get_running_loop().run_in_executor(None, self.queue.get)

    async def handle(self, record: logging.LogRecord) -> None:  # type: ignore[override]
        """Write ``record`` with its handler (see :meth:`QueueListener.handle`)."""
        self._dispatch(record)


class AQueueHandler(logging.Handler):
    """Handler that formats records and hands them to a background listener.

    ``handler_class`` (a class or dotted path; default
    ``logging.StreamHandler``) is instantiated with ``*args, **kwargs``
    (e.g. ``filename``, ``when``, ``backupCount``) and registered with the
    listener returned by the zero-argument callable ``listener`` (a dotted
    path or the callable itself).  Records are prepared like the standard
    ``QueueHandler`` does and queued with ``put_nowait``: ``emit`` never
    blocks.  (It deliberately does not subclass ``QueueHandler``, whose
    ``listener`` key ``dictConfig`` interprets differently since 3.12.)
    """

    def __init__(self, *args: Any, handler_class: Any = None, listener: Any = "gaterpc.utils.singleton_aqueue_listener", **kwargs: Any) -> None:
        if handler_class is None:
            handler_class = logging.StreamHandler
        elif isinstance(handler_class, str):
            handler_class = resolve_module_attr(handler_class)
        # Built before this handler registers itself with logging, so that
        # logging.shutdown() flushes/closes this handler before the inner one.
        handler = handler_class(*args, **kwargs)
        handler.name = f"QueueHandler{id(handler)}-handler"
        if isinstance(listener, str):
            listener = resolve_module_attr(listener)
        listener_obj = listener() if callable(listener) else listener
        listener_obj.add_handlers([handler])
        super().__init__()
        self.handler = handler
        self.h_name = handler.name
        self.listener = listener_obj

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Copy the record with the formatted text as message, tagged with ``h_name``."""
        # QueueHandler.prepare only formats and copies the record: it needs no queue.
        record = logging.handlers.QueueHandler.prepare(self, record)  # type: ignore[arg-type]
        record.h_name = self.h_name
        return record

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the prepared record on the listener (never blocks)."""
        try:
            prepared = self.prepare(record)
            enqueue = getattr(self.listener, "enqueue", None)
            if enqueue is not None:
                enqueue(prepared)
            else:
                self.listener.queue.put_nowait(prepared)
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)

    def flush(self) -> None:
        """Wait briefly until this handler's queued records are written."""
        flush = getattr(self.listener, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        """Write pending records, unregister and close the inner handler."""
        try:
            self.flush()
            remove = getattr(self.listener, "remove_handler", None)
            if remove is not None:
                remove(self.handler)
            self.handler.close()
        finally:
            super().close()


singleton_aqueue_listener = singleton(AQueueListener)
"""Process-wide :class:`AQueueListener` factory (referenced by dotted path)."""

singleton_queue_listener = singleton(QueueListener)
"""Process-wide :class:`QueueListener` factory (referenced by dotted path)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, ``process``, and ``exc`` (the traceback text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime
        import json

        out = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def console_logging_config(level: str = "INFO", fmt: str = "text", log_file: Optional[str] = None) -> dict[str, Any]:
    """A ``dictConfig`` dict: gaterpc (and root) logs to stderr as ``fmt`` ("text" or "json").

    Records go through :class:`AQueueHandler` (written on the listener's
    thread, never blocking the loop).  With ``log_file`` they are also
    written to that file (same format, rotated at midnight, 10 kept).
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    level = str(level).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"log level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {level!r}")
    formatter = {"()": "gaterpc.log.JsonFormatter"} if fmt == "json" else {"format": _TEXT_FORMAT}
    handlers: dict[str, dict[str, Any]] = {
        "console": {
            "class": "gaterpc.log.AQueueHandler",
            "handler_class": "logging.StreamHandler",
            "listener": "gaterpc.log.singleton_queue_listener",
            "formatter": "main",
            "level": level,
        },
    }
    if log_file:
        handlers["file"] = {
            "class": "gaterpc.log.AQueueHandler",
            "handler_class": "logging.handlers.TimedRotatingFileHandler",
            "listener": "gaterpc.log.singleton_queue_listener",
            "filename": str(log_file),
            "when": "midnight",
            "backupCount": 10,
            "formatter": "main",
            "level": level,
        }
    names = list(handlers)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": handlers,
        "loggers": {
            "gaterpc": {"level": level, "handlers": names, "propagate": False},
            "asyncio": {"level": "WARNING", "handlers": names, "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": names},
    }
