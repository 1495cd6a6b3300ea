"""The API reference in docs/api.md is generated from the docstrings and kept current."""

from __future__ import annotations

import json
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


def _json(rel: str) -> dict:
    return json.loads((ROOT / rel).read_text())


def _pct(x: float, digits: int) -> str:
    return f"{100 * x:.{digits}f}%"


def test_readme_numbers_come_from_the_result_files() -> None:
    """Every measured number in the README is the one its JSON holds, as printed."""
    readme = (ROOT / "README.md").read_text()
    topk = _json("benchmarks/results/topk_digits.json")["digits"]["runs"]
    tds = _json("benchmarks/results/trace_density_sketch.json")["digits"]
    cm = _json("docs/figures/compare-methods-summary.json")
    tr, sk = tds["trace"], tds["sketch"]["by_size"]["50"]
    ph_stop = tr["pyhessian"]["default_stop"]
    expected = {
        "PyHessian HVPs": f"| {topk['pyhessian']['hvps']} |",
        "PyHessian error": _pct(topk["pyhessian"]["max_rel_err"], 2),
        "PyHessian order": f"{topk['pyhessian']['out_of_order']} values out of order",
        "power rule HVPs": f"| {cm['methods']['power']['num_matvecs']} |",
        "power rule error": _pct(cm["methods"]["power"]["max_abs_relative_error"], 2),
        "Lanczos HVPs": f"| {topk['lanczos']['hvps']} |",
        "Lanczos error": f"{topk['lanczos']['max_rel_err']:.2e}".replace("e-0", "e-"),
        "block error": f"{topk['block']['max_rel_err']:.1e}".replace("e-0", "e-"),
        "ghost copies": f"{cm['ghosts']['none']['top_copies']} copies of the top eigenvalue",
        "ghost distinct": f"{cm['ghosts']['none']['distinct']} distinct values",
        "xtrace 60": "XTrace " + _pct(tr["ours"]["xtrace"]["60"]["median_abs_relative_error"], 2),
        "hutch++ 60": "Hutch++ "
        + _pct(tr["ours"]["hutch++"]["60"]["median_abs_relative_error"], 2),
        "hutchinson 60": _pct(tr["ours"]["hutchinson"]["60"]["median_abs_relative_error"], 1),
        "pyhessian 60": _pct(tr["pyhessian"]["at_budget"]["60"]["median_abs_relative_error"], 1),
        "pyhessian 160": _pct(tr["pyhessian"]["at_budget"]["160"]["median_abs_relative_error"], 1),
        "hutchinson 160": _pct(tr["ours"]["hutchinson"]["160"]["median_abs_relative_error"], 1),
        "rule median": f"median of {ph_stop['median_hvps']}",
        "rule fewest": f"({min(ph_stop['hvps'])} at the fewest)",
        "rule error": _pct(ph_stop["median_abs_relative_error"], 1),
        "rule worst": _pct(ph_stop["max_abs_relative_error"], 1),
        "rangefinder mean": _pct(sk["rangefinder"]["mean_top5_mean_abs"], 2),
        "rangefinder worst mean": _pct(sk["rangefinder"]["mean_top5_max_abs"], 2),
        "rangefinder worst": _pct(sk["rangefinder"]["worst_top5_max_abs"], 2),
        "rademacher abs": _pct(sk["rademacher"]["mean_top5_mean_abs"], 1),
        "rademacher signed": "+" + _pct(sk["rademacher"]["mean_top5_mean_signed"], 1),
    }
    missing = {k: v for k, v in expected.items() if v not in readme}
    assert not missing, f"README numbers that differ from their JSON: {missing}"
