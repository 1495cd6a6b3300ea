"""compare-methods: the pipeline on a dense study-shaped operator, the CLI on a small digits run."""

import argparse
import json
import pickle
from math import erfc, sqrt
from pathlib import Path

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.experiments import compare_methods as cm
from hessian_spectra.experiments import main, register
from hessian_spectra.experiments._io import Claim, kendall_trend, share_verdict, trend_verdict
from hessian_spectra.experiments.compare_methods.claims import study_shift_check
from hessian_spectra.experiments.compare_methods.config import config_from_args
from hessian_spectra.experiments.compare_methods.costs import probe_variances
from hessian_spectra.experiments.compare_methods.figures import figure3, figure4
from hessian_spectra.experiments.compare_methods.measures import pyhessian_trace_rule
from hessian_spectra.experiments.compare_methods.reference import reference_spectrum
from hessian_spectra.experiments.ghosts import lanczos_ghosts
from hessian_spectra.experiments.synthetic import STUDY_TOP20, study_like_matrix
from hessian_spectra.models import digits_cnn, resnet20
from tests.experiments.doc_tables import document_claims


@pytest.fixture(scope="module")
def dense_record(tmp_path_factory):
    # n = 300, the study's top 20 over a bulk in [-0.05, 0.3]; exact reference.
    m = study_like_matrix(300, seed=0)
    op = hs.DenseOperator(m.matrix)
    cfg = cm.CompareConfig(sketch_sizes=(40, 80), trace_matvecs=40, density_steps=40)
    out = tmp_path_factory.mktemp("cm")
    record = cm.run(op, cfg, out, plots=False)
    return record, m, cfg, out


def test_reference_is_the_exact_spectrum(dense_record):
    record, m, cfg, _ = dense_record
    ref = record["reference"]
    assert ref["kind"] == "exact"
    np.testing.assert_allclose(ref["top"], STUDY_TOP20, rtol=1e-10)
    assert ref["trace"] == pytest.approx(float(np.sum(m.eigenvalues)), rel=1e-10)
    assert ref["num_negative"] == int(np.sum(m.eigenvalues < 0))


def test_kendall_trend_is_kendalls_tau_with_its_normal_z():
    from scipy.stats import kendalltau

    rng = np.random.default_rng(0)
    for _ in range(5):
        v = rng.permutation(20).astype(float)
        tau, z = kendall_trend(v)
        ref = kendalltau(np.arange(20), v, method="asymptotic")
        assert tau == pytest.approx(ref.statistic, abs=1e-12)
        # z is the normal approximation scipy's asymptotic p-value comes from
        assert erfc(abs(z) / sqrt(2)) == pytest.approx(ref.pvalue, rel=1e-9)
    tau, z = kendall_trend(np.arange(20.0))
    assert tau == 1.0 and z == pytest.approx(3 * sqrt(380) / sqrt(2 * 45))


def test_power_cost_trend_is_judged_by_rank_not_by_steps():
    # a series that rises at under half of its steps but costs more later, as the
    # networks' power iterations do, is a trend; one in no order is not
    per = [16, 5, 5, 11, 8, 6, 28, 23, 18, 16, 15, 11, 13, 13, 19, 14, 17, 33, 17, 21]
    tau, z = kendall_trend(per)
    steps = sum(b > a for a, b in zip(per[:-1], per[1:], strict=True))
    assert 2 * steps < len(per) - 1 and z > 1.645
    assert abs(kendall_trend([5, 9, 2, 8, 3, 7, 4, 6, 1, 10])[1]) < 1.645


def test_lanczos_exact_power_costly_and_charged_per_eigenvalue(dense_record):
    record, _, cfg, _ = dense_record
    lan, blk, pw = (record["methods"][k] for k in ("lanczos", "block", "power"))
    # tol 1e-4 on residuals: eigenvalue errors are ~ residual^2 / gap, far below 1e-6
    assert lan["converged"] == blk["converged"] == cfg.k
    assert lan["max_abs_relative_error"] < 1e-6
    assert blk["max_abs_relative_error"] < 1e-6
    assert lan["num_matvecs"] <= 45 < pw["num_matvecs"]
    per = pw["per_eigenvalue"]
    assert [p["index"] for p in per] == list(range(1, cfg.k + 1))
    assert sum(p["matvecs"] for p in per) == pw["num_matvecs"]
    assert all(p["matvecs"] <= cfg.power_max_iter for p in per)
    # converged_at is read from the history: non-decreasing in HVPs, none after the end
    ca = lan["converged_at"]
    assert all(c is not None and c <= lan["num_matvecs"] for c in ca)
    assert max(ca) == lan["num_matvecs"]


