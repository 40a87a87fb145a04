"""Documents and docstrings name only things that exist in the repository.

* Every ``.md`` file of the repository and every docstring under
  ``gaterpc/`` is searched for repository paths (``gaterpc/...``,
  ``docs/...``, ``tests/...``, ``examples/...``, ``deploy/...``,
  ``bench/...``); each must exist (a path with ``*`` must match something).
* Relative Markdown links (``[text](PROTOCOL.md#anchor)``) must point to an
  existing file, and an ``#anchor`` into a Markdown file to one of its
  headings.
* Nothing in ``gaterpc/``, ``tests/`` or the ``.md`` files cites the
  specification documents of the original that are not part of this
  repository; the wire protocol is described in ``docs/PROTOCOL.md``.

``ALLOW`` lists files that are still being rewritten elsewhere; entries are
to be removed, not added.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "gaterpc"

# Files whose spec citations are being fixed with their restructuring.
ALLOW = {
}

PREFIXES = ("gaterpc", "docs", "tests", "examples", "deploy", "bench")
PATH_RE = re.compile(r"(?<![\w./-])((?:%s)/[\w./*-]*)" % "|".join(PREFIXES))
# built from pieces so that this file does not match itself
SPEC_RE = re.compile(r"\b(?:API|WIRE)\.md\b|shared/" + "spec")
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
SKIP_DIRS = {"build", "dist", "node_modules", "__pycache__"}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _walk(pattern: str):
    for path in sorted(ROOT.rglob(pattern)):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in SKIP_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        yield path


def _markdown_files():
    return list(_walk("*.md"))


def _docstrings(path: Path):
    """``(line, text)`` of every docstring of a Python module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                body = node.body[0]
                yield body.lineno, doc


def _path_exists(candidate: str) -> bool:
    candidate = candidate.rstrip(".,;:")
    if "*" in candidate:
        return any(ROOT.glob(candidate))
    return (ROOT / candidate).exists()


def missing_paths(text: str) -> list[str]:
    return [m for m in PATH_RE.findall(text) if not _path_exists(m)]


def _anchors(md: Path) -> set[str]:
    out = set()
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            out.add(slug)
    return out


def broken_links(md: Path) -> list[str]:
    bad = []
    for target in LINK_RE.findall(md.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (md.parent / file_part).resolve() if file_part else md
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(target)
    return bad


# -- the checks ----------------------------------------------------------------------


@pytest.mark.parametrize("md", _markdown_files(), ids=_rel)
def test_markdown_names_existing_paths(md):
    assert not missing_paths(md.read_text(encoding="utf-8")), f"{_rel(md)} names paths that do not exist"


@pytest.mark.parametrize("md", _markdown_files(), ids=_rel)
def test_markdown_links_resolve(md):
    assert not broken_links(md), f"{_rel(md)}: broken links {broken_links(md)}"


def test_docstrings_name_existing_paths():
    bad = []
    for path in _walk("gaterpc/**/*.py"):
        if _rel(path) in ALLOW:
            continue
        for line, doc in _docstrings(path):
            bad += [f"{_rel(path)}:{line}: {m}" for m in missing_paths(doc)]
    assert not bad, "docstrings name paths that do not exist:\n" + "\n".join(bad)


def test_no_citation_of_documents_outside_the_repository():
    files = [*_walk("gaterpc/**/*.py"), *_walk("gaterpc/**/*.pyx"), *_walk("tests/**/*.py"),
             *_markdown_files()]
    bad = []
    for path in files:
        rel = _rel(path)
        if rel in ALLOW or path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SPEC_RE.search(line):
                bad.append(f"{rel}:{n}: {line.strip()}")
    assert not bad, "cite docs/PROTOCOL.md or the code instead:\n" + "\n".join(bad)


def test_allow_list_is_current():
    # an entry that no longer needs the exemption must be removed
    stale = []
    for rel in sorted(ALLOW):
        path = ROOT / rel
        if not path.exists():
            stale.append(rel)
            continue
        text = path.read_text(encoding="utf-8")
        if not SPEC_RE.search(text) and not (path.suffix == ".py" and any(
                missing_paths(doc) for _, doc in _docstrings(path))):
            stale.append(rel)
    assert not stale, f"remove from ALLOW (nothing left to exempt): {stale}"


# -- the checker checks itself ---------------------------------------------------------


def test_checker_catches_a_missing_path_and_a_citation():
    assert missing_paths("see gaterpc/no_such_module.py and docs/NOPE.md") == [
        "gaterpc/no_such_module.py", "docs/NOPE.md"]
    assert missing_paths("see gaterpc/client.py, docs/PROTOCOL.md, tests/data/*.json.") == []
    # a nested path is judged whole, not by its tail
    assert missing_paths("gaterpc/bench/fuzz.py") == []
    assert missing_paths("gaterpc/bench/nothing.py") == ["gaterpc/bench/nothing.py"]
    assert SPEC_RE.search("as in " + "WIRE" + ".md §4")
    assert not SPEC_RE.search("docs/PROTOCOL.md")


def test_checker_catches_a_broken_link(tmp_path):
    md = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# Real heading\n")
    md.write_text("[ok](b.md#real-heading) [bad](c.md) [bad anchor](b.md#nope) [web](https://x.y/z)\n")
    assert broken_links(md) == ["c.md", "b.md#nope"]
