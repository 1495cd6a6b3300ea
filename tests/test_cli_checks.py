"""The command line refuses bad option values before any work, in one line with exit status 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from hessian_spectra.algorithms import eigsh_memory
from hessian_spectra.cli import main

TRAINING = "training the digits CNN"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["--quiet", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hessian-spectra: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eigs", "--tol", "0"], "--tol must be a positive number (a relative residual, e.g."),
        (["eigs", "--tol=-1e-3"], "--tol must be a positive number"),
        (["eigs", "--tol", "nan"], "--tol must be a positive number"),
        (["eigs", "--tol", "inf"], "--tol must be a positive number"),
        (["demo", "--tol", "0"], "--tol must be a positive number"),
        (["analyze", "--tol", "-1"], "--tol must be a positive number"),
        (["eigs", "--max-matvecs", "0"], "--max-matvecs must be a positive integer, got 0"),
        (["eigs", "--k", "0"], "--k must be a positive integer, got 0"),
        (["eigs", "--block-size", "0"], "--block-size must be a positive integer"),
        (["landscape", "--span", "0"], "--span must be a positive number (the grid goes from"),
        (["landscape", "--span", "-0.5"], "--span must be a positive number"),
        (["landscape", "--steps", "1"], "--steps must be at least 2, got 1"),
        (["analyze", "--span", "0"], "--span must be a positive number"),
        (["trace", "--rtol", "0"], "--rtol must be a positive number (a relative standard error"),
        (["trace", "--num-matvecs", "0"], "--num-matvecs must be a positive integer"),
        (["trace", "--num-matvecs", "3"], "--num-matvecs 3 is too few for the xtrace trace"),
        (["sketch", "--size", "0"], "--size must be a positive integer, got 0"),
        (["sketch", "--power-steps", "-1"], "--power-steps must be 0 or more"),
        (["density", "--num-steps", "0"], "--num-steps must be a positive integer"),
        (["density", "--num-probes", "0"], "--num-probes must be a positive integer"),
        (["eigs", "--samples", "0"], "--samples must be a positive integer"),
        (["eigs", "--batch-size", "0"], "--batch-size must be a positive integer"),
        (["eigs", "--save-every", "-1"], "--save-every must be 0 or more"),
        (["eigs", "--resume", "--save-every", "0"], "--resume needs the run's saved state"),
        (["eigs", "--seed", str(2**64)], "--seed must be a 64-bit integer"),
        (["eigs", "--params", "x("], "does not compile"),
        (["analyze", "--what", "eigs,nope"], "unknown analysis nope"),
        (["train", "--epochs", "0"], "--epochs must be a positive integer"),
        (["train", "--lr", "0"], "--lr must be a positive number"),
        (["train", "--momentum", "1.5"], "--momentum must be in [0, 1)"),
        (["train", "--weight-decay", "-1"], "--weight-decay must be 0 or a positive number"),
        (["train", "--decay", "0.5", "1.5"], "--decay takes fractions of the epochs"),
        (["train", "--monitor-samples", "0"], "--monitor-samples must be a positive integer"),
    ],
)
def test_bad_values_are_refused_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    # nothing may be built, read or trained: make every such step fail loudly
    import hessian_spectra.cli.setup as setup
    import hessian_spectra.cli.train as train

    def no_work(*a, **k):
        raise AssertionError("work started before the options were checked")

    for mod in (setup, train):
        monkeypatch.setattr(mod, "build_model", no_work)
        monkeypatch.setattr(mod, "load_data", no_work)
    t0 = time.perf_counter()
    code, out, err = _run(capsys, *argv, "--out", str(tmp_path / "o"))
    assert code == 2, err
    line = _one_line(err)
    assert message in line, line
    assert TRAINING not in err and "Training" not in out
    assert not (tmp_path / "o").exists()  # not even the output folder
    assert time.perf_counter() - t0 < 5


def test_tol_is_checked_before_the_digits_cnn_trains(tmp_path, capsys):
    t0 = time.perf_counter()
    code, _, err = _run(capsys, "eigs", "--tol", "0", "--out", str(tmp_path))
    assert code == 2 and TRAINING not in err
    assert _one_line(err) == (
        "hessian-spectra: error: --tol must be a positive number (a relative residual, "
        "e.g. --tol 1e-6), got 0"
    )
    assert time.perf_counter() - t0 < 5


def _train_with_unwritable_out(out: Path, extra: str = "") -> subprocess.CompletedProcess[str]:
    """`train` in a child process whose files cannot grow (RLIMIT_FSIZE 0): nothing can be
    written into --out, whoever runs it (root included)."""
    code = (
        "import resource, sys\n"
        "import matplotlib.font_manager\n"
        "from hessian_spectra.cli import main\n"
        f"{extra}"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
        f"sys.exit(main(['--quiet', 'train', '--epochs', '3', '--samples', '64', "
        f"'--out', {str(out)!r}]))\n"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="POSIX file-size limits")
def test_an_unwritable_out_is_found_before_train_trains(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    proc = _train_with_unwritable_out(out)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Training digits-cnn" not in proc.stdout  # no epoch was spent
    line = _one_line(proc.stderr)
    assert f"--out {out} is not writable (File too large)" in line, line
    assert list(out.iterdir()) == []  # the probe is gone


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_out_is_refused_before_train_trains(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, stdout, err = _run(capsys, "train", "--epochs", "3", "--out", str(out))
    finally:
        out.chmod(0o755)
    assert code == 2 and "Training" not in stdout
    assert "is not writable (Permission denied)" in _one_line(err)


# ------------------------------------------------------------------ data and factories
def empty_loader() -> DataLoader:
    """--data tests.test_cli_checks:empty_loader: a DataLoader that yields nothing."""
    return DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))


def short_loader() -> DataLoader:
    """A DataLoader whose only (short) batch drop_last drops."""
    ds = TensorDataset(torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long))
    return DataLoader(ds, batch_size=4, drop_last=True)


def endless_loader() -> DataLoader:
    """A DataLoader over an IterableDataset without a length."""

    class Endless(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:
                yield torch.zeros(1, 8, 8), torch.tensor(0)

    return DataLoader(Endless(), batch_size=4)


def exiting_factory():
    """A model (or data) factory that calls sys.exit() instead of returning."""
    sys.exit(0)


def exiting_with_status():
    raise SystemExit(3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("tests.test_cli_checks:empty_loader", "gives a DataLoader that yields no batch"),
        ("tests.test_cli_checks:short_loader", "gives a DataLoader that yields no batch"),
        ("tests.test_cli_checks:endless_loader", "a DataLoader over a dataset without a length"),
    ],
)
def test_empty_or_endless_data_loader_is_a_clear_error(data, message, tmp_path, capsys):
    code, _, err = _run(capsys, "eigs", "--data", data, "--out", str(tmp_path))
    assert code == 2, err
    line = _one_line(err)
    assert message in line and "StopIteration" not in line, line


@pytest.mark.parametrize("option", ["--model", "--data"])
@pytest.mark.parametrize("factory", ["exiting_factory", "exiting_with_status"])
def test_a_factory_that_calls_sys_exit_is_an_error(option, factory, tmp_path, capsys):
    code, _, err = _run(
        capsys, "eigs", option, f"tests.test_cli_checks:{factory}", "--out", str(tmp_path)
    )
    assert code == 2
    line = _one_line(err)
    assert f"{option} 'tests.test_cli_checks:{factory}': the factory called sys.exit()" in line
    assert "instead of returning" in line


def test_sys_exit_anywhere_in_a_run_is_reported(tmp_path, capsys, monkeypatch):
    import hessian_spectra.cli.commands as commands

    def exits(*a, **k):
        sys.exit()

    monkeypatch.setattr(commands, "build_setup", exits)
    code, _, err = _run(capsys, "eigs", "--out", str(tmp_path))
    assert code == 2
    assert "the run was stopped by SystemExit(None)" in err.splitlines()[-1]


def test_a_crafted_cifar_file_is_refused_through_the_cli(tmp_path, capsys):
    import pickle

    import numpy as np

    target = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(target), "w"))

    root = tmp_path / "cifar"
    root.mkdir()
    entry = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": Payload()}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (root / name).write_bytes(pickle.dumps(entry))
    code, _, err = _run(
        capsys, "eigs", "--model", "resnet20", "--data", f"cifar10:{root}", "--out", str(tmp_path)
    )
    assert code == 2 and not target.exists()
    assert "is not a standard CIFAR-10 python batch" in _one_line(err)


# ------------------------------------------------------------------ memory, before any work
@pytest.fixture
def no_data(monkeypatch):
    """Reading data, training or computing is a failure: the estimate needs only n."""
    import hessian_spectra.cli.setup as setup

    def no_work(*a, **k):
        raise AssertionError("data was read before the memory check")

    monkeypatch.setattr(setup, "load_data", no_work)


def test_eigs_k5000_on_resnet20_is_refused_fast(tmp_path, capsys, no_data):
    t0 = time.perf_counter()
    code, _, err = _run(
        capsys, "eigs", "--model", "resnet20", "--k", "5000", "--max-memory", "8GB",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 2
    line = _one_line(err)
    need = eigsh_memory(272_474, 5000) / 1e9  # the basis alone is 16.3 GB
    assert f"eigs would need about {need:.1f} GB for its vectors (n = 272,474 " in line
    assert "more than --max-memory 8GB (8.0 GB)" in line
    assert "ask for fewer eigenpairs with --k" in line and "--params" in line
    assert "--max-basis" not in line  # even the smallest basis for k = 5000 does not fit
    assert line.endswith("; or raise --max-memory")
    assert time.perf_counter() - t0 < 30


def test_the_suggested_max_basis_fits(tmp_path, capsys, no_data):
    import re

    argv = ["eigs", "--model", "resnet20", "--k", "5000", "--max-memory", "30GB"]
    code, _, err = _run(capsys, *argv, "--out", str(tmp_path))
    assert "or cap the Lanczos basis with --max-basis (--max-basis " in err
    fit = re.search(r"--max-basis (\d+) fits", err)
    assert code == 2 and fit, err
    code, _, err = _run(capsys, *argv, "--max-basis", fit.group(1), "--out", str(tmp_path))
    assert "data was read before the memory check" in err  # it got past the memory check


def test_memory_is_checked_against_what_is_available(tmp_path, capsys, no_data, monkeypatch):
    import hessian_spectra.cli.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 4 * 10**9)
    code, _, err = _run(
        capsys, "eigs", "--model", "resnet20", "--k", "5000", "--out", str(tmp_path)
    )
    assert code == 2
    line = _one_line(err)
    assert (
        "eigs would need about 41.8 GB" in line and "more than the 4.0 GB available on cpu" in line
    )
    assert "raise --max-memory" not in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["trace", "--num-matvecs", "20000"],
            "trace would need about 130.9 GB for its vectors (n = 272,474 parameters, float32)",
        ),
        (
            ["trace", "--num-matvecs", "20000", "--layers"],
            "layers would need about",
        ),
        (
            ["density", "--num-steps", "2000", "--num-probes", "10"],
            "density would need about",
        ),
        (["sketch", "--size", "2000", "--no-compare"], "sketch would need about"),
        (["analyze", "--what", "density", "--num-steps", "2000"], "density would need about"),
    ],
)
def test_each_analysis_is_sized_before_any_work(argv, message, tmp_path, capsys, no_data):
    code, _, err = _run(
        capsys, *argv, "--model", "resnet20", "--max-memory", "1GB", "--out", str(tmp_path)
    )
    assert code == 2
    line = _one_line(err)
    assert message in line and "more than --max-memory 1GB (1.0 GB)" in line, line


def test_options_that_cannot_fit_the_model_are_found_before_data(tmp_path, capsys, no_data):
    code, _, err = _run(
        capsys, "trace", "--params", r"^fc\.bias$", "--num-matvecs", "60",
        "--model", "resnet20", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 2
    line = _one_line(err)
    assert "the trace options do not fit this model: xtrace would use 30 >= n=10 probes" in line
    code, _, err = _run(
        capsys, "sketch", "--params", r"^fc\.", "--size", "650", "--k", "3",
        "--model", "resnet20", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 2
    assert "--size 650 must be below the parameter count 650" in _one_line(err)


@pytest.mark.parametrize("text", ["8 parsecs", "GB", "0.5", "0"])
def test_max_memory_must_be_an_amount(text, tmp_path, capsys):
    code, _, err = _run(capsys, "eigs", "--max-memory", text, "--out", str(tmp_path))
    assert code == 2
    line = _one_line(err)
    assert "--max-memory" in line and ("is not an amount of memory" in line or "at least" in line)
