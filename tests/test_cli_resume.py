"""The command line's interrupted runs: SIGKILL or Ctrl-C part-way, then --resume."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from hessian_spectra.algorithms.lanczos import LanczosProcess
from hessian_spectra.checkpoint import load_checkpoint
from hessian_spectra.cli import main
from hessian_spectra.problems import build_model
from hessian_spectra.results import load_result


@contextmanager
def one_thread():
    """The subprocesses below run with one thread; so does the reference, for the same bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cli_args(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "init.pt"
    torch.save(build_model("digits-cnn", 0).state_dict(), path)
    return [
        "--quiet",
        "eigs",
        "--checkpoint",
        str(path),
        "--dtype",
        "float64",
        "--samples",
        "300",
        "--k",
        "8",
        "--tol",
        "1e-12",
        "--save-every",
        "5",
    ]


@pytest.fixture(scope="module")
def reference(cli_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    with one_thread():
        assert main([*cli_args, "--out", str(out)]) == 0
    res = load_result(out / "eigs.json")
    assert res.converged.all() and res.num_matvecs > 30
    return res


def assert_same_eigs(res, ref):
    assert np.array_equal(res.eigenvalues, ref.eigenvalues)
    assert np.array_equal(res.residuals, ref.residuals)
    assert res.num_matvecs == ref.num_matvecs and res.seed == ref.seed


def test_sigkill_part_way_then_resume(cli_args, reference, tmp_path, capsys):
    out = tmp_path / "run"
    state = out / "eigs.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hessian_spectra", *cli_args, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not state.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no state saved within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "eigs.json").exists(), "the run finished before it was killed"
    fp = torch.load(state, weights_only=True)["fingerprint"]
    saved = load_checkpoint(state, "eigsh/lanczos", fp)
    assert 5 <= saved["recorder"]["matvecs"] < reference.num_matvecs

    # resumed here (the same code and thread count as the killed process)
    with one_thread():
        assert main([*cli_args, "--out", str(out), "--resume"]) == 0
    assert f"resuming eigs from {state}" in capsys.readouterr().err
    assert_same_eigs(load_result(out / "eigs.json"), reference)
    assert not state.exists(), "the state of a finished run is removed"


def test_ctrl_c_saves_and_prints_the_command_that_resumes(
    cli_args, reference, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    original = LanczosProcess.step
    calls = {"n": 0}

    def interrupted_step(self):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(LanczosProcess, "step", interrupted_step)
    with one_thread():
        assert main([*cli_args, "--out", str(out)]) == 130
    monkeypatch.setattr(LanczosProcess, "step", original)
    err = capsys.readouterr().err
    state = out / "eigs.ckpt"
    assert f"the run so far is saved in {state}" in err
    lines = err.splitlines()
    command = lines[lines.index(next(x for x in lines if "To continue it, run:" in x)) + 1]
    args = shlex.split(command)
    assert args[0] == "hessian-spectra" and args[-1] == "--resume"
    fp = torch.load(state, weights_only=True)["fingerprint"]
    assert load_checkpoint(state, "eigsh/lanczos", fp)["recorder"]["matvecs"] == 11

    # the same command without --resume is refused, and says what to do
    with one_thread():
        assert main([*cli_args, "--out", str(out)]) == 2
    assert "add --resume to continue it" in capsys.readouterr().err
    with one_thread():
        assert main(args[1:]) == 0
    assert_same_eigs(load_result(out / "eigs.json"), reference)


def flipped_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """A data factory for --data tests.test_cli_resume:flipped_digits (other data, same shapes)."""
    from hessian_spectra.data import digits

    x, y = digits()
    return x.flip(-1), y


def test_resume_with_other_data_is_refused(cli_args, tmp_path, monkeypatch, capsys):
    """--resume with another --samples or --data: exit 2, naming the data, nothing printed."""
    out = tmp_path / "run"
    original = LanczosProcess.step
    calls = {"n": 0}

    def interrupted_step(self):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(LanczosProcess, "step", interrupted_step)
    with one_thread():
        assert main([*cli_args, "--out", str(out)]) == 130
    monkeypatch.setattr(LanczosProcess, "step", original)
    state = out / "eigs.ckpt"
    assert state.exists()
    capsys.readouterr()
    samples = cli_args.index("--samples") + 1
    fewer = [*cli_args[:samples], "200", *cli_args[samples + 1 :]]
    other = [*cli_args, "--data", "tests.test_cli_resume:flipped_digits"]
    for args in (fewer, other):
        with one_thread():
            assert main([*args, "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert "different computation (data: saved" in err, err
        assert not (out / "eigs.json").exists()
    assert state.exists()  # the saved run is kept for the right data
