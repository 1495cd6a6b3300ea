"""compare-methods: the pipeline on a dense study-shaped operator, the CLI on a small digits run."""

import argparse
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.experiments import compare_methods as cm
from hessian_spectra.experiments import main, register
from hessian_spectra.experiments.compare_methods.config import config_from_args
from hessian_spectra.experiments.compare_methods.figures import figure3, figure4
from hessian_spectra.experiments.compare_methods.measures import pyhessian_trace_rule
from hessian_spectra.experiments.compare_methods.reference import reference_spectrum
from hessian_spectra.experiments.ghosts import lanczos_ghosts
from hessian_spectra.experiments.synthetic import STUDY_TOP20, study_like_matrix
from hessian_spectra.models import digits_cnn, resnet20


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
    record, *_ = dense_record
    claims = {c["key"]: c["holds"] for c in record["claims"]}
    assert set(claims) == {
        "plain_lanczos_gives_k_distinct",
        "lanczos_fewer_hvps_than_power",
        "power_rule_accurate",
        "sketch_overestimates_top_k",
        "sketch_doubling_minimal_gain",
        "sketch_trace_optimal",
        "pyhessian_trace_rule_accurate",
        "rangefinder_never_overestimates",
        "nystrom_never_overestimates",
    }
    assert claims["plain_lanczos_gives_k_distinct"] is False
    assert claims["lanczos_fewer_hvps_than_power"] is True
    assert claims["rangefinder_never_overestimates"] is True
    assert claims["sketch_trace_optimal"] is False


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
            "--block-size", "2", "--reference-trace-probes", "4", "--no-plots",
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
    # docs/reproduction.md's network claims table says what the recorded run found.
    root = Path(__file__).resolve().parents[2]
    record = json.loads((root / "docs/figures/compare-methods-summary.json").read_text())
    recorded = {c["key"]: c["holds"] for c in record["claims"]}
    text = (root / "docs/reproduction.md").read_text()
    start = text.index("<!-- claims:compare-methods -->")
    body = text[start : text.index("<!-- /claims:compare-methods -->")]
    stated = {
        key: verdict == "holds"
        for key, verdict in re.findall(
            r"^\|\s*`([a-z_]+)`\s*\|.*\|\s*\*\*(holds|does not hold)\*\*\s*\|\s*$", body, flags=re.M
        )
    }
    assert stated == recorded
    # and the run behind it is the documented one: digits CNN, seed 0, exact reference
    assert record["config"]["seed"] == 0 and record["reference"]["kind"] == "exact"
    assert record["problem"]["model"] == "digits_cnn" and record["n"] == 2650
