"""The one selector contract of ``gaterpc._speedups.load_twin``, checked in fresh interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

NAMES = ("lru", "reqtable", "zmqio", "frames", "chunks")

# Blocks the compiled twin of the hot path named in argv[1] (None in sys.modules makes its import
# fail with ModuleNotFoundError, as a missing .so does), imports its selector and reports.
PROBE = textwrap.dedent(
    """
    import importlib, json, logging, sys
    records = []
    class H(logging.Handler):
        def emit(self, record):
            records.append([record.levelname, record.getMessage()])
    logging.getLogger("gaterpc").addHandler(H())
    name = sys.argv[1]
    sys.modules["gaterpc._speedups._" + name + "_c"] = None
    try:
        sel = importlib.import_module("gaterpc._speedups." + name)
    except ImportError as exc:
        print(json.dumps({"error": str(exc)}))
    else:
        print(json.dumps({"USE_C": sel.USE_C, "twin": type(sel).__name__,
                          "names": list(sel.__all__), "records": records}))
    """
)


def _probe(name, **env):
    full = dict(os.environ)
    for key in ("GATERPC_NO_EXTENSIONS", "GATERPC_REQUIRE_EXTENSIONS"):
        full.pop(key, None)
    full.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE, name], capture_output=True, text=True, env=full,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", NAMES)
def test_missing_compiled_twin_falls_back_with_one_warning(name):
    res = _probe(name)
    assert res["USE_C"] is False
    warnings = [r for r in res["records"] if r[0] == "WARNING"]
    assert len(warnings) == 1, res["records"]
    assert f"gaterpc._speedups._{name}_c" in warnings[0][1]
    assert "pure-Python" in warnings[0][1]


@pytest.mark.parametrize("name", NAMES)
def test_required_compiled_twin_missing_is_an_error(name):
    res = _probe(name, GATERPC_REQUIRE_EXTENSIONS="1")
    assert "error" in res, res
    assert f"gaterpc._speedups._{name}_c is required" in res["error"]


@pytest.mark.parametrize("name", NAMES)
def test_no_extensions_is_silent(name):
    res = _probe(name, GATERPC_NO_EXTENSIONS="1")
    assert res["USE_C"] is False
    assert res["records"] == []


@pytest.mark.parametrize("name", NAMES)
def test_selector_exports_the_twin_names(name):
    import importlib

    sel = importlib.import_module(f"gaterpc._speedups.{name}")
    pure = importlib.import_module(f"gaterpc._speedups._{name}_py")
    assert tuple(sel.__all__) == tuple(pure.__all__)
    for attr in sel.__all__:
        assert getattr(sel, attr) is not None
