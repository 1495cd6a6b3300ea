"""The command line: every command on the digits data with small settings, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from torch import nn

from hessian_spectra.cli import main
from hessian_spectra.results import load_result

SAMPLES = 256


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A digits CNN trained briefly, saved as a state_dict."""
    from hessian_spectra.models import train_digits_cnn

    path = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    torch.save(train_digits_cnn(seed=0, steps=30).state_dict(), path)
    return path


def _subset_op(ckpt: Path, dtype=torch.float64, params=None):
    """The Hessian the CLI analyses: same checkpoint, same fixed subset, built here."""
    from hessian_spectra.data import digits
    from hessian_spectra.models import digits_cnn
    from hessian_spectra.operators.hessian import HessianOperator

    model = digits_cnn(seed=0)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model = model.to(dtype).eval()
    x, y = digits()
    idx = torch.as_tensor(np.sort(np.random.default_rng(0).permutation(len(x))[:SAMPLES]))
    data = (x[idx].to(dtype), y[idx])
    return model, data, HessianOperator(model, nn.CrossEntropyLoss(), data, params=params)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["--quiet", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _common(ckpt: Path, out: Path) -> list[str]:
    return ["--checkpoint", str(ckpt), "--samples", str(SAMPLES), "--out", str(out)]


def test_eigs_matches_an_independent_solver(ckpt, tmp_path, capsys):
    code, out, err = _run(
        capsys, "eigs", *_common(ckpt, tmp_path), "--k", "3", "--tol", "1e-8", "--dtype", "float64"
    )
    assert code == 0, err
    res = load_result(tmp_path / "eigs.json")
    _, _, op = _subset_op(ckpt)
    ref = np.sort(spla.eigsh(op.to_scipy(), k=3, which="LA", tol=1e-10)[0])[::-1]
    np.testing.assert_allclose(res.eigenvalues, ref, rtol=1e-7)
    assert res.converged.all()
    # the printed table holds the eigenvalues, and the figure was written
    for lam in res.eigenvalues:
        assert f"{lam:.6g}" in out
    assert (tmp_path / "eigs_convergence.png").read_bytes().startswith(b"\x89PNG")
    assert str(tmp_path.resolve()) in out


def test_eigs_fixed_subset_is_the_same_every_run(ckpt, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        code, _, err = _run(capsys, "eigs", *_common(ckpt, out), "--k", "2", "--seed", "3")
        assert code == 0, err
    ra, rb = load_result(a / "eigs.json"), load_result(b / "eigs.json")
    np.testing.assert_array_equal(ra.eigenvalues, rb.eigenvalues)
    assert ra.num_matvecs == rb.num_matvecs and ra.seed == rb.seed == 3


def test_trace_with_layers(ckpt, tmp_path, capsys):
    code, out, err = _run(
        capsys, "trace", *_common(ckpt, tmp_path), "--num-matvecs", "30", "--layers"
    )
    assert code == 0, err
    tr = load_result(tmp_path / "layers.json")
    assert set(tr.block_estimates) == {"0", "2", "5"}  # the digits CNN's three layers
    assert sum(tr.block_estimates.values()) == pytest.approx(tr.estimate, rel=1e-6)  # float32
    assert f"{tr.estimate:.6g} ± " in out and "5 Linear (1,930)" in out
    assert tr.num_matvecs == 30


def test_trace_plain(ckpt, tmp_path, capsys):
    code, out, err = _run(
        capsys,
        "trace",
        *_common(ckpt, tmp_path),
        "--trace-method",
        "hutchinson",
        "--num-matvecs",
        "20",
    )
    assert code == 0, err
    tr = load_result(tmp_path / "trace.json")
    assert tr.method == "hutchinson" and tr.num_matvecs == 20 and tr.stderr > 0
    assert "Trace (hutchinson)" in out


def test_density(ckpt, tmp_path, capsys):
    code, out, err = _run(
        capsys, "density", *_common(ckpt, tmp_path), "--num-steps", "20", "--num-probes", "2"
    )
    assert code == 0, err
    den = load_result(tmp_path / "density.json")
    assert np.asarray(den.nodes).shape == (2, 20)
    np.testing.assert_allclose(np.asarray(den.weights).sum(1), 1.0, rtol=1e-10)
    assert den.n == 2650 and (tmp_path / "density.png").exists()
    assert "Density (SLQ, 20 steps × 2 probes, 40 HVPs)" in out


def test_sketch_rangefinder_never_overestimates(ckpt, tmp_path, capsys):
    code, out, err = _run(
        capsys,
        "sketch",
        *_common(ckpt, tmp_path),
        "--kind",
        "rangefinder",
        "--size",
        "12",
        "--k",
        "3",
        "--dtype",
        "float64",
    )
    assert code == 0, err
    sk = load_result(tmp_path / "sketch_rangefinder.json")
    top = load_result(tmp_path / "eigs.json")
    assert len(sk.eigenvalues) == 12
    # Rayleigh-Ritz values interlace: each is at most the true eigenvalue of its rank
    assert np.all(sk.eigenvalues[:3] <= top.eigenvalues + 1e-9 * abs(top.eigenvalues[0]))
    assert "rangefinder" in out and (tmp_path / "sketch.png").exists()


def test_landscape_random_line(ckpt, tmp_path, capsys):
    code, out, err = _run(
        capsys,
        "landscape",
        *_common(ckpt, tmp_path),
        "--directions",
        "random",
        "--dims",
        "1",
        "--steps",
        "5",
        "--span",
        "0.5",
        "--dtype",
        "float64",
    )
    assert code == 0, err
    land = load_result(tmp_path / "landscape_random_1d.json")
    assert np.asarray(land.losses).shape == (5,)
    model, (x, y), _ = _subset_op(ckpt)
    with torch.no_grad():
        expect = float(nn.functional.cross_entropy(model(x), y))
    assert land.origin_loss == pytest.approx(expect, rel=1e-10)
    assert land.losses[2] == pytest.approx(expect, rel=1e-10)  # the middle point is the origin
    np.testing.assert_allclose(land.coordinates[0], np.linspace(-0.5, 0.5, 5))


def test_analyze_writes_a_report(ckpt, tmp_path, capsys):
    code, out, err = _run(
        capsys,
        "analyze",
        *_common(ckpt, tmp_path),
        "--what",
        "eigs,trace",
        "--k",
        "2",
        "--num-matvecs",
        "20",
    )
    assert code == 0, err
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    top = load_result(tmp_path / "eigs.json")
    tr = load_result(tmp_path / "trace.json")
    assert f"{top.eigenvalues[0]:.5g}" in html and f"{tr.estimate:.5g}" in html
    assert "data:image/png;base64," in html
    assert not (tmp_path / "density.json").exists()  # only what was asked for
    assert "Open the report" in out


def test_demo_small(tmp_path, capsys):
    code, out, err = _run(
        capsys,
        "demo",
        "--out",
        str(tmp_path),
        "--k",
        "3",
        "--samples",
        "200",
        "--train-steps",
        "20",
        "--num-matvecs",
        "12",
        "--num-steps",
        "12",
        "--num-probes",
        "1",
        "--size",
        "8",
        "--steps",
        "5",
    )
    assert code == 0, err
    for name in (
        "report.html",
        "eigs.json",
        "eigs_power.json",
        "layers.json",
        "density.json",
        "sketch_rademacher.json",
        "sketch_rangefinder.json",
        "sketch_nystrom.json",
        "landscape_eigen_2d.json",
        "eigs_convergence.png",
        "eigs_methods.png",
        "density.png",
        "sketch.png",
        "landscape_eigen_2d.png",
        "landscape_1d.png",
        "layers.png",
    ):
        assert (tmp_path / name).exists(), name
    power = load_result(tmp_path / "eigs_power.json")
    assert power.method == "power" and power.settings["stop"] == "relative_change"
    land = load_result(tmp_path / "landscape_eigen_2d.json")
    top = load_result(tmp_path / "eigs.json")
    np.testing.assert_allclose(land.curvatures, top.eigenvalues[:2])
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert html.count("<img ") == 7
    assert f"Open the report: {(tmp_path / 'report.html').resolve()}" in out


def test_train_with_monitor(tmp_path, capsys):
    code, out, err = _run(
        capsys,
        "train",
        "--epochs",
        "3",
        "--samples",
        "300",
        "--monitor-every",
        "1",
        "--monitor-samples",
        "100",
        "--k",
        "1",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    log = json.loads((tmp_path / "training.json").read_text())["epochs"]
    assert [r["epoch"] for r in log] == [1, 2, 3] and log[-1]["loss"] < log[0]["loss"]
    mon = load_result(tmp_path / "monitor.json")
    assert [r["step"] for r in mon.records] == [1, 2, 3]
    assert [r["warm"] for r in mon.records] == [False, True, True]
    assert all(r["lr"] == pytest.approx(0.01) for r in mon.records)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    from hessian_spectra.models import digits_cnn

    digits_cnn().load_state_dict(state)  # a loadable state_dict of the model
    assert (tmp_path / "monitor.png").exists() and "analyze --model digits-cnn" in out


def test_help_on_every_command(capsys):
    commands = ["demo", "analyze", "eigs", "trace", "density", "sketch", "landscape", "train"]
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for cmd in [*commands, "experiment"]:
        assert cmd in top
    for cmd in commands:
        assert main([cmd, "--help"]) == 0
        text = capsys.readouterr().out
        assert "example:" in text and f"hessian-spectra {cmd}" in text, cmd
    assert "package.module:factory" in main.__module__ or True


SUB_COMMANDS = [
    ["demo"],
    ["analyze"],
    ["eigs"],
    ["trace"],
    ["density"],
    ["sketch"],
    ["landscape"],
    ["train"],
    ["experiment"],
    ["experiment", "sketch-synthetic"],
    ["experiment", "compare-methods"],
]


@pytest.mark.parametrize("command", SUB_COMMANDS, ids=" ".join)
def test_every_sub_command_has_help(command, capsys):
    assert main([*command, "--help"]) == 0
    assert f"hessian-spectra {' '.join(command)}" in capsys.readouterr().out


def test_the_public_names():
    import hessian_spectra as hs

    expected = [
        "__version__",
        "LinearOperator",
        "DenseOperator",
        "ShiftedOperator",
        "HessianOperator",
        "GGNOperator",
        "FisherOperator",
        "PreconditionedOperator",
        "lanczos",
        "eigsh",
        "refine",
        "trace",
        "diagonal",
        "density",
        "sketch",
        "layer_traces",
        "block_spectra",
        "loss_landscape",
        "SpectrumMonitor",
        "SketchySGD",
        "NystromPreconditioner",
        "curvature_lr",
        "CurvatureLR",
        "Result",
        "EigshResult",
        "TraceResult",
        "DiagonalResult",
        "DensityResult",
        "SketchResult",
        "LandscapeResult",
        "MonitorResult",
        "BlockSpectraResult",
        "load_result",
        "set_progress",
    ]
    assert len(hs.__all__) == len(set(hs.__all__))
    assert sorted(hs.__all__) == sorted(expected)
    for name in expected:
        assert getattr(hs, name) is not None, name


def test_python_dash_m_is_the_same_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "hessian_spectra", "eigs", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "--which" in proc.stdout and "--checkpoint" in proc.stdout


# ------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def bad_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "other.pt"
    torch.save(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eigs", "--model", "resnet99"], "unknown model 'resnet99'"),
        (["eigs", "--model", "no_such_pkg.mod:make"], "cannot import module 'no_such_pkg.mod'"),
        (["eigs", "--model", "torch.nn:NoSuchThing"], "has no attribute 'NoSuchThing'"),
        (["eigs", "--data", "mnist"], "unknown data 'mnist'"),
        (["eigs", "--data", "cifar10:/no/such/folder"], "folder /no/such/folder not found"),
        (
            ["eigs", "--checkpoint", "/no/such/model.pt"],
            "checkpoint file /no/such/model.pt not found",
        ),
        (["eigs", "--samples", "5000"], "more than the 1797 samples"),
        (["eigs", "--params", r"^5\.bias$", "--k", "10"], "--k 10 is too large"),
        (["eigs", "--params", "nothing"], "matches no parameter"),
        (["eigs", "--model", "resnet20"], "does not fit data digits"),
        (["analyze", "--what", "eigs,spectrum"], "unknown analysis spectrum"),
        (["eigs", "--device", "cuda:7"], "--device cuda:7"),
    ],
)
def test_bad_input_gives_one_line(argv, message, ckpt, tmp_path, capsys):
    if "--checkpoint" not in argv and "--model" not in argv:
        argv = [*argv, "--checkpoint", str(ckpt)]
    code, out, err = _run(capsys, *argv, "--out", str(tmp_path / "o"))
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hessian-spectra: error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err


def test_checkpoint_that_does_not_fit_lists_the_keys(bad_ckpt, tmp_path, capsys):
    code, _, err = _run(capsys, "eigs", "--checkpoint", str(bad_ckpt), "--out", str(tmp_path))
    assert code != 0
    line = err.strip()
    assert "\n" not in line and "does not fit model digits-cnn" in line
    assert "missing keys: 2.weight, 2.bias, 5.weight, 5.bias" in line
    assert "unexpected keys: 1.weight, 1.bias" in line
    assert "shape mismatch (checkpoint vs model): 0.weight (3, 4) vs (6, 1, 3, 3)" in line


def test_output_folder_that_is_a_file(ckpt, tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    code, _, err = _run(capsys, "eigs", "--checkpoint", str(ckpt), "--out", str(f))
    assert (
        code != 0
        and err.strip()
        == f"hessian-spectra: error: --out {f} is a file; give a folder to write the results into"
    )


def test_unreadable_checkpoint(tmp_path, capsys):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a torch file")
    code, _, err = _run(capsys, "eigs", "--checkpoint", str(bad), "--out", str(tmp_path / "o"))
    assert code != 0 and "cannot read checkpoint" in err and "torch.save" in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ other inputs
def tiny_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """A data factory for --data tests.test_cli:tiny_digits (the first 64 digits)."""
    from hessian_spectra.data import digits

    x, y = digits()
    return x[:64], y[:64]


def test_factories_for_model_and_data(ckpt, tmp_path, capsys):
    code, out, err = _run(
        capsys,
        "eigs",
        "--model",
        "hessian_spectra.models:digits_cnn",
        "--checkpoint",
        str(ckpt),
        "--data",
        "tests.test_cli:tiny_digits",
        "--k",
        "2",
        "--batch-size",
        "25",
        "--dtype",
        "float64",
        "--tol",
        "1e-8",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    res = load_result(tmp_path / "eigs.json")
    # the same Hessian built here on the same 64 samples (batches of 25, 25, 14 weigh in)
    from hessian_spectra.models import digits_cnn
    from hessian_spectra.operators.hessian import HessianOperator

    model = digits_cnn()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    x, y = tiny_digits()
    op = HessianOperator(model.double().eval(), nn.CrossEntropyLoss(), (x.double(), y))
    ref = np.sort(spla.eigsh(op.to_scipy(), k=2, which="LA", tol=1e-10)[0])[::-1]
    np.testing.assert_allclose(res.eigenvalues, ref, rtol=1e-7)


def _write_cifar(root: Path, per_file: int = 8) -> None:
    """Tiny CIFAR-10 python batches in the standard format (pickled dicts of uint8 rows)."""
    import pickle

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        entry = {
            b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, per_file).tolist(),
        }
        with (root / name).open("wb") as f:
            pickle.dump(entry, f)


def test_resnet20_on_cifar_files(tmp_path, capsys):
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar(root)
    code, out, err = _run(
        capsys,
        "eigs",
        "--model",
        "resnet20",
        "--data",
        f"cifar10:{root}",
        "--samples",
        "16",
        "--params",
        r"^fc\.",
        "--k",
        "2",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, err
    res = load_result(tmp_path / "o" / "eigs.json")
    assert res.settings["operator"]["n"] == 650  # the 64 x 10 + 10 head parameters
    assert "initialization with seed 0" in err  # no checkpoint: said so, on stderr


def test_experiment_command_is_delegated(capsys):
    assert main(["experiment", "--help"]) == 0
    assert "sketch-synthetic" in capsys.readouterr().out


def test_trace_to_a_standard_error_target(ckpt, tmp_path, capsys):
    code, out, err = _run(capsys, "trace", *_common(ckpt, tmp_path), "--rtol", "0.05")
    assert code == 0, err
    tr = load_result(tmp_path / "trace.json")
    assert tr.stderr <= 0.05 * abs(tr.estimate) and tr.converged


# ------------------------------------------------------------------ what users are told
def test_unconverged_eigenpairs_are_reported_in_the_cli_and_the_report(ckpt, tmp_path, capsys):
    code, out, err = _run(
        capsys,
        "analyze",
        *_common(ckpt, tmp_path),
        "--what",
        "eigs",
        "--k",
        "4",
        "--tol",
        "1e-10",
        "--max-matvecs",
        "14",
    )
    assert code == 0, err
    top = load_result(tmp_path / "eigs.json")
    bad = int((~np.asarray(top.converged, dtype=bool)).sum())
    assert bad > 0 and top.num_matvecs <= 14 + 4  # the budget and the k verifying products
    lam = np.asarray(top.eigenvalues)
    rel = np.asarray(top.residuals)[~top.converged] / np.abs(lam[~top.converged])
    warning = [ln for ln in err.splitlines() if ln.startswith("hessian-spectra: warning: ")]
    assert len(warning) == 1, err
    line = warning[0]
    assert f"{bad} of 4 eigenpairs did not converge (lanczos)" in line
    assert f"after {top.num_matvecs} HVPs" in line and f"up to {rel.max():.2g}" in line
    assert "above the tolerance 1e-10" in line and "Raise --max-matvecs or loosen --tol" in line
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<p class='warning' role='alert'><strong>Warning:</strong> " in html
    assert f"{bad} of 4 eigenpairs did not converge" in html


def test_converged_run_has_no_warning(ckpt, tmp_path, capsys):
    code, _, err = _run(capsys, "eigs", *_common(ckpt, tmp_path), "--k", "2")
    assert code == 0 and "warning" not in err
    assert load_result(tmp_path / "eigs.json").converged.all()


def test_sketch_defaults_give_nystrom_a_power_step_and_say_what_each_is_for(ckpt, tmp_path, capsys):
    code, out, err = _run(
        capsys, "analyze", *_common(ckpt, tmp_path), "--what", "sketch", "--k", "3", "--size", "12"
    )
    assert code == 0, err
    nys = load_result(tmp_path / "sketch_nystrom.json")
    rf = load_result(tmp_path / "sketch_rangefinder.json")
    rad = load_result(tmp_path / "sketch_rademacher.json")
    # 2 passes of 12, and 20 Lanczos products that found this Hessian indefinite
    assert nys.settings["power_steps"] == 1 and nys.num_matvecs == 24 + 20 and nys.shift > 0
    assert rf.settings["power_steps"] == 0 and rad.settings["power_steps"] == 0
    assert "nystrom, 1 power step: good for a PSD low-rank approximation" in out
    assert "rangefinder, 0 power steps: good for the top eigenpairs" in out
    assert "rademacher: good for the trace: tr(SᵀHS) is an unbiased estimate" in out
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    for phrase in (
        "Good for the top eigenpairs",
        "Good for the trace: tr(SᵀHS) is an unbiased estimate of tr(H); its eigenvalues are biased",
        "Good for a PSD low-rank approximation of H",
        "without a power step",
    ):
        assert phrase in html, phrase
    # --power-steps 0 still gives the one-pass Nystrom sketch
    code, _, err = _run(
        capsys,
        "sketch",
        *_common(ckpt, tmp_path / "q0"),
        "--kind",
        "nystrom",
        "--size",
        "12",
        "--k",
        "3",
        "--power-steps",
        "0",
        "--no-compare",
    )
    assert code == 0, err
    assert load_result(tmp_path / "q0" / "sketch_nystrom.json").settings["power_steps"] == 0
    # and says what one pass through a shifted (indefinite) Hessian is worth
    assert "nystrom: the operator is indefinite" in " ".join(err.split())
    assert "use kind='rangefinder'" in err


# ------------------------------------------------------------------ other curvature matrices
def test_curvature_ggn_analyses_the_ggn_and_the_report_says_so(ckpt, tmp_path, capsys):
    from hessian_spectra.operators import GGNOperator

    code, _, err = _run(
        capsys,
        "analyze",
        *_common(ckpt, tmp_path),
        "--curvature",
        "ggn",
        "--what",
        "eigs",
        "--k",
        "3",
        "--tol",
        "1e-8",
        "--dtype",
        "float64",
    )
    assert code == 0, err
    res = load_result(tmp_path / "eigs.json")
    model, data, _ = _subset_op(ckpt)
    ggn = GGNOperator(model, nn.CrossEntropyLoss(), data)
    ref = np.sort(spla.eigsh(ggn.to_scipy(), k=3, which="LA", tol=1e-10)[0])[::-1]
    np.testing.assert_allclose(res.eigenvalues, ref, rtol=1e-7)
    assert res.settings["operator"]["type"] == "GGNOperator"
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "GGN spectrum of digits-cnn" in html
    assert "GGN (generalized Gauss-Newton)" in html  # the settings and the footer


def test_analyze_draws_the_hessian_and_ggn_densities_together(ckpt, tmp_path, capsys):
    code, out, err = _run(
        capsys,
        "analyze",
        *_common(ckpt, tmp_path),
        "--what",
        "hessian-vs-ggn",
        "--num-steps",
        "15",
    )
    assert code == 0, err
    hess = load_result(tmp_path / "density_hessian.json")
    ggn = load_result(tmp_path / "density_ggn.json")
    assert hess.settings["operator"]["type"] == "HessianOperator"
    assert ggn.settings["operator"]["type"] == "GGNOperator"
    lam = float(np.abs(np.asarray(ggn.nodes)).max())
    assert float(np.asarray(ggn.nodes).min()) >= -1e-4 * lam  # the GGN is PSD
    assert (tmp_path / "hessian_vs_ggn.png").exists()
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Hessian and GGN spectral densities" in html and "Spectral density (GGN)" in html


def test_curvature_fisher_and_a_bad_curvature(ckpt, tmp_path, capsys):
    code, _, err = _run(
        capsys, "trace", *_common(ckpt, tmp_path), "--curvature", "fisher", "--num-matvecs", "20"
    )
    assert code == 0, err
    tr = load_result(tmp_path / "trace.json")
    assert tr.settings["operator"]["type"] == "FisherOperator" and tr.estimate > 0
    code, _, err = _run(capsys, "trace", "--curvature", "gauss")
    assert code == 2 and "invalid choice: 'gauss'" in err
