"""A plain loop: SpectrumMonitor(writer=SummaryWriter) writes scalars and a density histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")

import hessian_spectra as hs  # noqa: E402
from hessian_spectra.integrations.tensorboard import (  # noqa: E402
    read_histograms,
    read_scalars,
    summary_writer,
)
from hessian_spectra.results import MonitorKeys as Key  # noqa: E402


def test_monitor_writes_what_tensorboard_reads_back(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    crit = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with summary_writer(tmp_path) as writer:
        mon = hs.SpectrumMonitor(
            model, crit, (x, y), k=2, every=5, optimizer=opt, density=10, writer=writer, seed=0
        )
        for step in range(11):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
            mon(step)
    scalars = read_scalars(tmp_path)
    for tag in ("hessian/lambda_1", "hessian/lambda_2", "hessian/trace", "hessian/trace_stderr"):
        assert [s for s, _ in scalars[tag]] == [0, 5, 10], tag
    np.testing.assert_allclose(
        [v for _, v in scalars["hessian/lambda_1"]],
        [r[Key.EIGENVALUES][0] for r in mon.records],
        rtol=1e-6,
    )
    assert scalars["hessian/threshold"][0][1] == pytest.approx(4.0)  # 2 / lr, plain SGD
    assert "hessian/preconditioned_lambda_1" not in scalars  # SGD has no preconditioner
    hist = read_histograms(tmp_path)["hessian/density"]
    assert [s for s, _, _ in hist] == [0, 5, 10]
    assert sum(hist[-1][2]) == pytest.approx(67.0, rel=1e-5)  # as many eigenvalues as parameters


def test_reading_a_missing_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TensorBoard folder"):
        read_scalars(tmp_path / "absent")
