"""The API reference in docs/api.md is generated from the docstrings and kept current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hessian_spectra as hs

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_is_current() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_api.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr or out.stdout


def test_api_reference_lists_every_public_name() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [n for n in hs.__all__ if n != "__version__" and f"### `hs.{n}`" not in text]
    assert not missing, f"docs/api.md lacks {missing}"


def test_architecture_page_names_modules_that_exist() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    src = ROOT / "src" / "hessian_spectra"
    for rel in [
        "algorithms/eigen/eigsh.py",
        "algorithms/eigen/_ritz.py",
        "algorithms/_run.py",
        "operators/model.py",
        "problems.py",
        "figures.py",
        "history.py",
        "cli/parser.py",
        "cli/commands.py",
        "cli/analyses.py",
        "cli/output.py",
    ]:
        assert (src / rel).exists(), f"docs/architecture.md describes {rel}, which is gone"
        assert Path(rel).stem.lstrip("_") in text
