"""lr = c / lambda_max from an estimate or from a SpectrumMonitor's warm-started updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hessian_spectra as hs
from hessian_spectra.optim import CurvatureLR, curvature_lr
from tests.helpers import dense_op


def test_from_every_kind_of_source():
    res = hs.eigsh(dense_op([8.0, 4.0, 2.0, 1.0, 0.5]), k=2, seed=0)
    assert curvature_lr(res) == pytest.approx(1 / 8)
    assert curvature_lr(8.0, c=2.0) == pytest.approx(0.25)
    assert curvature_lr(torch.tensor(4.0)) == pytest.approx(0.25)
    assert curvature_lr({"eigenvalues": [10.0, 3.0]}, max_lr=0.05) == 0.05
    assert curvature_lr({"eigenvalues": [10.0]}, min_lr=0.5) == 0.5


def test_no_positive_curvature_is_refused():
    with pytest.raises(ValueError, match="positive"):
        curvature_lr(-1.0)
    with pytest.raises(ValueError, match="positive"):
        curvature_lr(1.0, c=0.0)
    with pytest.raises(TypeError, match="largest eigenvalue"):
        curvature_lr("big")


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    x = torch.randn(48, 3, dtype=torch.float64)
    y = torch.randn(48, 1, dtype=torch.float64)
    return model, x, y


def test_scheduler_sets_c_over_lambda_max_from_the_monitor():
    model, x, y = _problem()
    criterion = nn.MSELoss()
    mon = hs.SpectrumMonitor(model, criterion, (x, y), k=1, every=3, trace=False, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sched = CurvatureLR(opt, mon, c=0.8)
    with pytest.raises(ValueError, match="no record"):
        curvature_lr(mon)
    lrs = []
    for step in range(7):
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.step()
        lrs.append(sched.step(step))
    assert [lr is not None for lr in lrs] == [True, False, False, True, False, False, True]
    # the exact largest eigenvalue at the last update equals the monitor's estimate
    op = hs.HessianOperator(model, criterion, (x, y))
    H = op.matmat(torch.eye(op.shape[0], dtype=torch.float64))
    lam = float(torch.linalg.eigvalsh(H)[-1])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.8 / lam, rel=1e-3)
    assert curvature_lr(mon, c=0.8) == pytest.approx(opt.param_groups[0]["lr"])
    # the monitor recorded the learning rate in force at each update
    assert mon.records[0]["lr"] == 1e-3
    assert [s for s, _, _ in sched.records] == [0, 3, 6]
    # warm starts: the later updates cost fewer HVPs than the first, cold one
    assert mon.records[-1]["eig_matvecs"] <= mon.records[0]["eig_matvecs"]
    state = sched.state_dict()
    other = CurvatureLR(opt, mon)
    other.load_state_dict(state)
    assert other.lr == sched.lr and other.records == sched.records and other.c == 0.8


def test_scheduler_needs_a_monitor():
    model, x, y = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="SpectrumMonitor"):
        CurvatureLR(opt, monitor=np.zeros(3))  # type: ignore[arg-type]
