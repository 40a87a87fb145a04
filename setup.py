"""Build script for the compiled hot paths of gaterpc.

Every ``gaterpc/_speedups/*_c.pyx`` is compiled (a glob, so a new hot path
needs no change here).  Environment variables read at build time:

* ``GATERPC_NO_EXTENSIONS=1`` -- pure Python build: no extension modules, the
  wheel is ``py3-none-any``.
* ``GATERPC_DEBUG_BUILD=1`` -- development build: Cython annotate, profiling
  and line tracing, bounds checks back on, C compiled with ``-O0 -g``.
* ``GATERPC_BUILD_JOBS=N`` -- Cython and the C compiler run N at a time
  (default: one per core, at most 8; ``build_ext -j N`` also sets the latter).

A failed compile is an error; there is deliberately no silent fallback to a
pure install (request one with ``GATERPC_NO_EXTENSIONS=1``).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

HERE = Path(__file__).resolve().parent
SPEEDUPS = Path("gaterpc") / "_speedups"


def _flag(name: str) -> bool:
    """True if the environment variable is set to anything but ``""``/``"0"``."""
    return os.environ.get(name, "") not in ("", "0")


NO_EXTENSIONS = _flag("GATERPC_NO_EXTENSIONS") or platform.python_implementation() != "CPython"
DEBUG_BUILD = _flag("GATERPC_DEBUG_BUILD")


def _extensions() -> list:
    """Cythonize every ``*_c.pyx`` of ``gaterpc/_speedups``."""
    from Cython.Build import cythonize

    sources = sorted((HERE / SPEEDUPS).glob("*_c.pyx"))
    if not sources:
        raise SystemExit("setup.py: no gaterpc/_speedups/*_c.pyx found; use GATERPC_NO_EXTENSIONS=1 for a pure build")
    directives = {
        "language_level": 3,
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "embedsignature": True,
    }
    macros: list = []
    extra_compile_args: list = []
    if DEBUG_BUILD:
        directives.update(
            boundscheck=True, wraparound=True, profile=True, linetrace=True,
        )
        macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
        if sys.platform != "win32":
            extra_compile_args = ["-O0", "-g", "-UNDEBUG"]
    elif sys.platform != "win32":
        extra_compile_args = ["-g0"]  # release: no debug info (wheels 3-4x smaller)
    exts = []
    for src in sources:
        rel = src.relative_to(HERE)
        modname = ".".join(rel.with_suffix("").parts)
        exts.append(
            Extension(
                modname,
                [str(rel)],
                define_macros=macros,
                extra_compile_args=extra_compile_args,
            )
        )
    return cythonize(
        exts,
        compiler_directives=directives,
        annotate=DEBUG_BUILD,
        # Regenerate the C on every build: never ship C from another Cython.
        force=True,
        quiet=not DEBUG_BUILD,
        nthreads=_jobs(),
    )


def _jobs() -> int:
    """Compilers run at once: ``GATERPC_BUILD_JOBS``, else one per core (at most 8)."""
    env = os.environ.get("GATERPC_BUILD_JOBS", "")
    if env:
        return max(1, int(env))
    return max(1, min(8, os.cpu_count() or 1))


class build_ext(_build_ext):
    """``build_ext`` that compiles the extension modules in parallel unless ``-j`` says otherwise."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = _jobs()


def _banner(text: str) -> None:
    line = "*" * (len(text) + 4)
    print(f"{line}\n* {text} *\n{line}", file=sys.stderr)


if NO_EXTENSIONS:
    _banner("Pure Python build (GATERPC_NO_EXTENSIONS or non-CPython): no compiled modules")
    ext_modules: list = []
else:
    _banner("Accelerated build" + (" (debug: annotate, linetrace, -O0 -g)" if DEBUG_BUILD else ""))
    ext_modules = _extensions()

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
