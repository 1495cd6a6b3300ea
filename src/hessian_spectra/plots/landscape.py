"""Loss landscapes: 1-D curves with their quadratic model, 2-D contours and surfaces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from hessian_spectra.figures import empty_figure, new_figure, styled
from hessian_spectra.plots._common import fmt
from hessian_spectra.results import LandscapeResult


def _dir_label(res: LandscapeResult, i: int) -> str:
    if res.kind == "eigen":
        return f"step along eigenvector v{i + 1} (parameter-space distance)"
    if res.kind == "random":
        return f"step along random direction d{i + 1} (× filter norm)"
    if res.kind == "gradient":
        return (
            "step along gradient g/‖g‖ (parameter-space distance)"
            if i == 0
            else ("step along random unit direction ⊥ g (parameter-space distance)")
        )
    return f"step along direction {i + 1} (× its norm {res.direction_norms[i]:.3g})"


@styled
def plot_landscape(
    res: LandscapeResult,
    *,
    curvatures: Sequence[float] | np.ndarray | None = None,
    title: str | None = None,
) -> Figure:
    """A 1-D loss curve or a 2-D loss surface (contours and a 3-D view).

    Args:
        res: a `loss_landscape` result.
        curvatures: eigenvalues along the directions, to overlay the quadratic
            model ``L0 + s a + lambda a^2 / 2`` on 1-D curves (default: the
            result's own curvatures, for eigenvector directions).
        title: the figure title.
    """
    curv = res.curvatures if curvatures is None else np.asarray(curvatures)
    kind = {
        "eigen": "top Hessian eigenvectors",
        "random": "random filter-normalized directions",
        "gradient": "the gradient",
        "given": "given directions",
    }.get(res.kind, res.kind)
    if res.ndim == 1:
        fig, ax = new_figure(5.2, 3.8)
        a = np.asarray(res.coordinates[0])
        ax.plot(a, res.losses, color="C0", lw=1.6, label="loss")
        if curv is not None and len(curv) >= 1:
            s = 0.0 if res.slopes is None else float(res.slopes[0])
            q = res.origin_loss + s * a + 0.5 * float(curv[0]) * a**2
            ax.plot(
                a, q, "--", color="C3", lw=1.1, label=f"quadratic model, λ = {fmt(float(curv[0]))}"
            )
            lo, hi = float(np.min(res.losses)), float(np.max(res.losses))
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.15 * (hi - lo))
        ax.plot([0.0], [res.origin_loss], "ko", ms=4, label="current parameters")
        ax.set_xlabel(_dir_label(res, 0))
        ax.set_ylabel("loss")
        ax.legend(frameon=False)
        fig.suptitle(title or f"Loss along {kind}")
        return fig
    a, b = (np.asarray(c) for c in res.coordinates)
    Z = np.asarray(res.losses, dtype=np.float64)
    fig = empty_figure(10.0, 4.2)  # the surface needs a 3-D axis beside the contours
    ax1 = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2, projection="3d")
    A, B = np.meshgrid(a, b, indexing="ij")
    zmin, zmax = float(Z.min()), float(Z.max())
    if zmin > 0 and zmax / zmin > 20:
        # losses spanning decades: geometric levels, so the basin is resolved
        levels = np.geomspace(zmin, zmax, 25)
        norm: Any = mpl.colors.LogNorm(vmin=zmin, vmax=zmax)
        scale = "log scale"
    else:
        levels = np.linspace(zmin, zmax if zmax > zmin else zmin + 1e-12, 25)
        norm = None
        scale = "linear scale"
    cs = ax1.contourf(A, B, Z, levels=levels, cmap="viridis", norm=norm)
    ax1.contour(A, B, Z, levels=levels[::3], colors="white", linewidths=0.5, alpha=0.7)
    cbar = fig.colorbar(cs, ax=ax1, shrink=0.9)
    cbar.set_label(f"loss ({scale})")
    if norm is not None:
        ticks = _log_ticks(zmin, zmax)
        cbar.set_ticks(ticks, labels=[fmt(t, 2) for t in ticks])
    ax1.plot([0.0], [0.0], marker="*", color="crimson", ms=10, mec="white", mew=0.6)
    ax1.set_xlabel(_short_dir(res, 0))
    ax1.set_ylabel(_short_dir(res, 1))
    ax1.set_title("Loss contours (★: current parameters)")
    ax1.set_aspect("equal" if np.isclose(np.ptp(a), np.ptp(b)) else "auto")
    ax1.grid(False)
    ax2.plot_surface(A, B, Z, cmap="viridis", linewidth=0, antialiased=True, rcount=40, ccount=40)
    ax2.set_xlabel(_short_dir(res, 0), labelpad=2)
    ax2.set_ylabel(_short_dir(res, 1), labelpad=2)
    ax2.set_zlabel("loss", labelpad=2)
    ax2.set_title("Loss surface")
    ax2.view_init(elev=30, azim=-60)
    ax2.tick_params(labelsize=7, pad=0)
    for axis in (ax2.xaxis, ax2.yaxis, ax2.zaxis):
        axis.set_major_locator(mpl.ticker.MaxNLocator(4))
    extra = ""
    if curv is not None and len(curv) >= 2:
        extra = f" (λ1 = {fmt(float(curv[0]), 3)}, λ2 = {fmt(float(curv[1]), 3)})"
    fig.suptitle(title or f"Loss on the plane of {kind}{extra}")
    return fig


def _log_ticks(lo: float, hi: float) -> list[float]:
    """About five round tick values between lo and hi on a log scale."""
    ticks = [t for t in mpl.ticker.LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(lo, hi)]
    ticks = [t for t in ticks if lo <= t <= hi]
    while len(ticks) > 6:
        ticks = ticks[::2]
    return ticks or [lo, hi]


def _short_dir(res: LandscapeResult, i: int) -> str:
    if res.kind == "eigen":
        return f"α{i + 1} along v{i + 1}"
    if res.kind == "random":
        return f"α{i + 1} along d{i + 1} (× filter norm)"
    if res.kind == "gradient":
        return "α along g/‖g‖" if i == 0 else "β along d ⊥ g"
    return f"α{i + 1} along direction {i + 1}"


@styled
def plot_landscapes_1d(
    curves: Mapping[str, LandscapeResult],
    *,
    title: str | None = None,
) -> Figure:
    """Several 1-D loss curves on one axis (e.g. along v1, v2 and a random unit direction).

    Curves with a curvature also show their quadratic model as a dashed line.
    """
    fig, ax = new_figure(5.6, 3.9)
    lo, hi = np.inf, -np.inf
    for j, (name, res) in enumerate(curves.items()):
        if res.ndim != 1:
            raise ValueError(f"{name}: plot_landscapes_1d takes 1-D landscapes; use plot_landscape")
        a = np.asarray(res.coordinates[0])
        ax.plot(a, res.losses, color=f"C{j}", lw=1.6, label=name)
        lo, hi = min(lo, float(np.min(res.losses))), max(hi, float(np.max(res.losses)))
        if res.curvatures is not None and len(res.curvatures):
            s = 0.0 if res.slopes is None else float(res.slopes[0])
            q = res.origin_loss + s * a + 0.5 * float(res.curvatures[0]) * a**2
            ax.plot(a, q, "--", color=f"C{j}", lw=0.9, alpha=0.8)
    ax.plot([], [], "--", color="0.4", lw=0.9, label="quadratic model L0 + gα + λα²/2")
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.1 * (hi - lo))
    ax.set_xlabel("step along unit direction (parameter-space distance)")
    ax.set_ylabel("loss")
    ax.legend(frameon=False, fontsize=8)
    fig.suptitle(title or "Loss along single directions through the parameters")
    return fig
