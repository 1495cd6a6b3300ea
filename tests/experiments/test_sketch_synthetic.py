"""sketch-synthetic: the small run end to end, its tables, its claims, and the document."""

import json
import re
import runpy
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hessian_spectra.experiments import main
from hessian_spectra.experiments import sketch_synthetic as ss
from hessian_spectra.experiments._io import read_csv
from hessian_spectra.experiments.synthetic import synthetic_psd_matrix

DOC = Path(__file__).resolve().parents[2] / "docs" / "reproduction.md"

#: The configuration whose claim outcomes the document's synthetic table must
#: match: the study's six fractions and six ratios, scaled down to n = 300 with
#: top_k = 6 (so d / k is as in the study's n = 1000, top 20), 3 matrices x 2
#: sketches, seed 0, so that it runs in seconds. The document's numbers come
#: from the full run; it says which verdicts change with the draw.
CLAIMS_CONFIG = ss.SketchSyntheticConfig(n=300, top_k=6, num_matrices=3, num_sketches=2, seed=0)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ss")
    code = main(["sketch-synthetic", "--small", "--no-plots", "--out", str(out)])
    assert code == 0
    return out


def test_csv_has_expected_columns_and_rows(small_run):
    cfg = ss.SMALL
    rows = read_csv(small_run / "errors.csv")
    header = (small_run / "errors.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == ss.COLUMNS
    per_kind = sum(
        cfg.num_matrices * cfg.num_sketches * min(cfg.top_k, cfg.sketch_size(r))
        for _ in cfg.zero_fractions
        for r in cfg.ratios
    )
    assert len(rows) == len(cfg.kinds) * per_kind
    for kind in cfg.kinds:
        assert sum(r["kind"] == kind for r in rows) == per_kind


def test_rows_hold_true_eigenvalues_and_consistent_errors(small_run):
    cfg = ss.SMALL
    rows = ss.rows_from_csv(small_run / "errors.csv")
    true = np.array([r["true"] for r in rows])
    est = np.array([r["estimate"] for r in rows])
    err = np.array([r["percent_error"] for r in rows])
    np.testing.assert_allclose(err, 100 * (est - true) / true, rtol=1e-12, atol=1e-12)
    # the true values are the generator's spectrum for the recorded seed
    r0 = next(r for r in rows if r["zero_fraction"] == 0.9 and r["matrix"] == 1)
    m = synthetic_psd_matrix(cfg.n, 0.9, seed=r0["matrix_seed"])
    same = [r for r in rows if r["matrix_seed"] == r0["matrix_seed"] and r["sketch"] == 0]
    rest = float(np.sum(m.eigenvalues[cfg.top_k :]))
    for r in same:
        assert r["true"] == m.eigenvalues[r["rank"] - 1]
        want = 100 * rest / (r["sketch_size"] * r["true"])
        assert r["predicted_shift"] == pytest.approx(want, rel=1e-12)
    # HVP budgets: one pass of d (Rademacher, Nystrom), two passes (range finder)
    for r in rows:
        d = r["sketch_size"]
        want = {"rademacher": d, "rangefinder": 2 * d, "nystrom": d}[r["kind"]]
        assert r["num_matvecs"] == want
    summary = read_csv(small_run / "summary.csv")
    assert len(summary) == len(cfg.kinds) * len(cfg.zero_fractions) * len(cfg.ratios)
    claims = json.loads((small_run / "claims.json").read_text())["claims"]
    assert {c["key"] for c in claims} == {
        "always_overestimates",
        "error_falls_with_size",
        "error_falls_with_singularity",
        "larger_eigenvalues_smaller_error",
        "rangefinder_never_overestimates",
        "nystrom_never_overestimates",
        "rangefinder_beats_rademacher",
        "nystrom_beats_rademacher",
    }


def test_replot_rebuilds_the_same_tables(small_run, tmp_path):
    code = main(
        ["sketch-synthetic", "--replot", str(small_run), "--no-plots", "--out", str(tmp_path)]
    )
    assert code == 0
    for name in ("errors.csv", "summary.csv", "summary.md"):
        assert (tmp_path / name).read_text() == (small_run / name).read_text()
    a = json.loads((small_run / "claims.json").read_text())["claims"]
    b = json.loads((tmp_path / "claims.json").read_text())["claims"]
    assert a == b
    assert main(["sketch-synthetic", "--replot", str(tmp_path / "nothing")]) == 2


def _rows_from_errors(cfg, fn):
    rows = []
    for fi, f in enumerate(cfg.zero_fractions):
        for ri, r in enumerate(cfg.ratios):
            for m in range(cfg.num_matrices):
                for s in range(cfg.num_sketches):
                    for i in range(cfg.top_k):
                        rows.append(
                            {
                                "kind": "rademacher",
                                "zero_fraction": f,
                                "ratio": r,
                                "matrix": m,
                                "sketch": s,
                                "rank": i + 1,
                                "percent_error": fn(fi, ri, i),
                            }
                        )
    return rows


def test_claim_checks_can_hold_and_fail():
    # Hand-made errors: the study's picture (positive, falling with size and
    # singularity, growing with rank) makes every study claim hold; flipping
    # one trend makes exactly that claim fail.
    cfg = ss.SketchSyntheticConfig(
        n=100, zero_fractions=(0.1, 0.5), ratios=(0.2, 0.4), num_matrices=1, num_sketches=2,
        top_k=3, kinds=("rademacher",),
    )  # fmt: skip

    def study(fi, ri, i):
        return 10.0 / (1 + ri) / (1 + fi) * (1 + i)

    got = {c.key: c.holds for c in ss.evaluate_claims(_rows_from_errors(cfg, study), cfg)}
    assert got == {
        "always_overestimates": True,
        "error_falls_with_size": True,
        "error_falls_with_singularity": True,
        "larger_eigenvalues_smaller_error": True,
    }

    def against_singularity(fi, ri, i):
        return 10.0 / (1 + ri) * (1 + fi) * (1 + i)

    got = {
        c.key: c.holds for c in ss.evaluate_claims(_rows_from_errors(cfg, against_singularity), cfg)
    }
    assert got["error_falls_with_singularity"] is False
    assert got["error_falls_with_size"] is True

    def one_negative(fi, ri, i):
        return -1.0 if (fi, ri, i) == (1, 1, 2) else study(fi, ri, i)

    got = {c.key: c.holds for c in ss.evaluate_claims(_rows_from_errors(cfg, one_negative), cfg)}
    assert got["always_overestimates"] is False


def _document_verdicts(section: str) -> dict[str, bool]:
    text = DOC.read_text()
    start = text.index(f"<!-- claims:{section} -->")
    end = text.index(f"<!-- /claims:{section} -->")
    verdicts = {}
    for key, verdict in re.findall(
        r"^\|\s*`([a-z_]+)`\s*\|.*\|\s*\*\*(holds|does not hold)\*\*\s*\|\s*$",
        text[start:end],
        flags=re.M,
    ):
        verdicts[key] = verdict == "holds"
    return verdicts


def test_claims_outcome_is_what_the_document_states():
    # The fixed-seed run decides each claim; docs/reproduction.md must say the same.
    result = ss.run(CLAIMS_CONFIG)
    got = {c.key: c.holds for c in ss.evaluate_claims(result.rows, CLAIMS_CONFIG)}
    stated = _document_verdicts("sketch-synthetic")
    assert stated, "docs/reproduction.md has no sketch-synthetic claims table"
    assert stated == got


def test_plot_family_draws_the_tabulated_means(tmp_path):
    cfg = replace(
        ss.SMALL, zero_fractions=(0.1, 0.9), ratios=(0.1, 0.5), num_sketches=2,
        kinds=("rademacher",),
    )  # fmt: skip
    result = ss.run(cfg)
    paths = ss.plot_family(result.rows, cfg, "rademacher", tmp_path, by="ratio")
    names = sorted(p.name for p in paths)
    assert names == [
        "fig13_rademacher_ratio0.1.png",
        "fig14_rademacher_ratio0.5.png",
        "figs13-14_rademacher_panel.png",
    ]
    data = json.loads((tmp_path / "fig14_rademacher_ratio0.5.json").read_text())
    arr = ss.error_array(result.rows, cfg, "rademacher")
    want = np.nanmean(arr[1, :, 1], axis=(0, 1))  # 90% zeros at ratio 0.5
    np.testing.assert_allclose(data["series"]["0.9"]["mean"], want, rtol=1e-12)
    assert all(p.stat().st_size > 5000 for p in paths)


def test_bad_configurations_are_refused(tmp_path):
    with pytest.raises(ValueError, match="non-zero eigenvalues"):
        ss.SketchSyntheticConfig(n=100, zero_fractions=(0.9,), top_k=20).validate()
    with pytest.raises(ValueError, match="unknown sketch kind"):
        ss.SketchSyntheticConfig(kinds=("gaussian",)).validate()
    with pytest.raises(ValueError, match="whole number"):
        ss.SketchSyntheticConfig(n=15, zero_fractions=(0.1,), top_k=2).validate()
    assert main(["sketch-synthetic", "--small", "--top-k", "50", "--out", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        main(["sketch-synthetic", "--ratios", "a,b"])


def test_module_runs_as_a_program(monkeypatch, capsys):
    # `python -m hessian_spectra.experiments ...`, run in this process
    monkeypatch.setattr(sys, "argv", ["hessian_spectra.experiments", "sketch-synthetic", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("hessian_spectra.experiments", run_name="__main__")
    assert exc.value.code == 0
    assert "--zero-fractions" in capsys.readouterr().out
