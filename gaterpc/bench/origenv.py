"""Build (once) and locate a virtual environment with the original gaterpc.

The original library is installed from the package index into its own
virtual environment, so that it never shares ``sys.path`` with ours.
Interoperability tests and the ``--vs-original`` benchmark run its roles as
separate processes with that environment's interpreter.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Iterator

__all__ = ("ORIGINAL_VERSION", "OriginalEnvError", "default_env_dir", "ensure_original_env")

ORIGINAL_VERSION = "0.2.11"
#: Installed beside it, so that the original can run on the same event loops as ours.
EXTRA_PACKAGES = ("uvloop",)
_MARKER = ORIGINAL_VERSION + "+" + ",".join(EXTRA_PACKAGES)


class OriginalEnvError(RuntimeError):
    """The environment with the original gaterpc could not be built."""


def default_env_dir() -> Path:
    """Where the environment lives: ``$GATERPC_ORIGINAL_ENV`` or a cache dir."""
    env = os.environ.get("GATERPC_ORIGINAL_ENV")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "gaterpc" / f"original-{ORIGINAL_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}"


def _python_of(env_dir: Path) -> Path:
    return env_dir / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")


def ensure_original_env(env_dir: Path | None = None, timeout: float = 600.0) -> Path:
    """Return the interpreter of an environment with gaterpc==ORIGINAL_VERSION.

    Builds it on first use (needs the package index); later calls reuse it.
    Raises :class:`OriginalEnvError` with the reason when it cannot be built.
    """
    env_dir = Path(env_dir) if env_dir else default_env_dir()
    python = _python_of(env_dir)
    marker = env_dir / ".gaterpc-original-ok"
    if python.exists() and marker.exists() and marker.read_text() == _MARKER:
        return python
    try:
        env_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OriginalEnvError(f"cannot create {env_dir.parent}: {exc}") from exc
    # Several processes (parallel test workers, benchmarks) may ask at once:
    # one builds, the others wait for it and then reuse the result.
    with _build_lock(env_dir):
        if python.exists() and marker.exists() and marker.read_text() == _MARKER:
            return python
        return _build(env_dir, python, marker, timeout)


@contextlib.contextmanager
def _build_lock(env_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``<env_dir>.lock`` (advisory; a no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: builds are not run concurrently there
        yield
        return
    with open(str(env_dir) + ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _build(env_dir: Path, python: Path, marker: Path, timeout: float) -> Path:
    try:
        if not python.exists():
            venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
        proc = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
             f"gaterpc=={ORIGINAL_VERSION}", *EXTRA_PACKAGES],
            capture_output=True, text=True, timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise OriginalEnvError(f"cannot build the original gaterpc environment in {env_dir}: {exc}") from exc
    if proc.returncode != 0:
        raise OriginalEnvError(
            f"pip could not install gaterpc=={ORIGINAL_VERSION} into {env_dir}: {proc.stderr.strip()[-2000:]}")
    check = subprocess.run([str(python), "-I", "-c", "import gaterpc.core"], capture_output=True, text=True)
    if check.returncode != 0:
        raise OriginalEnvError(f"the original gaterpc does not import: {check.stderr.strip()[-2000:]}")
    marker.write_text(_MARKER)
    return python
