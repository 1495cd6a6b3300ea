"""The spectral density figure (stochastic Lanczos quadrature), as in the study's Figure 2."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from hessian_spectra.figures import new_figure, styled
from hessian_spectra.plots._common import EIG_LABEL, fmt


def _density_grid(den: Any, extra: np.ndarray | None, points: int) -> np.ndarray:
    nodes = np.asarray(den.nodes, dtype=np.float64).ravel()
    lo, hi = float(nodes.min()), float(nodes.max())
    if extra is not None and extra.size:
        lo, hi = min(lo, float(extra.min())), max(hi, float(extra.max()))
    pad = 0.05 * max(hi - lo, 1e-12)
    return np.linspace(lo - pad, hi + pad, points)


@styled
def plot_density(
    den: Any,
    *,
    eigenvalues: Sequence[float] | np.ndarray | None = None,
    sigma: float | None = None,
    points: int = 1200,
    title: str | None = None,
) -> Figure:
    """The spectral density on a log scale and the cumulative density (the study's Figure 2).

    Args:
        den: a `density` result (``nodes``, ``weights``, ``pdf(grid, sigma)``, ``cdf(x)``).
        eigenvalues: top eigenvalues from `eigsh` to mark along the axis.
        sigma: Gaussian broadening width (default: the result's own choice).
        points: grid points.
        title: the figure title.
    """
    extra = None if eigenvalues is None else np.asarray(eigenvalues, dtype=np.float64)
    grid = _density_grid(den, extra, points)
    pdf = np.asarray(den.pdf(grid, sigma), dtype=np.float64)
    cdf = np.asarray(den.cdf(grid), dtype=np.float64)
    fig, (ax1, ax2) = new_figure(9.0, 3.6, ncols=2)
    floor = max(float(pdf.max()) * 1e-9, 1e-300)
    ax1.semilogy(grid, np.maximum(pdf, floor), color="C0")
    ax1.fill_between(grid, floor, np.maximum(pdf, floor), color="C0", alpha=0.15)
    ax1.set_ylim(bottom=max(floor, float(pdf.max()) * 1e-7))
    ax1.set_xlabel(EIG_LABEL)
    ax1.set_ylabel("density (1 / λ unit)")
    ax1.set_title("Spectral density (log scale)")
    # the cumulative density as the fraction of eigenvalues above each value, on a log
    # scale, so that the outliers above the bulk near zero stay visible
    n = getattr(den, "n", None)
    above = np.clip(1.0 - cdf, 0.0, 1.0)
    lowest = 0.5 / n if n else max(float(above[above > 0].min(initial=1.0)) * 0.5, 1e-6)
    ax2.semilogy(grid, np.maximum(above, lowest), color="C2", label="fraction above λ")
    stderr = getattr(den, "cdf_stderr", None)
    if stderr is not None and getattr(den, "num_probes", 1) > 1:
        se = np.nan_to_num(np.asarray(stderr(grid), dtype=np.float64))
        ax2.fill_between(
            grid,
            np.maximum(above - se, lowest),
            np.maximum(above + se, lowest),
            color="C2",
            alpha=0.25,
            label="±1 standard error (probes)",
        )
    ax2.set_ylim(lowest * 0.8, 1.5)
    ax2.set_xlabel(EIG_LABEL)
    ax2.set_ylabel("fraction of eigenvalues above λ")
    ax2.set_title("Cumulative density (log scale)")
    if n:
        sec = ax2.secondary_yaxis("right", functions=(lambda f: f * n, lambda c: c / n))
        sec.set_ylabel(f"number of eigenvalues above λ (of {n:,})")
    if extra is not None:
        for ax in (ax1, ax2):
            for j, lam in enumerate(extra):
                ax.axvline(
                    lam,
                    color="crimson",
                    lw=0.6,
                    alpha=0.6,
                    label="top-k (Lanczos)" if j == 0 else None,
                )
        ax1.legend(frameon=False, loc="upper right")
    ax2.legend(frameon=False, loc="upper right", fontsize=7.5)
    # the share of eigenvalues in the bulk near zero
    nodes = np.asarray(den.nodes, dtype=np.float64)
    span = float(np.max(np.abs(nodes))) if nodes.size else 1.0
    near = float(den.cdf(0.01 * span) - den.cdf(-0.01 * span))
    ax1.text(
        0.97,
        0.55,
        f"{100 * near:.1f}% of eigenvalues lie\nwithin ±{fmt(0.01 * span, 2)} of 0 (1% of max |λ|)",
        transform=ax1.transAxes,
        ha="right",
        va="bottom",
        fontsize=8,
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"},
    )
    probes = den.settings.get("num_probes", "?") if hasattr(den, "settings") else "?"
    steps = den.settings.get("num_steps", "?") if hasattr(den, "settings") else "?"
    fig.suptitle(
        title
        or f"Stochastic Lanczos quadrature: {steps} steps × {probes} probe(s), "
        f"{getattr(den, 'num_matvecs', '?')} HVPs"
    )
    return fig


@styled
def plot_densities(
    dens: Mapping[str, Any], *, points: int = 1200, title: str | None = None
) -> Figure:
    """Several spectral densities on shared axes, e.g. the Hessian's and the GGN's.

    Args:
        dens: label -> `density` result (each with ``nodes``, ``pdf(grid)``, ``cdf(x)``).
        points: grid points, spanning every density's nodes.
        title: the figure title.
    """
    nodes = np.concatenate([np.asarray(d.nodes, dtype=np.float64).ravel() for d in dens.values()])
    lo, hi = float(nodes.min()), float(nodes.max())
    pad = 0.05 * max(hi - lo, 1e-12)
    grid = np.linspace(lo - pad, hi + pad, points)
    fig, (ax1, ax2) = new_figure(9.0, 3.6, ncols=2)
    top = max(float(np.max(d.pdf(grid))) for d in dens.values())
    floor = max(top * 1e-7, 1e-300)
    for j, (label, den) in enumerate(dens.items()):
        color = f"C{j}"
        pdf = np.asarray(den.pdf(grid), dtype=np.float64)
        ax1.semilogy(grid, np.maximum(pdf, floor), color=color, label=label)
        n = getattr(den, "n", None)
        above = np.clip(1.0 - np.asarray(den.cdf(grid), dtype=np.float64), 0.0, 1.0)
        lowest = 0.5 / n if n else 1e-6
        ax2.semilogy(grid, np.maximum(above, lowest), color=color, label=label)
    ax1.set_ylim(bottom=floor)
    ax1.set_xlabel(EIG_LABEL)
    ax1.set_ylabel("density (1 / λ unit)")
    ax1.set_title("Spectral densities (log scale)")
    ax1.legend(frameon=False, loc="upper right")
    ax2.set_xlabel(EIG_LABEL)
    ax2.set_ylabel("fraction of eigenvalues above λ")
    ax2.set_title("Cumulative densities (log scale)")
    ax2.legend(frameon=False, loc="upper right")
    fig.suptitle(title or "Spectral densities, stochastic Lanczos quadrature")
    return fig
