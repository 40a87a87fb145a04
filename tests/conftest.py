"""Shared fixtures of the test suite."""

from __future__ import annotations

import copy
import logging
import os

import pytest


_TOUCHED_LOGGERS = ("", "multiprocessing", "asyncio", "gaterpc", "gaterpc.zap", "commands")


def _snapshot_loggers():
    state = {}
    for name in _TOUCHED_LOGGERS:
        lg = logging.getLogger(name)
        state[name] = (list(lg.handlers), lg.level, lg.propagate, lg.disabled)
    return state


def _restore_loggers(state) -> None:
    for name, (handlers, level, propagate, disabled) in state.items():
        lg = logging.getLogger(name)
        for handler in list(lg.handlers):
            if handler not in handlers:
                lg.removeHandler(handler)
                try:
                    handler.close()
                except Exception:  # noqa: BLE001 - best effort cleanup
                    pass
        for handler in handlers:
            if handler not in lg.handlers:
                lg.addHandler(handler)
        lg.setLevel(level)
        lg.propagate = propagate
        lg.disabled = disabled


@pytest.fixture
def clean_settings(tmp_path):
    """Yield ``Settings`` with ``BASE_PATH`` in a tmp dir; restore everything afterwards.

    Restored: class-level attributes of ``GlobalSettings`` (including
    LazyAttributes installed by ``configure``) and the raw values of its
    LazyAttributes, the instance ``__dict__`` of ``Settings``, the contents
    of the shared dicts (``ZMQ_SOCK``, ``ZMQ_CONTEXT``, ``ENVIRONMENT``, the
    module's ``_DEFAULT_LOGGING``), ``os.environ`` and the handlers/levels of
    the loggers ``setup()`` configures.
    """
    from gaterpc import global_settings as gs
    from gaterpc.lazy import LazyAttribute, empty

    cls = gs.GlobalSettings
    settings = gs.Settings
    class_dict = dict(cls.__dict__)
    raws = {name: value.raw for name, value in class_dict.items() if isinstance(value, LazyAttribute)}
    instance_dict = {k: v for k, v in settings.__dict__.items() if k != LazyAttribute._CACHE_KEY}
    shared_dicts = {
        "ZMQ_SOCK": (cls.ZMQ_SOCK, dict(cls.ZMQ_SOCK)),
        "ZMQ_CONTEXT": (cls.ZMQ_CONTEXT, dict(cls.ZMQ_CONTEXT)),
        "ENVIRONMENT": (cls.ENVIRONMENT.raw, dict(cls.ENVIRONMENT.raw)),
    }
    default_logging = copy.deepcopy(gs._DEFAULT_LOGGING, {id(empty): empty})
    environ = dict(os.environ)
    loggers = _snapshot_loggers()

    settings.configure("BASE_PATH", tmp_path)
    try:
        yield settings
    finally:
        _restore_loggers(loggers)
        for name in set(cls.__dict__) - set(class_dict):
            type.__delattr__(cls, name)
        for name, value in class_dict.items():
            if cls.__dict__.get(name) is not value:
                type.__setattr__(cls, name, value)
        for name, raw in raws.items():
            class_dict[name].raw = raw
        for obj, content in shared_dicts.values():
            obj.clear()
            obj.update(content)
        gs._DEFAULT_LOGGING.clear()
        gs._DEFAULT_LOGGING.update(default_logging)
        settings.__dict__.clear()
        settings.__dict__.update(instance_dict)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)


def pytest_addoption(parser):
    """``--no-c-extensions``: skip the compiled-backend cases of twin-parametrized fixtures."""
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        default=False,
        help="Do not run the tests against the compiled (Cython) backends.",
    )



def _twins(name: str):
    """``pytest.param`` pair (pure, compiled) naming the twins of hot path ``name``; compiled marked ``c_extension``."""
    return [
        pytest.param(f"gaterpc._speedups._{name}_py", id="py"),
        pytest.param(f"gaterpc._speedups._{name}_c", id="c", marks=pytest.mark.c_extension),
    ]


def _import_twin(request):
    """Import the twin ``request.param`` names; skip the compiled one if disabled or not built."""
    import importlib

    name = request.param
    if name.endswith("_c"):
        if request.config.getoption("--no-c-extensions"):
            pytest.skip("--no-c-extensions")
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            if os.environ.get("GATERPC_REQUIRE_EXTENSIONS", "") not in ("", "0"):
                pytest.fail(f"compiled module {name} not built ({exc}) and GATERPC_REQUIRE_EXTENSIONS is set")
            pytest.skip(f"compiled module not built ({exc}); build it with 'pip install -e .'")
    return importlib.import_module(name)


@pytest.fixture(scope="session", params=_twins("lru"))
def lru_module(request):
    """Each twin of ``gaterpc._speedups.lru`` (module exposing ``KVLRUCache``)."""
    return _import_twin(request)


@pytest.fixture(scope="session", params=_twins("reqtable"))
def reqtable_module(request):
    """Each twin of ``gaterpc._speedups.reqtable`` (module exposing ``RequestTable``)."""
    return _import_twin(request)


@pytest.fixture(scope="session", params=_twins("zmqio"))
def zmqio_module(request):
    """Each twin of ``gaterpc._speedups.zmqio`` (module exposing ``ZSocketIO``)."""
    return _import_twin(request)


@pytest.fixture(scope="session")
def compiled_expected():
    """``compiled_expected("lru")``: True if ``_lru_c`` should be the active twin.

    That is: CPython, ``GATERPC_NO_EXTENSIONS`` unset, and the module built.
    """
    import importlib.util
    import platform

    def check(name: str) -> bool:
        if platform.python_implementation() != "CPython":
            return False
        if os.environ.get("GATERPC_NO_EXTENSIONS", "") not in ("", "0"):
            return False
        return importlib.util.find_spec(f"gaterpc._speedups._{name}_c") is not None

    return check


@pytest.fixture(autouse=True)
def _isolated_settings(clean_settings):
    """Every test starts from the default ``Settings`` (BASE_PATH in its tmp dir) and leaves them so."""
    yield clean_settings


@pytest.fixture
def sync_loop():
    """A fresh event loop set as current for a synchronous test; closed (and unset) afterwards.

    Roles constructed outside a running loop take the current one (as the
    original did); without this fixture they would create a loop nobody closes.
    """
    import asyncio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()
