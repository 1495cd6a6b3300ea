"""SpectrumMonitor with an optimizer: preconditioned sharpness, threshold, density, writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hessian_spectra as hs
from hessian_spectra.analysis import tracking
from hessian_spectra.analysis.tracking import OverheadBudget, density_histogram, record_scalars
from hessian_spectra.results import MonitorKeys as Key
from hessian_spectra.results import load_result


def problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(48, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (48,))
    return model, (x, y), nn.CrossEntropyLoss()


class FakeWriter:
    """Records what a TensorBoard SummaryWriter would be asked to write."""

    def __init__(self):
        self.scalars: dict[str, list[tuple[int, float]]] = {}
        self.histograms: list[tuple[str, int, dict]] = []

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))

    def add_histogram_raw(self, tag, global_step, **hist):
        self.histograms.append((tag, global_step, hist))


def test_adam_preconditioned_sharpness_threshold_density_and_writer(tmp_path):
    model, data, crit = problem()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    writer = FakeWriter()
    mon = hs.SpectrumMonitor(
        model, crit, data, k=2, every=5, seed=0, tol=1e-5, optimizer=opt, density=12, writer=writer
    )
    mon(0)  # before the first step: Adam has no state yet, so no preconditioned values
    for step in range(1, 11):
        opt.zero_grad()
        crit(model(data[0]), data[1]).backward()
        opt.step()
        mon(step)
    first, last = mon.records[0], mon.records[-1]
    assert Key.PRECONDITIONED_EIGENVALUES not in first
    assert (
        first[Key.THRESHOLD] == pytest.approx(3800.0)
        and first[Key.THRESHOLD_OF] == "preconditioned"
    )
    assert last[Key.THRESHOLD_LABEL] == "38 / lr"
    # the recorded preconditioned eigenvalues are those of the operator at the state of step 10
    H = hs.HessianOperator(model, crit, data)
    exact = hs.eigsh(hs.PreconditionedOperator(H, opt), 2, seed=1, tol=1e-10).eigenvalues
    np.testing.assert_allclose(last[Key.PRECONDITIONED_EIGENVALUES], exact, rtol=1e-5)
    assert mon.records[2][Key.PRECONDITIONED_MATVECS] < mon.records[1][Key.PRECONDITIONED_MATVECS]
    assert last[Key.SIZE] == H.shape[0] and len(last[Key.DENSITY_NODES][0]) == 12
    assert mon.num_matvecs == sum(
        r[Key.EIG_MATVECS]
        + r[Key.TRACE_MATVECS]
        + r.get(Key.PRECONDITIONED_MATVECS, 0)
        + r[Key.DENSITY_MATVECS]
        for r in mon.records
    )
    # the writer got every record at its step
    assert [s for s, _ in writer.scalars["hessian/lambda_1"]] == [0, 5, 10]
    assert [s for s, _ in writer.scalars["hessian/preconditioned_lambda_2"]] == [5, 10]
    assert writer.scalars["hessian/trace"][-1][1] == pytest.approx(last[Key.TRACE])
    assert [(t, s) for t, s, _ in writer.histograms] == [("hessian/density", s) for s in (0, 5, 10)]
    counts = writer.histograms[-1][2]["bucket_counts"]
    assert sum(counts) == pytest.approx(H.shape[0])  # estimated numbers of eigenvalues
    # the series keeps it all through JSON, and the figure draws 38/lr on the preconditioned panel
    res = load_result(mon.to_json(tmp_path / "m.json"))
    assert res.records[-1][Key.PRECONDITIONED_EIGENVALUES] == last[Key.PRECONDITIONED_EIGENVALUES]
    fig = mon.plot(tmp_path / "m.png")
    assert len(fig.axes) == 4
    labels = [ln.get_label() for ln in fig.axes[1].get_lines()]
    assert "38 / learning rate" in labels
    assert "38 / learning rate" not in [ln.get_label() for ln in fig.axes[0].get_lines()]


def test_sgd_records_the_raw_threshold_and_no_preconditioned_values():
    model, data, crit = problem(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    mon = hs.SpectrumMonitor(model, crit, data, k=1, trace=False, optimizer=opt)
    opt.zero_grad()
    crit(model(data[0]), data[1]).backward()
    opt.step()
    rec = mon(0)
    assert rec[Key.THRESHOLD] == pytest.approx(3.8 / 0.5) and rec[Key.THRESHOLD_OF] == "raw"
    assert Key.PRECONDITIONED_EIGENVALUES not in rec
    fig = mon.plot()
    assert "3.8 / learning rate" in [ln.get_label() for ln in fig.axes[0].get_lines()]


def test_preconditioned_can_be_turned_off():
    model, data, crit = problem(2)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    opt.zero_grad()
    crit(model(data[0]), data[1]).backward()
    opt.step()
    mon = hs.SpectrumMonitor(model, crit, data, trace=False, optimizer=opt, preconditioned=False)
    rec = mon(0)
    assert Key.PRECONDITIONED_EIGENVALUES not in rec and rec[Key.THRESHOLD] == pytest.approx(2e3)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_budget_spaces_measurements(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tracking.time, "perf_counter", clock)
    budget = OverheadBudget(0.1)
    assert budget.allows()  # the first always runs
    budget.spend(2.0)  # 2 s measuring: the next may come once 2 + 2 <= 0.1 (t + 2), t >= 38 s
    clock.now += 37.0
    assert not budget.allows()
    clock.now += 2.0
    assert budget.allows()
    budget.spend(2.0)
    clock.now += 1.0
    assert budget.overhead == pytest.approx(4.0 / 40.0)
    assert budget.summary()["skipped"] == 1 and budget.summary()["max_overhead"] == 0.1
    with pytest.raises(ValueError, match="fraction"):
        OverheadBudget(1.5)
    assert OverheadBudget(None).allows() and OverheadBudget(None).allows()


def test_monitor_keeps_to_its_budget_and_reports_it():
    model, data, crit = problem(3)
    mon = hs.SpectrumMonitor(model, crit, data, k=1, trace=False, max_overhead=0.2)
    for step in range(40):
        mon(step)  # no training between calls: the budget lets only the first few through
    assert 1 <= len(mon.records) < 40
    settings = mon.result().settings
    assert settings["max_overhead"] == 0.2 and settings["skipped"] == 40 - len(mon.records)
    assert 0 < settings["overhead"] <= 1.0


def test_scalars_and_histogram_of_a_record():
    rec = {
        Key.STEP: 4,
        Key.EIGENVALUES: [3.0, 1.0],
        Key.PRECONDITIONED_EIGENVALUES: [30.0],
        Key.THRESHOLD: 38.0,
        Key.TRACE: 7.0,
        Key.TRACE_STDERR: 0.5,
        Key.LAYER_TRACES: {"0": [5.0, 0.2], "2": [2.0, 0.1]},
        Key.EIG_MATVECS: 10,
        Key.TRACE_MATVECS: 30,
        Key.PRECONDITIONED_MATVECS: 8,
    }
    assert record_scalars(rec, "h") == {
        "h/lambda_1": 3.0,
        "h/lambda_2": 1.0,
        "h/preconditioned_lambda_1": 30.0,
        "h/threshold": 38.0,
        "h/trace": 7.0,
        "h/trace_stderr": 0.5,
        "h/trace/0": 5.0,
        "h/trace/2": 2.0,
        "h/hvps": 48.0,
    }
    hist = density_histogram([[0.0, 1.0], [0.0, 3.0]], [[0.5, 0.5], [0.9, 0.1]], n=10, bins=3)
    assert hist["num"] == pytest.approx(10.0) and hist["bucket_limits"][-1] == 3.0
    assert hist["bucket_counts"] == pytest.approx([2.5 + 4.5, 2.5, 0.5])  # 10 x mean weight
