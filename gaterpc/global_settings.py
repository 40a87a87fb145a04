"""Global settings of gaterpc: ``GlobalSettings`` and the ``Settings`` singleton.

Every component reads its configuration from :data:`Settings` at the time
of use.  Settings come in three kinds:

* plain class attributes (``TIMEOUT``, ``ZMQ_SOCK``, protocol constants);
  assigning one creates an instance attribute;
* :class:`~gaterpc.lazy.LazyAttribute` raw values (``DEBUG``,
  ``ENVIRONMENT``), validated on assignment and shared class-wide;
* derived :class:`~gaterpc.lazy.LazyAttribute` values (paths,
  ``REPLY_TIMEOUT``, ``ZAP_ADDR``, ``MDP_CLIENT``, logging dicts), rendered
  on first read and cached per instance.

Unlike the original, the render cache is cleared by *every* assignment
(instance or class level), so derived values always follow their inputs
and a ``LazyAttribute`` installed by :meth:`GlobalSettings.configure`
or by class assignment gets its name bound.

Importing this module creates nothing on disk and starts nothing; the
directories are created when the path settings are first read.
"""

from __future__ import annotations

import os
import weakref
from importlib import import_module
from logging.config import dictConfig
from pathlib import Path
from typing import Any, cast

import zmq.constants as z_const

from gaterpc.helpers import UnixEPollEventLoopPolicy
from gaterpc.lazy import LazyAttribute, TypeValidator, empty, ensure_mkdir

__all__ = (
    "GlobalSettings",
    "Settings",
    "user_settings_render",
    "logging_render",
    "logging_process",
    "debug_format",
    "verbose_format",
    "simple_format",
    # re-exports
    "LazyAttribute",
    "TypeValidator",
    "UnixEPollEventLoopPolicy",
    "empty",
    "ensure_mkdir",
    "Path",
    "import_module",
    "dictConfig",
    "os",
    "z_const",
)

_CACHE_KEY = LazyAttribute._CACHE_KEY


# The concrete Path class of this platform is only known at run time.
class _AutoLogPath(type(Path())):  # type: ignore[misc]
    """A log file name filled in by :func:`logging_render` (not by the user).

    Marking it lets a later render move it when ``LOG_PATH`` changes.
    """


def user_settings_render(settings: "GlobalSettings", user_settings: Any) -> Any:
    """Render ``USER_SETTINGS``: import a dotted path, ``empty`` → ``None``."""
    if isinstance(user_settings, str):
        return import_module(user_settings)
    if user_settings is empty:
        return None
    return user_settings


def logging_render(settings: "GlobalSettings", logging: Any) -> dict[str, Any]:
    """Render ``LOGGING``/``DEFAULT_LOGGING``.

    ``empty`` → a new empty dict.  Otherwise every handler whose
    ``"filename"`` is ``empty`` gets ``LOG_PATH / "<handler name>.log"``
    (the dict is updated in place and returned).  File names filled in by
    an earlier render follow a changed ``LOG_PATH``.
    """
    if logging is empty:
        return {}
    handlers = logging.get("handlers") or {}
    log_path = None
    for name, handler in handlers.items():
        filename = handler.get("filename", None)
        if filename is empty or type(filename) is _AutoLogPath:
            if log_path is None:
                log_path = settings.LOG_PATH
            wanted = _AutoLogPath(log_path.joinpath(f"{name}.log"))
            if filename is empty or filename != wanted:
                handler["filename"] = wanted
    return cast("dict[str, Any]", logging)


def logging_process(settings: "GlobalSettings", logging: Any) -> dict[str, Any]:
    """Validate an assigned logging config: it must be a dict (else ``TypeError``)."""
    return cast("dict[str, Any]", TypeValidator(dict)(logging))


def _int_process(settings: "GlobalSettings", value: Any) -> int:
    return cast(int, TypeValidator(int)(value))