def test_plain_lanczos_ghosts_on_study_spectrum(dense_record):
    record, _, cfg, _ = dense_record
    plain, full = record["ghosts"]["none"], record["ghosts"]["full"]
    assert plain["num_steps"] == full["num_steps"] == 45
    assert plain["top_copies"] >= 2
    assert plain["distinct"] < cfg.k
    assert full["top_copies"] == 1 and full["distinct"] == cfg.k and full["ghosts"] == 0


def test_sketch_and_trace_numbers(dense_record):
    record, m, cfg, _ = dense_record
    sk = record["sketches"]
    assert set(sk) == {f"{k}:{d}" for k in cfg.sketch_kinds for d in cfg.sketch_sizes}
    for key in ("rangefinder:40", "rangefinder:80", "nystrom:40", "nystrom:80"):
        assert sk[key]["max_percent_error"] <= 1e-6
    assert sk["rademacher:40"]["num_matvecs"] == 40
    assert sk["rangefinder:40"]["num_matvecs"] == 80
    exact = float(np.sum(m.eigenvalues))
    tr = record["trace"]
    # unbiased estimators with honest standard errors: within 4 of them on a fixed seed
    for name in ("sketch d=40", "sketch d=80", "hutchinson", "hutch++"):
        assert abs(tr[name]["estimate"] - exact) <= 4 * tr[name]["stderr"], name
    assert tr["xtrace"]["stderr"] < tr["hutchinson"]["stderr"]
    assert len(tr["running_mean"]) == 100


def test_claims_on_the_study_shaped_operator(dense_record):
    record, m, cfg, _ = dense_record
    claims = {c["key"]: c["verdict"] for c in record["claims"]}
    assert set(claims) == {
        "plain_lanczos_gives_k_distinct",
        "lanczos_fewer_hvps_than_power",
        "power_rule_accurate",
        "power_cost_grows_with_index",
        "power_orthogonalization_negligible",
        "sketch_overestimates_top_k",
        "sketch_doubling_minimal_gain",
        "sketch_time_comparable_to_lanczos",
        "sketch_cheaper_than_lanczos_plus_hutchinson",
        "sketch_trace_optimal",
        "hutchpp_xtrace_beat_sketch_trace",
        "pyhessian_trace_rule_accurate",
        "rangefinder_never_overestimates",
        "nystrom_never_overestimates",
    }
    assert claims["plain_lanczos_gives_k_distinct"] == "does not hold"
    assert claims["lanczos_fewer_hvps_than_power"] == "holds"
    assert claims["rangefinder_never_overestimates"] == "holds"
    # Rademacher probes are the best Hutchinson probes (the study's "optimal"),
    # while Hutch++ and XTrace beat the sketch's trace: two separate findings
    assert claims["sketch_trace_optimal"] == "holds"
    assert claims["hutchpp_xtrace_beat_sketch_trace"] == "holds"
    # a sketch ratio of 80/300 is far from the study's 0.04%: not its regime
    assert claims["sketch_doubling_minimal_gain"] == "not reproduced here"
    # one sketch is cheaper than Lanczos plus Hutchinson, but far less accurate
    assert claims["sketch_cheaper_than_lanczos_plus_hutchinson"] == "holds partly"
    by_key = {c["key"]: c for c in record["claims"]}
    for c in record["claims"]:
        assert c["holds"] == (c["verdict"] == "holds") and c["numbers"], c["key"]
    cheap = by_key["sketch_cheaper_than_lanczos_plus_hutchinson"]["evidence"]
    assert cheap["sketch"]["num_matvecs"] == 40
    want = record["methods"]["lanczos"]["num_matvecs"] + cfg.trace_matvecs
    assert cheap["lanczos_plus_hutchinson"]["num_matvecs"] == want


def test_probe_variances_exact_on_the_dense_matrix(dense_record):
    # Hutchinson's per-probe variance: 2 (||H||_F^2 - sum h_ii^2) with Rademacher
    # probes, 2 ||H||_F^2 with Gaussian ones, from the matrix itself.
    record, m, _, _ = dense_record
    H = np.asarray(m.matrix, dtype=np.float64)
    fro2, diag2 = float(np.sum(H * H)), float(np.sum(np.diag(H) ** 2))
    ex = record["probes"]["exact"]
    assert ex["rademacher_variance"] == pytest.approx(2 * (fro2 - diag2), rel=1e-9)
    assert ex["gaussian_variance"] == pytest.approx(2 * fro2, rel=1e-9)
    assert record["probes"]["num_probes"] == 100


