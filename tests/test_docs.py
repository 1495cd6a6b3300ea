"""The documentation is current: the API reference, the architecture page, and every
measured number of the README and docs/reproduction.md against the JSON it comes from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

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


def _sci(x: float, digits: int) -> str:
    return f"{x:.{digits}e}".replace("e-0", "e-")


def _summary_md(rel: str) -> dict[tuple[str, str, str], dict[str, str]]:
    """Rows of a sketch-synthetic summary.md by (kind, zeros, d)."""
    out = {}
    for line in (ROOT / rel).read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        kind, zeros, _, d, mean, median, lo, hi, share, pred = cells
        out[(kind, zeros, d)] = {"mean": mean, "pred": pred, "share": share}
    return out


def test_reproduction_numbers_come_from_the_result_files() -> None:
    """The measured numbers of docs/reproduction.md are the ones their JSON holds, as printed."""
    doc = (ROOT / "docs" / "reproduction.md").read_text()
    cm = _json("docs/figures/compare-methods-summary.json")
    tk = _json("benchmarks/results/topk_digits.json")["digits"]["runs"]
    m, g = cm["methods"], cm["ghosts"]["none"]
    expected = {
        "PyHessian package": f"| {tk['pyhessian']['hvps']} | "
        f"{_pct(tk['pyhessian']['max_rel_err'], 2)}, "
        f"{tk['pyhessian']['out_of_order']} out of order |",
        "power rule": f"| {m['power']['num_matvecs']} | "
        f"{_pct(m['power']['max_abs_relative_error_sorted'], 2)}, "
        f"{m['power']['out_of_order']} out of order |",
        "lanczos": f"| {m['lanczos']['num_matvecs']} | "
        f"{_sci(m['lanczos']['max_abs_relative_error_sorted'], 1)} |",
        "block": f"| {m['block']['num_matvecs']} | "
        f"{_sci(m['block']['max_abs_relative_error_sorted'], 1)} |",
        "converged at": ", ".join(str(c) for c in m["lanczos"]["converged_at"]),
        "ghosts": f"| {g['top_copies']} | {g['distinct']} | {g['ghosts']} | {g['unmatched']} | "
        f"{g['orthogonality_loss']:.2f} |",
        "rqi": f"{tk['rqi']['hvps']} HVPs and a largest error of "
        f"{_pct(tk['rqi']['max_rel_err'], 1)}",
        "lanczos benchmark": f"{tk['lanczos']['hvps']} HVPs and "
        f"{_sci(tk['lanczos']['max_rel_err'], 2)}",
        "run seconds": f"took {cm['seconds']:.0f} s",
        "exact trace": f"exact trace {cm['reference']['trace']:.4f}",
        "negative": f"{cm['reference']['num_negative']} of them (30%) are negative",
    }
    for key, e in cm["sketches"].items():
        expected[f"sketch {key}"] = (
            f"| {e['num_matvecs']} | {e['mean_percent_error']:+.1f}% | "
            f"{e['median_percent_error']:+.1f}% | {e['min_percent_error']:+.1f}% ... "
            f"{e['max_percent_error']:+.1f}% | {np.mean(np.abs(e['percent_errors'])):.1f}% |"
        )
    ref = cm["reference"]["trace"]
    for name, e in cm["trace"].items():
        if name in ("running_mean",):
            continue
        err = 100 * (e["estimate"] - ref) / ref
        expected[f"trace {name}"] = f"| {e['estimate']:.3f} | {e['stderr']:.3f} | {err:+.1f}% |"
    ex = cm["probes"]["exact"]
    expected["probe ratio"] = f"{ex['variance_ratio_gaussian_over_rademacher']:.3f}"
    expected["probe share"] = _pct(ex["diagonal_share_of_frobenius"], 1)
    # the synthetic runs: seed 0's measured / predicted table, both seeds' negative counts
    summary = _summary_md("docs/figures/sketch-synthetic-summary.md")
    for zeros in ("10%", "20%", "40%", "60%", "80%", "90%"):
        rows = [summary[("rademacher", zeros, d)] for d in ("20", "50", "100", "200", "400", "600")]
        cells = [f"{r['mean']} / {r['pred']}" for r in rows]
        expected[f"synthetic {zeros}"] = f"| {zeros} | " + " | ".join(cells) + " |"
    for seed, rel in (
        (0, "docs/figures/sketch-synthetic-claims.json"),
        (1, "docs/figures/sketch-synthetic-seed1-claims.json"),
    ):
        c = {c["key"]: c for c in _json(rel)["claims"]}["always_overestimates"]["evidence"]
        expected[f"negative seed {seed}"] = (
            f"{c['num_negative']:,} ({_pct(c['num_negative'] / c['num_errors'], 1)}) are "
            f"negative, down to {c['min_percent_error']:.0f}%"
        )
    # the five full synthetic runs: the ranges the over-seeds paragraph quotes
    runs = [
        {c["key"]: c["evidence"] for c in _json(rel)["claims"]}
        for rel in ["docs/figures/sketch-synthetic-claims.json"]
        + [f"docs/figures/sketch-synthetic-seed{s}-claims.json" for s in range(1, 5)]
    ]
    neg = [r["always_overestimates"] for r in runs]
    shares = [100 * e["num_negative"] / e["num_errors"] for e in neg]
    lows = [e["min_percent_error"] for e in neg]
    expected["five seeds negative"] = (
        f"{min(shares):.1f}% to {max(shares):.1f}% of the\n21,600 Rademacher errors are negative"
    )
    expected["five seeds lows"] = f"(the most negative {max(lows):.0f}% to\n{min(lows):.0f}%)"
    series = [r["larger_eigenvalues_smaller_error"]["series_holding"] for r in runs]
    expected["five seeds series"] = f"in {min(series)} to {max(series)} of the 36 series"
    above = max(
        r[k]["max_percent_error"]
        for r in runs
        for k in ("rangefinder_never_overestimates", "nystrom_never_overestimates")
    )
    expected["five seeds above"] = f"(largest {above:+.1e}%,\nrounding)"
    took = [_json(f"docs/figures/sketch-synthetic-seed{s}-run.json")["seconds"] for s in (2, 3, 4)]
    expected["five seeds seconds"] = f"took {took[0]:.0f} s, {took[1]:.0f} s and {took[2]:.0f} s"
    missing = {k: v for k, v in expected.items() if v not in doc}
    assert not missing, f"docs/reproduction.md numbers that differ from their JSON: {missing}"


def test_nystrom_shift_numbers_come_from_their_result_file() -> None:
    """The Nystrom shift paragraphs (reproduction, reliability) say what the benchmark measured."""
    b = _json("benchmarks/results/nystrom_shift.json")
    doc = " ".join((ROOT / "docs" / "reproduction.md").read_text().split())
    rel = " ".join((ROOT / "docs" / "reliability.md").read_text().split())
    sk = [(r, r["sketches"]) for r in b["runs"]]
    keys = [f"{{}}:{d}" for d in b["sizes"]]
    rule = [s[k.format("shift_rule")] | {"lmin": r["lambda_min"]} for r, s in sk for k in keys]
    plain = [s[k.format("unshifted")] for _, s in sk for k in keys]
    total = len(rule)
    assert sum(s["shift"] > 0 for s in rule) == total == b["totals"]["shift_rule"]["shifted"]
    assert sum(s["num_over"] > 0 for s in rule) == 0
    over = sum(s["num_over"] > 0 for s in plain)
    worst = max(s["max_percent_error"] for s in plain)
    covered = sum(s["shift"] >= -s["lmin"] for s in rule)
    for text in (doc, rel):
        assert (
            f"{over} of {total} unshifted" in text or f"{over} of the {total} over-estimate" in text
        )
        assert f"up to +{worst:.0f}%" in text
    assert f"every one of the {total} sketches was shifted and none over-estimated" in doc
    assert f"0 of {total} shifted sketches over-estimate" in rel
    assert f"covered |λ_min| (from a separate Lanczos run) in {covered} of the {total}" in doc
    means = [s["mean_percent_error"] for s in rule]
    plain_means = [s["mean_percent_error"] for s in plain]
    assert f"top 20 is {max(means):.0f}% to {min(means):.0f}%" in doc
    assert f"({min(plain_means):.0f}% to +{max(plain_means):.0f}% unshifted)" in doc
    # the robustness runs' Nystrom over-estimates (made before the shift rule) are
    # the benchmark's unshifted sketches of the same model and seed
    summary = _json("docs/figures/architectures-summary.json")
    failed = [
        (name, e["seed"], e["numbers"])
        for name, seeds in summary["claims"]["nystrom_never_overestimates"]["numbers"].items()
        for e in seeds
        if e["verdict"] == "does not hold"
    ]
    assert len(failed) == 3 and "three of the runs' 60 Nystrom sketches over-estimated" in doc
    for name, seed, said in failed:
        run = next(r for r in b["runs"] if r["architecture"] == name and r["seed"] == seed)
        # the size the old rule left unshifted (it shifted the other where it
        # saw a negative eigenvalue)
        sizes = [run["sketches"][k.format("unshifted")]["max_percent_error"] for k in keys]
        worst = next(x for x in sizes if said == f"largest error {x:+.2g}%")
        assert f"by {worst:+.2g}%" in doc or f", {worst:+.2g}%" in doc