def _chunk_size_process(settings: "GlobalSettings", value: Any) -> int:
    """A chunk size in bytes, 0 for "off": an ``int`` (not a ``bool``) of at least 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a chunk size is an int (bytes; 0: off), not {value!r}")
    if value < 0:
        raise ValueError(f"a chunk size is at least 0 (0: off), not {value}")
    return value


#: The smallest HugeData flow-control window (the client credits whole 256 KiB segments).
MIN_HUGE_WINDOW = 1024 * 1024


def _window_process(settings: "GlobalSettings", value: Any) -> int:
    """A HugeData window in bytes: 0 (off) or an ``int`` of at least ``MIN_HUGE_WINDOW``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"HUGE_DATA_WINDOW is an int (bytes; 0: off), not {value!r}")
    if value and value < MIN_HUGE_WINDOW:
        raise ValueError(f"HUGE_DATA_WINDOW is 0 (off) or at least {MIN_HUGE_WINDOW} bytes, not {value}")
    return value


def _dict_process(settings: "GlobalSettings", value: Any) -> dict[str, str]:
    return cast("dict[str, str]", TypeValidator(dict)(value))


def _path_process(settings: "GlobalSettings", value: Any) -> Path:
    return cast(Path, TypeValidator(Path)(value))


def _base_path_render(settings: "GlobalSettings", raw: Path) -> Path:
    return ensure_mkdir(raw)


def _run_path_render(settings: "GlobalSettings", raw: Any) -> Path:
    return ensure_mkdir(settings.BASE_PATH.joinpath("run/") if raw is empty else raw)


def _log_path_render(settings: "GlobalSettings", raw: Any) -> Path:
    return ensure_mkdir(settings.BASE_PATH.joinpath("log/") if raw is empty else raw)


def _zap_addr_render(settings: "GlobalSettings", raw: Any) -> str:
    if raw is empty:
        return f"ipc://{settings.RUN_PATH.joinpath('gate.zap').as_posix()}"
    return cast(str, raw)


def _heartbeat_interval_render(settings: "GlobalSettings", raw: Any) -> int:
    return settings.HEARTBEAT if raw is empty else raw


def _reply_timeout_render(settings: "GlobalSettings", raw: Any) -> float:
    return 2 * settings.TIMEOUT if raw is empty else raw


def _mdp_client_render(settings: "GlobalSettings", raw: Any) -> bytes:
    # The configured raw value is ignored on purpose (S4: it is the wire).
    return f"MDPC{settings.MDP_VERSION}".encode("utf-8")


def _mdp_worker_render(settings: "GlobalSettings", raw: Any) -> bytes:
    return f"MDPW{settings.MDP_VERSION}".encode("utf-8")


def _gate_member_render(settings: "GlobalSettings", raw: Any) -> bytes:
    return f"GATE{settings.GATE_VERSION}".encode("utf-8")


debug_format = (
    "%(asctime)s %(name)s "
    "[%(processName)s(%(process)d):%(threadName)s(%(thread)d)]\n"
    "%(pathname)s[%(funcName)s:%(lineno)d] \n"
    "- %(levelname)s %(message)s"
)
verbose_format = "%(asctime)s %(name)s %(module)s.[%(funcName)s:%(lineno)d] \n- %(levelname)s %(message)s"
simple_format = "%(asctime)s %(name)s %(module)s - %(levelname)s %(message)s"


def _queue_file_handler(formatter: str) -> dict[str, Any]:
    return {
        "level": "DEBUG",
        "class": "gaterpc.utils.AQueueHandler",
        "handler_class": "logging.handlers.TimedRotatingFileHandler",
        "listener": "gaterpc.utils.singleton_aqueue_listener",
        "filename": empty,
        "formatter": formatter,
        "when": "midnight",
        "backupCount": 10,
    }


