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
