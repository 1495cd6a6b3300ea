"""The layering rules of docs/architecture.md that import-linter cannot express.

`lint-imports` (run by `make test`) checks which package may import which; these
tests check the rest: no file grows past 700 lines, the algorithms never touch
`torch.nn`, and no module of the package is imported inside a function (such
imports hide circles and make a module's dependencies hard to read).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hessian_spectra"
MAX_LINES = 700
SOURCES = sorted(SRC.rglob("*.py"))


def _rel(path: Path) -> str:
    return str(path.relative_to(SRC.parent))


def test_sources_found() -> None:
    assert len(SOURCES) > 20, f"expected the package's sources under {SRC}"


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_no_source_file_over_700_lines(path: Path) -> None:
    lines = path.read_text().count("\n")
    assert lines <= MAX_LINES, f"{_rel(path)} has {lines} lines; split it by concern"


def _imported_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return ["." * node.level + (node.module or "")]
        base = node.module or ""
        return [base] + [f"{base}.{a.name}" for a in node.names]
    return []


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_no_package_import_inside_functions(path: Path) -> None:
    tree = ast.parse(path.read_text())
    hidden = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            for name in _imported_modules(node):
                if name.startswith(("hessian_spectra", ".")):
                    hidden.append(f"line {node.lineno}: {name}")
    assert not hidden, f"{_rel(path)} imports the package inside functions: {hidden}"


ALGORITHMS = sorted((SRC / "algorithms").rglob("*.py"))


@pytest.mark.parametrize("path", ALGORITHMS, ids=_rel)
def test_algorithms_do_not_use_torch_nn(path: Path) -> None:
    tree = ast.parse(path.read_text())
    uses = []
    for node in ast.walk(tree):
        names = _imported_modules(node)
        if any(n == "torch.nn" or n.startswith("torch.nn.") for n in names):
            uses.append(f"line {node.lineno}: import")
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "nn"
            and isinstance(node.value, ast.Name)
            and node.value.id == "torch"
        ):
            uses.append(f"line {node.lineno}: torch.nn")
    assert not uses, f"{_rel(path)} uses torch.nn; algorithms see only a LinearOperator: {uses}"


def test_the_rules_can_fail() -> None:
    """The checks above catch what they are meant to catch."""
    src = "def f():\n    from hessian_spectra.results import Result\n    import torch.nn\n"
    tree = ast.parse(src)
    fn = tree.body[0]
    found = [n for node in ast.walk(fn) for n in _imported_modules(node)]
    assert "hessian_spectra.results" in found and "torch.nn" in found