_DEFAULT_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "debug": {"()": "gaterpc.utils.ColorFormatter", "format": debug_format},
        "verbose": {"format": verbose_format},
        "console": {"()": "gaterpc.utils.ColorFormatter", "format": verbose_format},
    },
    "handlers": {
        "asyncio": _queue_file_handler("debug"),
        "gaterpc": _queue_file_handler("verbose"),
        "console": {"level": "DEBUG", "class": "logging.StreamHandler", "formatter": "console"},
    },
    "loggers": {
        "multiprocessing": {"handlers": ["gaterpc", "console"], "propagate": False, "level": "DEBUG"},
        "asyncio": {"level": "INFO", "handlers": ["asyncio"], "propagate": False},
        "gaterpc": {"level": "INFO", "handlers": ["gaterpc"], "propagate": True},
        "gaterpc.zap": {"level": "INFO", "handlers": ["gaterpc"], "propagate": False},
        "commands": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}


def _clear_render_cache(instance: Any) -> None:
    cache = instance.__dict__.get(_CACHE_KEY)
    if cache:
        cache.clear()


class _SettingsMeta(type):
    """Metaclass: class-level assignments clear every instance's render cache
    and bind the name of an assigned LazyAttribute."""

    def __setattr__(cls, name: str, value: Any) -> None:
        if isinstance(value, LazyAttribute):
            value.__set_name__(cls, name)
        super().__setattr__(name, value)
        for instance in list(cls.__dict__.get("_instances", ())):
            _clear_render_cache(instance)

    def __delattr__(cls, name: str) -> None:
        super().__delattr__(name)
        for instance in list(cls.__dict__.get("_instances", ())):
            _clear_render_cache(instance)


