"""The package type-checks (``mypy`` with the configuration of pyproject.toml) and ships ``py.typed``."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_mypy_strict_passes():
    """``mypy`` from the repository root (strict, files and overrides from pyproject.toml) exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mypy exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


def test_mypy_configuration_is_strict():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert config["strict"] is True
    assert config["files"] == ["gaterpc"]
    assert config["python_version"] == "3.10"


def test_py_typed_ships():
    """The PEP 561 marker is in the package and declared as package data (so wheels carry it)."""
    assert files("gaterpc").joinpath("py.typed").is_file()
    assert (ROOT / "gaterpc" / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["gaterpc"]


def test_utils_all_lists_every_public_name():
    """``gaterpc.utils.__all__`` names every public name of the module, so ``import *`` binds the same
    names as before it had one, and each listed name exists; the private helpers stay importable."""
    import gaterpc.utils as utils

    public = {name for name in vars(utils) if not name.startswith("_")}
    assert len(utils.__all__) == len(set(utils.__all__))
    assert set(utils.__all__) == public
    namespace: dict[str, object] = {}
    exec("from gaterpc.utils import *", namespace)
    assert set(namespace) - {"__builtins__"} == public
    assert namespace["interface"] is utils.interface and namespace["empty"] is utils.empty
    from gaterpc.utils import _CacheInfo, _incremental_compress, _incremental_decompress  # noqa: F401
