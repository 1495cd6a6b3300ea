"""Figures: each draws the data it is given, with labelled axes and a title, as a valid PNG."""

from __future__ import annotations

import io

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from hessian_spectra import plots
from hessian_spectra.algorithms import density
from hessian_spectra.figures import save_figure
from hessian_spectra.operators import DenseOperator
from hessian_spectra.results import (
    EigshResult,
    LandscapeResult,
    MonitorResult,
    SketchResult,
    TraceResult,
)


def fake_eigsh(k: int = 4, steps: int = 12, method: str = "lanczos", seed: int = 0) -> EigshResult:
    """An eigsh result whose history converges geometrically to 10, 5, 2.5, ..."""
    rng = np.random.default_rng(seed)
    exact = 10.0 * 0.5 ** np.arange(k)
    history = []
    for j in range(1, steps + 1):
        err = 0.6**j
        history.append(
            {
                "matvecs": j,
                "seconds": 0.01 * j,
                "ritz_values": list(exact * (1 - err * rng.uniform(0.5, 1.0, k))),
                "residuals": list(exact * err),
            }
        )
    return EigshResult(
        eigenvalues=np.asarray(history[-1]["ritz_values"]),
        eigenvectors=torch.eye(20, k, dtype=torch.float64),
        residuals=np.asarray(history[-1]["residuals"]),
        converged=np.ones(k, dtype=bool),
        num_matvecs=steps,
        seconds=0.01 * steps,
        history=history,
        seed=seed,
        settings={"tol": 1e-3, "method": method},
        method=method,
    )


class FakeDensity:
    """The density-result interface plots rely on: nodes, weights, pdf, cdf."""

    def __init__(self) -> None:
        self.nodes = np.array([-0.1, 0.0, 0.05, 0.3, 4.0, 9.0])
        self.weights = np.array([0.02, 0.8, 0.1, 0.06, 0.015, 0.005])
        self.settings = {"num_steps": 6, "num_probes": 1}
        self.num_matvecs = 6

    def pdf(self, grid, sigma=None):
        s = 0.05 if sigma is None else sigma
        g = np.asarray(grid)[:, None]
        return (self.weights * np.exp(-0.5 * ((g - self.nodes) / s) ** 2)).sum(1) / (
            s * np.sqrt(2 * np.pi)
        )

    def cdf(self, x):
        x = np.asarray(x, dtype=np.float64)
        return ((x[..., None] >= self.nodes) * self.weights).sum(-1)


def _check_labels(fig: Figure) -> None:
    """Every 2-D data axis has both labels; the figure has a title."""
    assert fig._suptitle is not None and fig._suptitle.get_text().strip()
    seen: list = []
    for ax in fig.axes:
        twin = any(ax in other.get_shared_x_axes().get_siblings(other) for other in seen)
        seen.append(ax)
        if ax.get_label() == "<colorbar>" or not ax.has_data() or twin:
            continue
        assert ax.get_xlabel().strip(), f"axis {ax.get_title()!r} has no x label"
        assert ax.get_ylabel().strip(), f"axis {ax.get_title()!r} has no y label"


def _png_shape(fig: Figure, tmp_path) -> tuple[int, ...]:
    path = save_figure(fig, tmp_path / "fig.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = mpimg.imread(io.BytesIO(data), format="png")
    assert img.std() > 0.01  # not a blank canvas
    return img.shape


def test_convergence_draws_the_history(tmp_path):
    res = fake_eigsh(k=3, steps=10)
    fig = plots.plot_convergence(res)
    _check_labels(fig)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("λ")]
    assert len(lines) == 3
    for i, ln in enumerate(lines):
        np.testing.assert_array_equal(ln.get_xdata(), np.arange(1, 11))
        want = [sorted(h["ritz_values"], reverse=True)[i] for h in res.history]
        np.testing.assert_allclose(ln.get_ydata(), want)
    assert ax.get_xlabel().startswith("Hessian-vector products")
    assert fig.axes[1].get_yscale() == "log"
    assert "10 HVPs" in fig._suptitle.get_text()
    h, w, _ = _png_shape(fig, tmp_path)
    assert w > 1000 and h > 400


def test_eig_history_orders_values_by_which():
    res = fake_eigsh(k=3)
    mv, est, res_hist = plots.eig_history(res)
    assert mv.tolist() == list(range(1, 13))
    assert all(np.all(np.diff(e) <= 0) for e in est)  # "LA": descending
    assert all(r.shape == e.shape for r, e in zip(res_hist, est, strict=True))


def test_method_comparison_shows_costs(tmp_path):
    a = fake_eigsh(k=4, steps=8)
    b = fake_eigsh(k=4, steps=30, method="power", seed=1)
    fig = plots.plot_method_comparison({"Lanczos": a, "power": b})
    _check_labels(fig)
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert heights == [8, 30]
    _png_shape(fig, tmp_path)