class GlobalSettings(metaclass=_SettingsMeta):
    """All gaterpc settings; use the :data:`Settings` instance.

    Call :meth:`setup` once at start-up (inside or outside the event loop)
    to apply a user settings module, keyword options, environment variables
    and the logging configuration.
    """

    _instances: "weakref.WeakSet[GlobalSettings]" = weakref.WeakSet()

    # system
    DEBUG: LazyAttribute[int] = LazyAttribute(raw=0, process=_int_process)
    ENVIRONMENT: LazyAttribute[dict[str, str]] = LazyAttribute(raw={}, process=_dict_process)
    BASE_PATH: LazyAttribute[Path] = LazyAttribute(Path("/tmp/gate-rpc/"), render=_base_path_render, process=_path_process)
    RUN_PATH: LazyAttribute[Path] = LazyAttribute(render=_run_path_render, process=_path_process)
    LOG_PATH: LazyAttribute[Path] = LazyAttribute(render=_log_path_render, process=_path_process)
    USER_SETTINGS = LazyAttribute(render=user_settings_render)
    WINDOWS_MAX_WORKERS: int = 61
    WORKER_ADDR: str = "ipc:///tmp/gate-rpc/w1"
    SECURE: bool = True
    # timing
    HEARTBEAT: int = 5000  # milliseconds
    TIMEOUT: float = 30.0  # seconds
    MDP_HEARTBEAT_INTERVAL: LazyAttribute[int] = LazyAttribute(render=_heartbeat_interval_render)
    MDP_HEARTBEAT_LIVENESS: int = 3
    REPLY_TIMEOUT: LazyAttribute[float] = LazyAttribute(render=_reply_timeout_render)
    ZAP_REPLY_TIMEOUT: float = 5.0
    # ZeroMQ
    ZMQ_CONTEXT: dict[int, Any] = {}
    ZMQ_SOCK: dict[int, Any] = {z_const.SocketOption.HWM: 3000}
    # ZAP
    ZAP_VERSION: bytes = b"1.0"
    ZAP_DEFAULT_DOMAIN: str = "gate"
    ZAP_MECHANISM_NULL: bytes = b"NULL"
    ZAP_MECHANISM_PLAIN: bytes = b"PLAIN"
    ZAP_MECHANISM_CURVE: bytes = b"CURVE"
    ZAP_MECHANISM_GSSAPI: bytes = b"GSSAPI"
    ZAP_PLAIN_DEFAULT_USER: str = "\u5821\u5792"
    ZAP_PLAIN_DEFAULT_PASSWORD: str = "\u54d4" * 5
    ZAP_ADDR: LazyAttribute[str] = LazyAttribute(render=_zap_addr_render)
    # MDP
    MDP_INTERNAL_SERVICE: str = "Gate"
    MDP_VERSION: str = "01"
    MDP_CLIENT: LazyAttribute[bytes] = LazyAttribute(render=_mdp_client_render)
    MDP_WORKER: LazyAttribute[bytes] = LazyAttribute(render=_mdp_worker_render)
    MDP_COMMAND_READY: bytes = b"\x01"
    MDP_COMMAND_REQUEST: bytes = b"\x02"
    MDP_COMMAND_REPLY: bytes = b"\x03"
    MDP_COMMAND_HEARTBEAT: bytes = b"\x04"
    MDP_COMMAND_DISCONNECT: bytes = b"\x05"
    MDP_DESCRIPTION_SEP: str = ":"
    # RPC
    MESSAGE_MAX: int = 5000
    STREAM_REPLY_MAXSIZE: int = 1024
    STREAM_GENERATOR_TAG: bytes = b"GateStreamGenerator"
    STREAM_EXCEPT_TAG: bytes = b"GateStreamException"
    STREAM_END_TAG: bytes = b"GateStreamEnd"
    STREAM_HUGE_DATA_TAG: bytes = b"GateStreamHugData"
    HUGE_DATA_SIZEOF: int = 1000
    # Chunk size of a HugeData whose blksize was left at its default when the
    # caller is a client of this implementation (it takes chunks of any size;
    # gaterpc.protocol.own_request_id): fewer, larger messages.  0: the
    # HugeData's blksize for every caller.  An explicit blksize is always kept.
    HUGE_DATA_NATIVE_SIZEOF: LazyAttribute[int] = LazyAttribute(raw=64 * 1024, process=_chunk_size_process)
    # HugeData flow control between our roles: a worker sends at most this many
    # compressed bytes beyond what the client says it has processed (CREDIT
    # messages, docs/PROTOCOL.md "HugeData flow control").  On a client, 0 sends
    # no credits; on a worker, 0 ignores them.  At least 1 MiB when not 0.
    HUGE_DATA_WINDOW: LazyAttribute[int] = LazyAttribute(raw=4 * 1024 * 1024, process=_window_process)
    HUGE_DATA_COMPRESS_MODULE: str = "gzip"
    HUGE_DATA_COMPRESS_LEVEL: int = 1
    HUGE_DATA_END_TAG: bytes = b"HugeDataEND"
    HUGE_DATA_EXCEPT_TAG: bytes = b"HugeDataException"
    SERVICE_DEFAULT_NAME: str = "GateRPC"
    # Gate cluster
    GATE_CLUSTER_NAME: str = "GateCluster"
    GATE_CLUSTER_DESCRIPTION: str = "GateRPC cluster service"
    GATE_VERSION: str = "01"
    GATE_MEMBER: LazyAttribute[bytes] = LazyAttribute(render=_gate_member_render)
    GATE_CURVE_PUBKEY: bytes = b""
    GATE_CURVE_KEY: bytes = b""
    GATE_IP_VERSION: int = 4
    GATE_MULTICAST_GROUP: str = "224.0.7.7"
    GATE_MULTICAST_PORT: int = 9777
    GATE_MULTICAST_TTL: int = 2
    GATE_MULTICAST_HOP_LIMIT: int = 255
    # Additions (not in the original): the address the gate ROUTER binds
    # (None: every interface, as the original) and the interface multicast
    # discovery uses (None: the system's choice, as the original).
    GATE_BIND_ADDR: str | None = None
    GATE_MULTICAST_INTERFACE: str | None = None
    # Additions: the process-wide budget of messages waiting in socket
    # backlogs (every socket, every peer; see gaterpc.loopio).  A message
    # that would exceed it is refused with an error instead of queued.
    BACKLOG_MAX_MESSAGES: int = 1_000_000
    BACKLOG_MAX_BYTES: int = 256 * 1024 * 1024
    # Addition: the scheduling policy of the I/O threads of the contexts
    # gaterpc creates (``Context``), where the system allows it (Linux).
    # Woken by every message, under the default policy they preempt the event
    # loop's thread once per message of a burst: with more busy processes than
    # cores each call then costs more CPU.  Under SCHED_BATCH they do not, at
    # the price of some latency per hop on a lightly loaded host.
    # "auto": SCHED_BATCH while this process's threads wait for a core as long
    # as they run, the default policy otherwise (gaterpc.iosched); True:
    # always SCHED_BATCH; False: always the system's default policy.
    ZMQ_IO_THREAD_BATCH: bool | str = "auto"
    GATE_COMMAND_NOTICE: bytes = b"\x00"
    GATE_COMMAND_INVITE: bytes = b"\x01"
    GATE_COMMAND_JOIN: bytes = b"\x02"
    GATE_COMMAND_WHISPER: bytes = b"\x03"
    GATE_COMMAND_HEARTBEAT: bytes = b"\x04"
    GATE_COMMAND_LEAVE: bytes = b"\x05"
    # logging
    DEFAULT_LOGGING: LazyAttribute[dict[str, Any]] = LazyAttribute(_DEFAULT_LOGGING, render=logging_render, process=logging_process)
    LOGGING: LazyAttribute[dict[str, Any]] = LazyAttribute(render=logging_render, process=logging_process)

    def __init__(self) -> None:
        type(self)._instances.add(self)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        # Derived settings must follow plain assignments too.
        _clear_render_cache(self)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        _clear_render_cache(self)

    def configure(self, name: str, value: Any) -> None:
        """Set one setting.

        A :class:`LazyAttribute` value is installed on the class (all
        instances) with its name bound; any other value is assigned to this
        instance (validated for LazyAttribute-backed names).  The render
        cache is cleared.
        """
        if isinstance(value, LazyAttribute):
            value.__set_name__(GlobalSettings, name)
            setattr(GlobalSettings, name, value)
        else:
            setattr(self, name, value)
        _clear_render_cache(self)

    def setup(self, **options: Any) -> None:
        """Apply the settings and configure logging, in this order:

        1. upper-case names of ``USER_SETTINGS``; 2. upper-case keyword
        ``options`` (others are ignored); 3. create ``BASE_PATH``,
        ``RUN_PATH``, ``LOG_PATH``; 4. ``DEBUG`` → ``PYTHONASYNCIODEBUG``;
        5. copy ``ENVIRONMENT`` into ``os.environ``; 6. ``dictConfig`` of
        ``LOGGING`` if set, else of ``DEFAULT_LOGGING`` (switched to debug
        levels when ``DEBUG > 0``).  Works inside or outside an event loop.
        """
        user_settings = self.USER_SETTINGS
        if user_settings:
            for name in dir(user_settings):
                if name.isupper() and not name.startswith("_"):
                    self.configure(name, getattr(user_settings, name))
        for name, value in options.items():
            if not name.isupper():
                continue
            self.configure(name, value)

        ensure_mkdir(self.BASE_PATH)
        ensure_mkdir(self.RUN_PATH)
        ensure_mkdir(self.LOG_PATH)
        if self.DEBUG:
            self.ENVIRONMENT["PYTHONASYNCIODEBUG"] = "1"
        for name, value in self.ENVIRONMENT.items():
            os.environ[name] = value

        user_logging = self.LOGGING
        if user_logging:
            dictConfig(user_logging)
        else:
            default_logging = self.DEFAULT_LOGGING
            if self.DEBUG > 0:
                default_logging["handlers"]["gaterpc"]["formatter"] = "debug"
                for logger in default_logging["loggers"].values():
                    logger["level"] = "DEBUG"
            dictConfig(default_logging)


Settings = GlobalSettings()
"""The settings object every gaterpc component reads."""