def test_probe_variances_sampled_match_the_formulas():
    # A matrix whose diagonal holds most of ||H||_F^2, so the two kinds differ
    # by a factor of about 3.7; 20,000 probes of each estimate each variance to a
    # few percent (relative s.e. about sqrt(2 / 20,000) times a kurtosis
    # factor), so the ratio is checked to 15%.
    rng = np.random.default_rng(0)
    n = 40
    A = rng.standard_normal((n, n)) * 0.3
    H = (A + A.T) / 2 + np.diag(rng.uniform(1.0, 3.0, n))
    lam = np.linalg.eigvalsh(H)
    ref = {"eigenvalues": lam, "diagonal": np.diag(H)}
    out = probe_variances(hs.DenseOperator(torch.from_numpy(H)), 20000, seed=0, ref=ref)
    ex = out["exact"]
    assert ex["variance_ratio_gaussian_over_rademacher"] > 3
    for kind in ("rademacher", "gaussian"):
        assert out[kind]["sample_variance"] == pytest.approx(ex[f"{kind}_variance"], rel=0.08)
    assert out["sampled_variance_ratio_gaussian_over_rademacher"] == pytest.approx(
        ex["variance_ratio_gaussian_over_rademacher"], rel=0.15
    )


def test_shift_formula_on_the_study_s_own_numbers():
    # tr(H less top 20) = 893.1 - 753.57 from the study's Hutchinson trace and
    # its top 20: a mean shift of 14.6% at d = 50 halves to 7.3% at d = 100.
    check = study_shift_check()
    assert check["rest"] == pytest.approx(893.1 - 753.57, abs=1e-9)
    assert round(check["50"]["mean_shift_percent"], 1) == 14.6
    assert round(check["100"]["mean_shift_percent"], 1) == 7.3
    assert round(check["50"]["predicted_mean_abs_percent"], 1) == 21.3
    assert round(check["100"]["predicted_mean_abs_percent"], 1) == 13.3


def test_verdict_scale():
    assert trend_verdict([True, True], [True]) == "holds"
    assert trend_verdict([True, False, True], [True, True]) == "holds partly"
    assert trend_verdict([True, False, False], [True, True]) == "does not hold"
    assert trend_verdict([True, True, False], [True, False]) == "does not hold"
    assert share_verdict([True] * 3) == "holds"
    assert share_verdict([True, True, False]) == "holds partly"
    assert share_verdict([True, False]) == "does not hold"
    with pytest.raises(ValueError, match="verdict must be one of"):
        Claim(key="k", source="study", statement="s", verdict="maybe", evidence={})


def test_figures_written_with_their_numbers(dense_record):
    record, m, cfg, out = dense_record
    op = hs.DenseOperator(m.matrix)
    plain = lanczos_ghosts(op, np.array(STUDY_TOP20), num_steps=45, reorth="none", seed=0)
    p3 = figure3(record, "test", out)
    p4 = figure4(plain, np.array(STUDY_TOP20), "test", out)
    for p in (p3, p4):
        assert p.exists() and p.stat().st_size > 5000
    d3 = json.loads(p3.with_suffix(".json").read_text())
    assert [e["matvecs"] for e in d3["power_per_eigenvalue"]] == [
        e["matvecs"] for e in record["methods"]["power"]["per_eigenvalue"]
    ]
    d4 = json.loads(p4.with_suffix(".json").read_text())
    assert len(d4["history"]) == 45
    assert d4["ghosts"]["top_copies"] == plain.top_copies >= 2


def test_pyhessian_trace_rule_replay():
    # running means 10, 10.5, 10.5033...: the third differs by 0.03% < 0.1%: stop at 3
    s = np.array([10.0, 11.0, 10.51, 50.0])
    r = pyhessian_trace_rule(s)
    assert r["stopped"] and r["probes"] == 3
    assert r["estimate"] == pytest.approx(np.mean(s[:3]))
    assert not pyhessian_trace_rule(np.array([1.0, 2.0, 4.0]))["stopped"]


