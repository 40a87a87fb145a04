"""docs/ARCHITECTURE.md's import diagram matches the real imports of ``gaterpc``.

The diagram is the mermaid block between ``<!-- imports:begin -->`` and
``<!-- imports:end -->``; each ``a --> b`` line says "module ``gaterpc.a``
imports ``gaterpc.b``" (anywhere in the file, including imports inside
functions).  The packages ``gaterpc/_speedups/`` and ``gaterpc/bench/`` are
one node each.  The edges are taken from the source with ``ast``, so the
diagram cannot drift: when an import is added or removed, this test fails
and ``python tests/test_architecture.py`` prints the block to paste.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "gaterpc"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
BEGIN = "<!-- imports:begin -->"
END = "<!-- imports:end -->"
PACKAGES = {"_speedups", "bench", "broker", "gate"}
EDGE = re.compile(r"^\s*([A-Za-z_][\w]*)\s*-->\s*([A-Za-z_][\w]*)\s*$")


def _node_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    if rel.parts[0] in PACKAGES:
        return rel.parts[0]
    return rel.stem


def _module_parts(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return parts


def _target(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] != "gaterpc" or len(parts) < 2:
        return None
    return parts[1]


def _existing(node: str) -> bool:
    return (PKG / f"{node}.py").is_file() or (PKG / node / "__init__.py").is_file()


def real_edges() -> set[tuple[str, str]]:
    """``(importer, imported)`` pairs over every ``.py`` file of the package."""
    edges = set()
    for path in sorted(PKG.rglob("*.py")):
        src = _node_of(path)
        package = _module_parts(path)
        if path.name != "__init__.py":
            package = package[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [_target(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod == "gaterpc":
                    targets = [a.name for a in node.names if _existing(a.name)]
                else:
                    targets = [_target(mod)]
            for t in targets:
                if t and t != src and t != "__init__" and _existing(t):
                    edges.add((src, t))
    return edges


def doc_edges() -> set[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{DOC.name} lacks the {BEGIN} ... {END} block"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    edges = set()
    for line in block.splitlines():
        m = EDGE.match(line)
        if m:
            edges.add((m.group(1), m.group(2)))
    return edges


def render() -> str:
    lines = [BEGIN, "```mermaid", "graph LR"]
    lines += [f"    {a} --> {b}" for a, b in sorted(real_edges())]
    lines += ["```", END]
    return "\n".join(lines)


def test_diagram_edges_match_the_imports():
    real = real_edges()
    doc = doc_edges()
    missing = sorted(real - doc)
    stale = sorted(doc - real)
    assert not missing and not stale, (
        f"docs/ARCHITECTURE.md import diagram is out of date.\n"
        f"imports not in the diagram: {missing}\nedges no longer in the code: {stale}\n"
        f"regenerate with: python tests/test_architecture.py")


def test_every_module_is_in_the_module_map():
    text = DOC.read_text(encoding="utf-8")
    modules = sorted({_node_of(p) for p in PKG.rglob("*.py")})
    absent = [m for m in modules if f"`{m}" not in text and f"/{m}" not in text]
    assert not absent, f"modules missing from docs/ARCHITECTURE.md: {absent}"


def test_edge_extraction_sees_known_imports():
    # guards the extractor itself: these imports exist at module level
    edges = real_edges()
    assert ("broker", "loopio") in edges
    assert ("cache", "_speedups") in edges
    assert ("bench", "core") in edges or ("bench", "client") in edges


if __name__ == "__main__":
    sys.stdout.write(render() + "\n")
