"""The original's environment is built once even when several processes ask at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from gaterpc.bench import origenv

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks are POSIX only")

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gaterpc.bench.origenv import _build_lock
    with _build_lock(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.readline()          # hold until the test says so
    """
)


def _try_lock(env_dir) -> bool:
    import fcntl

    with open(str(env_dir) + ".lock", "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return True


def test_build_lock_excludes_another_process(tmp_path):
    env_dir = tmp_path / "env"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(env_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "held"
        assert not _try_lock(env_dir)          # the other process holds it
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
        assert _try_lock(env_dir)              # released on exit of the block
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def test_ready_env_is_returned_without_building(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    python = origenv._python_of(env_dir)
    python.parent.mkdir(parents=True)
    python.write_text("")
    (env_dir / ".gaterpc-original-ok").write_text(origenv._MARKER)

    def no_build(*args, **kwargs):
        raise AssertionError("a ready environment must not be rebuilt")

    monkeypatch.setattr(origenv, "_build", no_build)
    assert origenv.ensure_original_env(env_dir) == python


def test_env_finished_by_another_process_is_not_rebuilt(tmp_path, monkeypatch):
    """A waiter that gets the lock after another process built the env reuses it."""
    env_dir = tmp_path / "env"
    python = origenv._python_of(env_dir)
    marker = env_dir / ".gaterpc-original-ok"
    real_lock = origenv._build_lock

    import contextlib

    @contextlib.contextmanager
    def lock_then_finish(d):
        with real_lock(d):
            # what the other process did while we waited for the lock
            python.parent.mkdir(parents=True)
            python.write_text("")
            marker.write_text(origenv._MARKER)
            yield

    def no_build(*args, **kwargs):
        raise AssertionError("the environment was built twice")

    monkeypatch.setattr(origenv, "_build_lock", lock_then_finish)
    monkeypatch.setattr(origenv, "_build", no_build)
    assert origenv.ensure_original_env(env_dir) == python
