"""The monitor figure draws the stability threshold where it applies: 2/lr raw, 38/lr adaptive."""

from __future__ import annotations

import numpy as np

from hessian_spectra import plots
from hessian_spectra.plots.training import threshold_from_lr
from hessian_spectra.results import MonitorResult


def result(extra):
    recs = [
        {"step": s, "eigenvalues": [10.0 + s], "eig_matvecs": 10, "warm": s > 0, **extra(s)}
        for s in range(0, 30, 10)
    ]
    return MonitorResult(records=recs, k=1, num_matvecs=0, seconds=0.0)


def lines(ax):
    return {ln.get_label(): ln for ln in ax.get_lines()}


def test_formula():
    assert threshold_from_lr(0.1) == 20.0
    assert round(threshold_from_lr(1e-3, 0.9)) == 38_000
    assert threshold_from_lr(0.01, 0.5) == (2 + 1.0) / 0.5 / 0.01


def test_recorded_preconditioned_threshold_goes_on_its_own_panel():
    res = result(
        lambda s: {
            "preconditioned_eigenvalues": [100.0 + s],
            "preconditioned_matvecs": 8,
            "threshold": 380.0,
            "threshold_of": "preconditioned",
            "threshold_label": "38 / lr",
        }
    )
    fig = plots.plot_monitor(res)
    assert len(fig.axes) == 3  # raw, preconditioned, HVPs
    assert "38 / learning rate" in lines(fig.axes[1])
    assert "38 / learning rate" not in lines(fig.axes[0])
    np.testing.assert_allclose(lines(fig.axes[1])["38 / learning rate"].get_ydata(), 380.0)
    assert "preconditioned (warm start)" in lines(fig.axes[2])


def test_lr_and_beta1_without_a_recorded_threshold():
    fig = plots.plot_monitor(result(lambda s: {"lr": 0.01, "beta1": 0.9}))
    (label,) = [lab for lab in lines(fig.axes[0]) if "learning rate" in lab]
    assert label.startswith("38 / learning rate (β1 = 0.9)") and "P^-1/2" in label
    np.testing.assert_allclose(lines(fig.axes[0])[label].get_ydata(), 3800.0)
    plain = plots.plot_monitor(result(lambda s: {"lr": 0.1}))
    np.testing.assert_allclose(lines(plain.axes[0])["2 / learning rate"].get_ydata(), 20.0)
    none = plots.plot_monitor(result(lambda s: {"lr": 0.1}), lr_key=None)
    assert not [lab for lab in lines(none.axes[0]) if "learning rate" in lab]
