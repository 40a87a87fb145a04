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
