"""Build a binary wheel, install it into a fresh virtual environment, import the compiled modules."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(platform.python_implementation() != "CPython", reason="binary wheels are CPython only"),
]

SELECTORS = ("zmqio", "lru", "reqtable", "frames", "chunks")

PROBE = textwrap.dedent(
    """
    import importlib, json, sys
    import gaterpc
    out = {"gaterpc": gaterpc.__file__, "selectors": {}}
    for name in sys.argv[1:]:
        sel = importlib.import_module("gaterpc._speedups." + name)
        c = importlib.import_module("gaterpc._speedups._" + name + "_c")
        out["selectors"][name] = {"USE_C": sel.USE_C, "file": c.__file__}
    print(json.dumps(out))
    """
)


def _run(cmd, require=False, **kw):
    env = dict(os.environ)
    env.pop("GATERPC_NO_EXTENSIONS", None)
    env.pop("GATERPC_REQUIRE_EXTENSIONS", None)
    if require:
        env["GATERPC_REQUIRE_EXTENSIONS"] = "1"
    env.pop("PYTHONPATH", None)
    # One compiler at a time: this build runs beside other test files (xdist), and
    # a compiler per core would crowd their sockets and timers on a 2-core machine.
    env["GATERPC_BUILD_JOBS"] = "1"
    return subprocess.run(cmd, capture_output=True, text=True, timeout=500, env=env, **kw)


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """An sdist, and a wheel built from that sdist (``python -m build``'s default: proves the sdist builds)."""
    out = tmp_path_factory.mktemp("dist")
    build = _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=out)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "Accelerated build" in build.stdout + build.stderr
    sdists = list(out.glob("*.tar.gz"))
    wheels = list(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, (sdists, wheels)
    assert not wheels[0].name.endswith("-none-any.whl"), wheels
    return sdists[0], wheels[0]


def _fresh_venv(tmp_path):
    """A new virtual environment whose run-time dependencies come from the one running the tests."""
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    py = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    # plain path lines: that environment's own .pth files (an editable gaterpc) are not processed
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    assert site.returncode == 0, site.stderr
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site.stdout.strip(), "test-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return venv, py


def _probe_compiled(py, venv, cwd):
    probe = _run([str(py), "-c", PROBE, *SELECTORS], cwd=cwd, require=True)  # cwd outside the checkout
    assert probe.returncode == 0, probe.stderr
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(info["gaterpc"]).is_relative_to(venv)
    for name in SELECTORS:
        sel = info["selectors"][name]
        assert sel["USE_C"] is True, name
        assert Path(sel["file"]).is_relative_to(venv)
        assert sel["file"].endswith((".so", ".pyd")), sel["file"]


def test_binary_wheel_installs_compiled_modules(dists, tmp_path):
    venv, py = _fresh_venv(tmp_path)
    inst = _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(dists[1])])
    assert inst.returncode == 0, inst.stdout[-3000:] + inst.stderr[-3000:]
    _probe_compiled(py, venv, tmp_path)
    cli = _run([str(venv / "bin" / "gaterpc"), "--version"], cwd=tmp_path)
    assert cli.returncode == 0 and cli.stdout.strip(), cli.stderr


def test_sdist_carries_the_sources_the_wheel_was_built_from(dists):
    """``dists`` built the wheel *from* the sdist (with build isolation: setuptools and
    Cython from the index, as for any user installing the sdist); here: what is in it."""
    import tarfile

    with tarfile.open(dists[0]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for name in SELECTORS:
        assert f"gaterpc/_speedups/_{name}_c.pyx" in names, name
        assert f"gaterpc/_speedups/_{name}_py.py" in names, name
    assert "gaterpc/_speedups/_wire.pxd" in names
    assert "gaterpc/py.typed" in names and "setup.py" in names and "pyproject.toml" in names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="auditwheel inspects Linux wheels")
def test_wheel_is_manylinux_consistent(dists):
    show = _run([sys.executable, "-m", "auditwheel", "show", str(dists[1])])
    assert show.returncode == 0, show.stdout + show.stderr
    assert "consistent with the" in show.stdout and "manylinux_" in show.stdout, show.stdout
