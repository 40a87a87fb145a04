"""Rooms with one purpose: no class over 500 lines, no module over 800 (source files of the package)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "gaterpc"
MAX_CLASS = 500
MAX_MODULE = 800
SOURCES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(PKG).as_posix())
def test_module_and_class_sizes(path):
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n") + 1
    assert lines <= MAX_MODULE, f"{path.name}: {lines} lines (limit {MAX_MODULE})"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS, f"{path.name}: class {node.name} is {size} lines (limit {MAX_CLASS})"


def test_no_cython_def_constants():
    for pyx in PKG.rglob("*.pyx"):
        for n, line in enumerate(pyx.read_text(encoding="utf-8").splitlines(), 1):
            assert not line.lstrip().startswith("DEF "), f"{pyx.name}:{n}: DEF is deprecated; use the .pxd"