def test_density_log_scale_and_cumulative(tmp_path):
    # 200 eigenvalues: 190 zeros and 10 outliers, through the real SLQ result record
    lam = np.r_[np.zeros(190), np.linspace(1.0, 10.0, 10)]
    den = density(DenseOperator(np.diag(lam)), num_steps=30, num_probes=2, seed=0)
    fig = plots.plot_density(den, eigenvalues=lam[-3:][::-1])
    _check_labels(fig)
    ax1, ax2 = fig.axes[:2]
    assert ax1.get_yscale() == "log" and ax2.get_yscale() == "log"
    line = ax2.get_lines()[0]
    x, frac = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    # the curve is the fraction of eigenvalues above x: 1 - cdf, floored at half an eigenvalue
    np.testing.assert_allclose(frac, np.maximum(1.0 - den.cdf(x), 0.5 / 200), rtol=1e-12)
    assert frac[0] == pytest.approx(1.0) and np.all(np.diff(frac) <= 1e-12)
    # the 10 outliers above the zeros: 5% of the spectrum just above zero
    assert frac[np.searchsorted(x, 0.5)] == pytest.approx(0.05, abs=0.02)
    assert any("of 200" in a.get_ylabel() for a in ax2.child_axes)  # the count axis
    crimson = [ln for ln in ax1.get_lines() if ln.get_label() == "top-k (Lanczos)"]
    assert len(crimson) == 1
    _png_shape(fig, tmp_path)


def test_sketch_errors_are_relative_percent(tmp_path):
    exact = fake_eigsh(k=4)
    lam = np.asarray(exact.eigenvalues)
    sk = SketchResult(
        matrix=np.diag(lam * 1.1),
        eigenvalues=lam * 1.1,
        eigenvectors=None,
        trace=float(lam.sum() * 1.1),
        num_matvecs=4,
        seconds=0.1,
    )
    fig = plots.plot_sketch({"rademacher": sk}, exact)
    _check_labels(fig)
    err = fig.axes[1].get_lines()[0].get_ydata()
    np.testing.assert_allclose(err, 10.0, rtol=1e-12)
    _png_shape(fig, tmp_path)


def _landscape(ndim: int) -> LandscapeResult:
    a = np.linspace(-1, 1, 11)
    if ndim == 1:
        losses = 1.0 + 0.5 * 3.0 * a**2
        coords = [a]
    else:
        b = np.linspace(-1, 1, 9)
        losses = 1.0 + 1.5 * a[:, None] ** 2 + 0.5 * b[None, :] ** 2
        coords = [a, b]
    return LandscapeResult(
        coordinates=coords,
        losses=losses,
        origin_loss=1.0,
        kind="eigen",
        curvatures=np.array([3.0, 1.0]),
        num_matvecs=0,
        seconds=0.0,
    )


def test_landscape_1d_overlays_the_quadratic_model(tmp_path):
    fig = plots.plot_landscape(_landscape(1))
    _check_labels(fig)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    quad = next(ln for name, ln in lines.items() if name.startswith("quadratic"))
    np.testing.assert_allclose(quad.get_ydata(), lines["loss"].get_ydata())
    _png_shape(fig, tmp_path)


def test_landscape_2d_has_contours_and_surface(tmp_path):
    fig = plots.plot_landscape(_landscape(2))
    _check_labels(fig)
    assert any(ax.name == "3d" for ax in fig.axes)
    assert "λ1 = 3" in fig._suptitle.get_text()
    h, w, _ = _png_shape(fig, tmp_path)
    assert w > h


def test_landscapes_1d_refuses_planes():
    with pytest.raises(ValueError, match="1-D"):
        plots.plot_landscapes_1d({"plane": _landscape(2)})


def test_layer_traces_bars_and_error_bars(tmp_path):
    tr = TraceResult(
        estimate=6.0,
        stderr=0.5,
        block_estimates={"conv1": 4.0, "conv2": 3.0, "fc": -1.0},
        block_stderrs={"conv1": 0.3, "conv2": 0.2, "fc": 0.1},
        num_matvecs=30,
        seconds=1.0,
    )
    fig = plots.plot_layer_traces(tr)
    _check_labels(fig)
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert widths == [4.0, 3.0, -1.0]
    assert "6 ± 0.5" in fig._suptitle.get_text()
    _png_shape(fig, tmp_path)
    with pytest.raises(ValueError, match="blocks"):
        plots.plot_layer_traces(TraceResult(estimate=1.0, stderr=0.1, num_matvecs=1, seconds=0))


def test_monitor_draws_two_over_lr(tmp_path):
    recs = [
        {
            "step": s,
            "eigenvalues": [10.0 + s, 5.0],
            "eig_matvecs": 30 if s == 0 else 10,
            "cold_matvecs": 30,
            "warm": s > 0,
            "trace": 50.0 + s,
            "trace_stderr": 1.0,
            "lr": 0.1,
        }
        for s in range(0, 50, 10)
    ]
    res = MonitorResult(records=recs, k=2, hvps_saved=80, num_matvecs=0, seconds=0.0)
    fig = plots.plot_monitor(res)
    _check_labels(fig)
    thr = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "2 / learning rate"]
    np.testing.assert_allclose(thr[0].get_ydata(), 20.0)
    assert "80 HVPs saved" in fig.axes[2].get_title()
    bare = plots.plot_monitor(res, lr_key=None)  # e.g. Adam: 2/lr is no threshold there
    assert not [ln for ln in bare.axes[0].get_lines() if ln.get_label() == "2 / learning rate"]
    _png_shape(fig, tmp_path)
