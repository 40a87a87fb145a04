"""Global settings: defaults, kinds, derivations, configure, setup."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import zmq.constants as z_const

from gaterpc import global_settings as gs
from gaterpc.global_settings import GlobalSettings, Settings
from gaterpc.lazy import LazyAttribute, TypeValidator, empty

PLAIN_DEFAULTS = {
    "WINDOWS_MAX_WORKERS": 61,
    "WORKER_ADDR": "ipc:///tmp/gate-rpc/w1",
    "SECURE": True,
    "HEARTBEAT": 5000,
    "TIMEOUT": 30.0,
    "MDP_HEARTBEAT_LIVENESS": 3,
    "ZAP_REPLY_TIMEOUT": 5.0,
    "ZMQ_CONTEXT": {},
    "ZMQ_SOCK": {z_const.SocketOption.HWM: 3000},
    "ZAP_VERSION": b"1.0",
    "ZAP_DEFAULT_DOMAIN": "gate",
    "ZAP_MECHANISM_NULL": b"NULL",
    "ZAP_MECHANISM_PLAIN": b"PLAIN",
    "ZAP_MECHANISM_CURVE": b"CURVE",
    "ZAP_MECHANISM_GSSAPI": b"GSSAPI",
    "ZAP_PLAIN_DEFAULT_USER": bytes.fromhex("e5a0a1e59e92").decode(),
    "ZAP_PLAIN_DEFAULT_PASSWORD": "\u54d4" * 5,
    "MDP_INTERNAL_SERVICE": "Gate",
    "MDP_VERSION": "01",
    "MDP_COMMAND_READY": b"\x01",
    "MDP_COMMAND_REQUEST": b"\x02",
    "MDP_COMMAND_REPLY": b"\x03",
    "MDP_COMMAND_HEARTBEAT": b"\x04",
    "MDP_COMMAND_DISCONNECT": b"\x05",
    "MDP_DESCRIPTION_SEP": ":",
    "MESSAGE_MAX": 5000,
    "STREAM_REPLY_MAXSIZE": 1024,
    "STREAM_GENERATOR_TAG": b"GateStreamGenerator",
    "STREAM_EXCEPT_TAG": b"GateStreamException",
    "STREAM_END_TAG": b"GateStreamEnd",
    "STREAM_HUGE_DATA_TAG": b"GateStreamHugData",
    "HUGE_DATA_SIZEOF": 1000,
    "HUGE_DATA_COMPRESS_MODULE": "gzip",
    "HUGE_DATA_COMPRESS_LEVEL": 1,
    "HUGE_DATA_END_TAG": b"HugeDataEND",
    "HUGE_DATA_EXCEPT_TAG": b"HugeDataException",
    "SERVICE_DEFAULT_NAME": "GateRPC",
    "GATE_CLUSTER_NAME": "GateCluster",
    "GATE_CLUSTER_DESCRIPTION": "GateRPC cluster service",
    "GATE_VERSION": "01",
    "GATE_CURVE_PUBKEY": b"",
    "GATE_CURVE_KEY": b"",
    "GATE_IP_VERSION": 4,
    "GATE_MULTICAST_GROUP": "224.0.7.7",
    "GATE_MULTICAST_PORT": 9777,
    "GATE_MULTICAST_TTL": 2,
    "GATE_MULTICAST_HOP_LIMIT": 255,
    "GATE_COMMAND_NOTICE": b"\x00",
    "GATE_COMMAND_INVITE": b"\x01",
    "GATE_COMMAND_JOIN": b"\x02",
    "GATE_COMMAND_WHISPER": b"\x03",
    "GATE_COMMAND_HEARTBEAT": b"\x04",
    "GATE_COMMAND_LEAVE": b"\x05",
}
LAZY_NAMES = ("DEBUG", "ENVIRONMENT", "BASE_PATH", "RUN_PATH", "LOG_PATH", "USER_SETTINGS", "ZAP_ADDR",
              "MDP_HEARTBEAT_INTERVAL", "MDP_CLIENT", "MDP_WORKER", "REPLY_TIMEOUT", "GATE_MEMBER",
              "DEFAULT_LOGGING", "LOGGING")


@pytest.mark.parametrize("name", sorted(PLAIN_DEFAULTS))
def test_plain_defaults(name):
    value = GlobalSettings.__dict__[name]
    assert not isinstance(value, LazyAttribute)
    assert value == PLAIN_DEFAULTS[name] and type(value) is type(PLAIN_DEFAULTS[name])


@pytest.mark.parametrize("name", LAZY_NAMES)
def test_lazy_kinds(name):
    assert isinstance(getattr(GlobalSettings, name), LazyAttribute)


def test_derived_defaults(clean_settings, tmp_path):
    s = clean_settings
    assert s.BASE_PATH == tmp_path
    assert s.DEBUG == 0 and s.ENVIRONMENT == {}
    assert s.USER_SETTINGS is None
    assert s.RUN_PATH == tmp_path / "run" and s.RUN_PATH.is_dir()
    assert s.LOG_PATH == tmp_path / "log" and s.LOG_PATH.is_dir()
    assert s.ZAP_ADDR == f"ipc://{(tmp_path / 'run' / 'gate.zap').as_posix()}"
    assert s.MDP_HEARTBEAT_INTERVAL == 5000
    assert s.REPLY_TIMEOUT == 60.0
    assert s.MDP_CLIENT == b"MDPC01" and s.MDP_WORKER == b"MDPW01" and s.GATE_MEMBER == b"GATE01"
    assert s.LOGGING == {} and not s.LOGGING


def test_base_path_default_is_library_constant():
    # Checked in a fresh interpreter, on the descriptor: reading
    # Settings.BASE_PATH would create it (and tests point it at tmp dirs).
    import subprocess
    import sys

    code = ("from gaterpc.global_settings import GlobalSettings;"
            "print(GlobalSettings.__dict__['BASE_PATH'].raw)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == Path("/tmp/gate-rpc/")


def test_validation_errors(clean_settings):
    s = clean_settings
    with pytest.raises(TypeError, match=r"require <class 'int'>\."):
        s.DEBUG = "1"
    s.DEBUG = True  # bool is an int
    with pytest.raises(TypeError, match=r"require <class 'dict'>\."):
        s.ENVIRONMENT = []
    with pytest.raises(TypeError, match=r"require <class 'pathlib(\._local)?\.Path'>\."):  # 3.13: pathlib._local.Path
        s.configure("BASE_PATH", "/tmp/x")
    with pytest.raises(TypeError, match=r"require <class 'pathlib(\._local)?\.Path'>\."):  # 3.13: pathlib._local.Path
        s.RUN_PATH = "/tmp/x"
    with pytest.raises(TypeError, match=r"require <class 'dict'>\."):
        s.LOGGING = "x"
    with pytest.raises(TypeError, match=r"require <class 'dict'>\."):
        s.DEFAULT_LOGGING = None


def test_plain_assignment_updates_derived_values(clean_settings):
    s = clean_settings
    assert s.REPLY_TIMEOUT == 60.0 and s.MDP_HEARTBEAT_INTERVAL == 5000
    s.TIMEOUT = 10.0
    assert s.REPLY_TIMEOUT == 20.0  # S2 fixed
    s.HEARTBEAT = 1000
    assert s.MDP_HEARTBEAT_INTERVAL == 1000
    s.MDP_VERSION = "02"
    assert s.MDP_CLIENT == b"MDPC02" and s.MDP_WORKER == b"MDPW02"
    s.GATE_VERSION = "03"
    assert s.GATE_MEMBER == b"GATE03"


def test_class_assignment_updates_derived_values(clean_settings):
    s = clean_settings
    assert s.REPLY_TIMEOUT == 60.0
    GlobalSettings.TIMEOUT = 4.0
    assert s.REPLY_TIMEOUT == 8.0


def test_configure_updates_derived_values(clean_settings, tmp_path):
    s = clean_settings
    assert s.REPLY_TIMEOUT == 60.0
    s.configure("TIMEOUT", 10.0)
    assert s.REPLY_TIMEOUT == 20.0
    s.configure("REPLY_TIMEOUT", 3.0)
    assert s.REPLY_TIMEOUT == 3.0
    other = tmp_path / "other"
    s.configure("BASE_PATH", other)
    assert s.RUN_PATH == other / "run" and s.RUN_PATH.is_dir()
    assert s.ZAP_ADDR.endswith("other/run/gate.zap")
    s.configure("ZAP_ADDR", "ipc:///x/zap")
    assert s.ZAP_ADDR == "ipc:///x/zap"
    s.configure("RUN_PATH", tmp_path / "elsewhere")
    assert s.RUN_PATH == tmp_path / "elsewhere" and s.RUN_PATH.is_dir()


def test_derived_constants_ignore_configured_value(clean_settings):
    s = clean_settings
    s.configure("MDP_CLIENT", b"XXX")
    s.configure("GATE_MEMBER", b"YYY")
    assert s.MDP_CLIENT == b"MDPC01" and s.GATE_MEMBER == b"GATE01"  # S4 kept


def test_storage_semantics(clean_settings):
    s = clean_settings
    other = GlobalSettings()
    s.TIMEOUT = 1.0
    assert "TIMEOUT" in s.__dict__ and other.TIMEOUT == 30.0
    s.DEBUG = 2
    assert other.DEBUG == 2  # LazyAttribute raw values are class-wide
    s.ZMQ_SOCK.update({z_const.SocketOption.SNDHWM: 10})
    assert GlobalSettings.ZMQ_SOCK[z_const.SocketOption.SNDHWM] == 10
    assert other.ZMQ_SOCK is s.ZMQ_SOCK
    assert isinstance(GlobalSettings.DEBUG, LazyAttribute)


def test_render_cache_location(clean_settings):
    s = clean_settings
    value = s.REPLY_TIMEOUT
    assert s.__dict__["_lazy_attribute_cache_"]["REPLY_TIMEOUT"] == value


def test_configure_lazy_attribute_with_render(clean_settings):
    s = clean_settings
    s.configure("MY_DERIVED", LazyAttribute(render=lambda inst, raw: inst.TIMEOUT * 3 if raw is empty else raw))
    assert isinstance(GlobalSettings.MY_DERIVED, LazyAttribute)
    assert s.MY_DERIVED == 90.0  # S3 fixed: the name is bound
    s.TIMEOUT = 1.0
    assert s.MY_DERIVED == 3.0
    s.MY_DERIVED = 7
    assert s.MY_DERIVED == 7


def test_configure_lazy_attribute_without_render(clean_settings):
    s = clean_settings
    s.configure("MY_RAW", LazyAttribute(raw=5, process=lambda inst, v: TypeValidator(int)(v)))
    assert s.MY_RAW == 5
    with pytest.raises(TypeError):
        s.MY_RAW = "x"


def test_configure_returns_none_and_accepts_any_case(clean_settings):
    s = clean_settings
    assert s.configure("lower_name", 1) is None
    assert s.lower_name == 1


def _write_module(tmp_path, monkeypatch, name, body):
    pkg = tmp_path / "mods"
    pkg.mkdir(exist_ok=True)
    (pkg / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_user_settings_module_path(clean_settings, tmp_path, monkeypatch):
    name = _write_module(tmp_path, monkeypatch, "gaterpc_test_user_settings_a", f"""
        from pathlib import Path
        DEBUG = 0
        TIMEOUT = 10.0
        HEARTBEAT = 2000
        MESSAGE_MAX = 20000
        A1_B = "digits ok"
        _HIDDEN = 1
        lower = 2
        BASE_PATH = Path({str(tmp_path / 'from-module')!r})
    """)
    s = clean_settings
    s.DEBUG = 1
    s.configure("USER_SETTINGS", name)
    assert s.USER_SETTINGS.__name__ == name
    monkeypatch.delitem(sys.modules, name)
    s.setup(SECURE=False, MESSAGE_MAX=1, lower_option=5)
    assert s.DEBUG == 0  # the module wins over an earlier direct assignment
    assert s.REPLY_TIMEOUT == 20.0 and s.MDP_HEARTBEAT_INTERVAL == 2000
    assert s.MESSAGE_MAX == 1  # options are applied after the module
    assert s.SECURE is False
    assert s.A1_B == "digits ok"
    assert not hasattr(s, "_HIDDEN") and not hasattr(s, "lower") and not hasattr(s, "lower_option")
    assert s.BASE_PATH == tmp_path / "from-module"
    assert s.RUN_PATH == tmp_path / "from-module" / "run" and s.RUN_PATH.is_dir()
    assert s.LOG_PATH.is_dir()


def test_user_settings_object_and_lazy_attribute(clean_settings):
    class Conf:
        SECURE = False
        LAZY_X = LazyAttribute(render=lambda inst, raw: inst.HEARTBEAT + 1)
        lower = 1

    s = clean_settings
    s.USER_SETTINGS = Conf
    assert s.USER_SETTINGS is Conf
    s.setup()
    assert s.SECURE is False and s.LAZY_X == 5001


def test_setup_environment_and_debug(clean_settings, monkeypatch):
    s = clean_settings
    monkeypatch.delenv("GATERPC_TEST_ENV", raising=False)
    monkeypatch.delenv("PYTHONASYNCIODEBUG", raising=False)
    s.ENVIRONMENT["GATERPC_TEST_ENV"] = "yes"
    s.setup(DEBUG=1)
    assert os.environ["GATERPC_TEST_ENV"] == "yes"
    assert os.environ["PYTHONASYNCIODEBUG"] == "1"
    assert s.ENVIRONMENT["PYTHONASYNCIODEBUG"] == "1"
    default = s.DEFAULT_LOGGING
    assert default is gs._DEFAULT_LOGGING
    assert default["handlers"]["gaterpc"]["formatter"] == "debug"
    assert {cfg["level"] for cfg in default["loggers"].values()} == {"DEBUG"}
    assert logging.getLogger("gaterpc").level == logging.DEBUG


def test_setup_without_debug_uses_default_levels(clean_settings):
    s = clean_settings
    s.setup()
    assert logging.getLogger("gaterpc").level == logging.INFO
    assert logging.getLogger("multiprocessing").level == logging.DEBUG
    assert logging.getLogger("gaterpc.zap").propagate is False
    assert logging.getLogger("gaterpc").propagate is True


def test_default_logging_structure(clean_settings, tmp_path):
    d = clean_settings.DEFAULT_LOGGING
    assert d["version"] == 1 and d["disable_existing_loggers"] is False
    assert d["formatters"]["debug"] == {"()": "gaterpc.utils.ColorFormatter", "format": gs.debug_format}
    assert d["formatters"]["verbose"] == {"format": gs.verbose_format}
    assert d["formatters"]["console"] == {"()": "gaterpc.utils.ColorFormatter", "format": gs.verbose_format}
    for name, formatter in (("asyncio", "debug"), ("gaterpc", "verbose")):
        h = d["handlers"][name]
        assert h["class"] == "gaterpc.utils.AQueueHandler"
        assert h["handler_class"] == "logging.handlers.TimedRotatingFileHandler"
        assert h["listener"] == "gaterpc.utils.singleton_aqueue_listener"
        assert h["filename"] == tmp_path / "log" / f"{name}.log"
        assert h["formatter"] == formatter and h["when"] == "midnight" and h["backupCount"] == 10
        assert h["level"] == "DEBUG"
    assert d["handlers"]["console"] == {"level": "DEBUG", "class": "logging.StreamHandler", "formatter": "console"}
    assert d["loggers"] == {
        "multiprocessing": {"handlers": ["gaterpc", "console"], "propagate": False, "level": "DEBUG"},
        "asyncio": {"level": "INFO", "handlers": ["asyncio"], "propagate": False},
        "gaterpc": {"level": "INFO", "handlers": ["gaterpc"], "propagate": True},
        "gaterpc.zap": {"level": "INFO", "handlers": ["gaterpc"], "propagate": False},
        "commands": {"level": "INFO", "handlers": ["console"], "propagate": False},
    }
    assert "root" not in d


def test_default_log_files_follow_base_path(clean_settings, tmp_path):
    s = clean_settings
    assert s.DEFAULT_LOGGING["handlers"]["gaterpc"]["filename"] == tmp_path / "log" / "gaterpc.log"
    s.configure("BASE_PATH", tmp_path / "moved")
    assert s.DEFAULT_LOGGING["handlers"]["gaterpc"]["filename"] == tmp_path / "moved" / "log" / "gaterpc.log"


def test_user_logging_filename_empty_is_filled(clean_settings, tmp_path):
    s = clean_settings
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "mine": {"class": "logging.FileHandler", "filename": empty},
            "fixed": {"class": "logging.FileHandler", "filename": str(tmp_path / "fixed.log")},
        },
        "loggers": {"gaterpc.test.user": {"handlers": ["mine", "fixed"], "level": "INFO", "propagate": False}},
    }
    s.LOGGING = config
    rendered = s.LOGGING
    assert rendered is config
    assert config["handlers"]["mine"]["filename"] == tmp_path / "log" / "mine.log"
    assert config["handlers"]["fixed"]["filename"] == str(tmp_path / "fixed.log")
    s.setup()
    lg = logging.getLogger("gaterpc.test.user")
    try:
        lg.info("hello user logging")
        for h in lg.handlers:
            h.flush()
        assert "hello user logging" in (tmp_path / "log" / "mine.log").read_text()
        assert "hello user logging" in (tmp_path / "fixed.log").read_text()
        # LOGGING replaced the default config entirely.
        assert not any(type(h).__name__ == "AQueueHandler" for h in logging.getLogger("gaterpc").handlers)
    finally:
        for h in list(lg.handlers):
            lg.removeHandler(h)
            h.close()


def test_render_functions():
    assert gs.user_settings_render(None, empty) is None
    assert gs.user_settings_render(None, "json") is __import__("json")
    obj = object()
    assert gs.user_settings_render(None, obj) is obj
    assert gs.logging_render(None, empty) == {}
    with pytest.raises(TypeError):
        gs.logging_process(None, [])
    d = {}
    assert gs.logging_process(None, d) is d
    assert gs.simple_format == "%(asctime)s %(name)s %(module)s - %(levelname)s %(message)s"


def test_reexports():
    from gaterpc import helpers, lazy

    assert gs.LazyAttribute is lazy.LazyAttribute and gs.TypeValidator is lazy.TypeValidator
    assert gs.empty is lazy.empty and gs.ensure_mkdir is lazy.ensure_mkdir
    assert gs.UnixEPollEventLoopPolicy is helpers.UnixEPollEventLoopPolicy
    assert gs.z_const is z_const and gs.os is os and gs.Path is Path
    assert callable(gs.dictConfig) and callable(gs.import_module)


def test_import_has_no_side_effects(tmp_path):
    code = textwrap.dedent("""
        import pathlib, threading, sys
        made = []
        pathlib.Path.mkdir = lambda self, *a, **k: made.append(str(self))
        import gaterpc.global_settings, gaterpc.utils, gaterpc.mixins, gaterpc.log
        import gaterpc.global_settings as gs
        assert "_lazy_attribute_cache_" not in gs.Settings.__dict__
        print(made, threading.active_count())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    made, threads = out.stdout.split()
    assert made == "[]" and threads == "1"


def test_global_settings_imports_only_foundation_modules():
    code = textwrap.dedent("""
        import sys
        import gaterpc.global_settings
        print(sorted(m for m in sys.modules if m.startswith("gaterpc.")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    loaded = eval(out.stdout)  # noqa: S307 - our own subprocess output
    assert set(loaded) <= {"gaterpc.exceptions", "gaterpc.lazy", "gaterpc.helpers", "gaterpc.log", "gaterpc.global_settings"}
