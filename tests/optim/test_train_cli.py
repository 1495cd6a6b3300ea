"""``hessian-spectra train --optimizer sketchy-sgd``: loss, lambda_max and step size per epoch."""

from __future__ import annotations

import json

from hessian_spectra.cli import main


def test_train_with_sketchy_sgd(tmp_path, capsys):
    code = main(
        [
            "train",
            "--optimizer",
            "sketchy-sgd",
            "--epochs",
            "3",
            "--samples",
            "256",
            "--batch-size",
            "64",
            "--monitor-every",
            "3",
            "--monitor-samples",
            "64",
            "--k",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "sketchy-sgd, lr auto" in out.out
    log = json.loads((tmp_path / "training.json").read_text())["epochs"]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[-1]["loss"] < log[0]["loss"]
    for r in log:  # the step size is SketchySGD's own, from its preconditioned lambda_max
        assert r["lambda_max"] > 0 and 0 < r["lr"] <= 0.5 / r["lambda_max"] * (1 + 1e-9)
    # one refresh per epoch (4 steps): 10 sketch HVPs + 10 + 10 for the step size
    assert log[0]["hvps"] == 30 and log[-1]["hvps"] == 90
    assert (tmp_path / "training.png").stat().st_size > 0
    assert (tmp_path / "monitor.json").exists()
    assert "sketch (nystrom)" not in out.err  # no progress bar from inside the optimizer