def test_cli_small_digits_run(tmp_path):
    # digits CNN (n = 2,650) from a saved state dict, on 64 samples: every stage end to end.
    ckpt = tmp_path / "digits.pt"
    torch.save(digits_cnn(seed=1).state_dict(), ckpt)
    code = main(
        [
            "compare-methods", "--checkpoint", str(ckpt),
            "--num-samples", "64", "--k", "2", "--plain-steps", "6",
            "--sketch-sizes", "4,8", "--trace-matvecs", "8", "--density-steps", "6",
            "--reference", "lanczos", "--reference-tol", "1e-6", "--power-max-iter", "5",
            "--block-size", "2", "--reference-trace-probes", "4", "--probe-compare", "4",
            "--no-plots",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert code == 0
    rec = json.loads((tmp_path / "compare_methods.json").read_text())
    assert rec["n"] == 2650
    assert rec["problem"]["num_samples"] == 64
    assert rec["problem"]["model"] == "digits-cnn"  # the registry's spelling
    assert rec["problem"]["checkpoint"] == str(ckpt)
    assert rec["reference"]["kind"] == "lanczos"
    for name in ("power", "lanczos", "block"):
        assert len(rec["methods"][name]["eigenvalues"]) == 2
    assert rec["methods"]["lanczos"]["max_abs_relative_error"] < 1e-3


def test_register_adds_experiment_command():
    parser = argparse.ArgumentParser(prog="hessian-spectra")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["experiment", "compare-methods", "--k", "5"])
    assert callable(args.func) and args.k == 5
    args = parser.parse_args(["experiment", "sketch-synthetic", "--small"])
    assert callable(args.func) and args.small


def test_model_names_are_the_registry_s(tmp_path):
    # --model takes the registry's names; the older digits_cnn is its alias
    parser = argparse.ArgumentParser(prog="hessian-spectra")
    register(parser.add_subparsers(dest="command"))
    for name in ("digits-cnn", "digits_cnn"):
        args = parser.parse_args(["experiment", "compare-methods", "--model", name])
        cfg = config_from_args(args)
        assert cfg.model == "digits-cnn" and cfg.reference == "exact"
    with pytest.raises(SystemExit):
        parser.parse_args(["experiment", "compare-methods", "--model", "nope"])
    ckpt = tmp_path / "digits.pt"
    torch.save(digits_cnn(seed=1).state_dict(), ckpt)
    _, desc = cm.build_problem(cm.CompareConfig(model="digits_cnn", checkpoint=str(ckpt)))
    assert desc["model"] == "digits-cnn" and desc["num_parameters"] == 2650


def test_bad_setups_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="--checkpoint"):
        cm.build_problem(cm.CompareConfig(model="resnet20", data="cifar10:/nowhere"))
    with pytest.raises(ValueError, match="digits"):
        cm.build_problem(cm.CompareConfig(data="cifar10:/x"))
    code = main(["compare-methods", "--model", "resnet20", "--out", str(tmp_path)])
    assert code == 2


def _fake_cifar(root, per_file=2):
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        blob = {
            b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, per_file).tolist(),
        }
        with open(root / name, "wb") as fh:
            pickle.dump(blob, fh)


def test_resnet20_problem_from_checkpoint_and_cifar_folder(tmp_path):
    # The wiring of the study's setting, on a fake 10-image CIFAR folder.
    _fake_cifar(tmp_path)
    ckpt = tmp_path / "resnet20.pt"
    torch.save({"state_dict": resnet20(seed=3).state_dict()}, ckpt)
    cfg = cm.CompareConfig(
        model="resnet20",
        data=f"cifar10:{tmp_path}",
        checkpoint=str(ckpt),
        num_samples=4,
        dtype="float32",
    )
    op, desc = cm.build_problem(cfg)
    assert op.shape[0] == 272474 == desc["num_parameters"]
    assert desc["num_samples"] == 4
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0))
    hv = op.matvec(v)
    assert torch.isfinite(hv).all() and float(hv.norm()) > 0
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="does not fit"):
        cm.build_problem(
            cm.CompareConfig(
                model="resnet20", data=f"cifar10:{tmp_path}", checkpoint=str(tmp_path / "wrong.pt")
            )
        )


def test_reference_cache_reused_only_for_the_same_operator(tmp_path):
    # n = 120: the exact reference is stored, reused (one HVP to check), refused elsewhere.
    cache = tmp_path / "ref.npz"
    cfg = cm.CompareConfig(k=5, reference_cache=str(cache))
    op = hs.DenseOperator(study_like_matrix(120, seed=0).matrix)
    first = reference_spectrum(op, cfg)
    assert cache.exists() and "cache" not in first and first["num_matvecs"] == 120
    op2 = hs.DenseOperator(study_like_matrix(120, seed=0).matrix)
    again = reference_spectrum(op2, cfg)
    assert again["cache"] == str(cache) and op2.num_matvecs == 1
    np.testing.assert_array_equal(again["eigenvalues"], first["eigenvalues"])
    assert again["trace"] == first["trace"]
    other = hs.DenseOperator(study_like_matrix(120, seed=1).matrix)
    with pytest.raises(ValueError, match="another operator"):
        reference_spectrum(other, cfg)


def test_document_states_the_recorded_network_verdicts():
    # docs/reproduction.md's network claims table says what the recorded run
    # found: each claim's verdict and the numbers that decide it.
    root = Path(__file__).resolve().parents[2]
    record = json.loads((root / "docs/figures/compare-methods-summary.json").read_text())
    recorded = {c["key"]: (c["verdict"], c["numbers"]) for c in record["claims"]}
    stated = document_claims((root / "docs/reproduction.md").read_text(), "compare-methods")
    assert {k: v["0"] for k, v in stated.items()} == recorded
    # and the run behind it is the documented one: digits CNN, seed 0, exact reference
    assert record["config"]["seed"] == 0 and record["reference"]["kind"] == "exact"
    assert record["problem"]["model"] == "digits-cnn" and record["n"] == 2650
