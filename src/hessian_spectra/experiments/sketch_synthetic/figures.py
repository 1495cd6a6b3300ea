"""The figures of `sketch-synthetic`: analogues of the study's Figures 7-18, and an overview.

Drawn with `hessian_spectra.figures` from a run's rows; each is saved with the
numbers it draws in a JSON file beside the PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import NullFormatter

from hessian_spectra.experiments._io import FIGURE_DPI
from hessian_spectra.experiments.sketch_synthetic.config import SketchSyntheticConfig
from hessian_spectra.experiments.sketch_synthetic.measures import (
    error_array,
    mean_abs_grid,
    nan_reduce,
)
from hessian_spectra.figures import new_figure, save_figure, styled

#: Resolution of the many-panel figures (kept small in docs/figures, yet with
#: their 9-point legends readable when the figure is shown at page width).
PANEL_DPI = 80
#: Font size of legends and panel titles.
LEGEND_SIZE = 9
#: The error axes are symmetric-log: linear within +-SYMLOG_LINTHRESH percent.
SYMLOG_LINTHRESH = 1.0
#: The y label of those axes, saying that they are symmetric-log.
ERROR_LABEL = f"error [%], symlog (linear in ±{SYMLOG_LINTHRESH:g})"


def _legend_below(fig: Any, axes: Any, max_columns: int) -> None:
    """One legend for all panels (those of the first), below them: it covers no point."""
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(len(labels), max_columns),
        fontsize=LEGEND_SIZE,
        frameon=False,
    )


def _pct(x: float) -> str:
    return f"{100 * x:g}%"


@styled
def plot_family(
    rows: Sequence[Mapping[str, Any]],
    config: SketchSyntheticConfig,
    kind: str,
    out: Path,
    *,
    by: str,
) -> list[Path]:
    """One figure per zero fraction (`by="zero_fraction"`, the study's Figures 7-12) or
    per ratio (`by="ratio"`, Figures 13-18), plus a panel of all of them.

    Each series is the mean percent error over matrices and sketches at each
    rank, with a band from the smallest to the largest error.
    """
    arr = error_array(rows, config, kind)  # (F, M, R, S, K)
    mean = nan_reduce(np.nanmean, arr, (1, 3))
    lo = nan_reduce(np.nanmin, arr, (1, 3))
    hi = nan_reduce(np.nanmax, arr, (1, 3))
    ranks = np.arange(1, config.top_k + 1)
    if by == "zero_fraction":
        panels, series = list(config.zero_fractions), list(config.ratios)
        first_fig = 7

        def pick(a: np.ndarray, p: int, s: int) -> np.ndarray:
            return a[p, s]

        def ptitle(p: float) -> str:
            return f"{_pct(p)} zero eigenvalues"

        def slabel(s: float) -> str:
            return f"ratio {s:g} (d={config.sketch_size(s)})"

    elif by == "ratio":
        panels, series = list(config.ratios), list(config.zero_fractions)
        first_fig = 13

        def pick(a: np.ndarray, p: int, s: int) -> np.ndarray:
            return a[s, p]

        def ptitle(p: float) -> str:
            return f"sketch ratio {p:g} (d={config.sketch_size(p)})"

        def slabel(s: float) -> str:
            return f"{_pct(s)} zeros"

    else:
        raise ValueError(f"by must be 'zero_fraction' or 'ratio', got {by!r}")

    tag = "zero" if by == "zero_fraction" else "ratio"
    subtitle = (
        f"{kind} sketch, n={config.n}, {config.num_matrices} matrices x "
        f"{config.num_sketches} sketches, seed {config.seed}"
    )
    paths: list[Path] = []

    def draw(ax: Any, p: int) -> dict[str, Any]:
        drawn: dict[str, Any] = {}
        for s, sval in enumerate(series):
            m = pick(mean, p, s)
            ok = np.isfinite(m)
            (line,) = ax.plot(ranks[ok], m[ok], marker="o", ms=3, label=slabel(sval))
            ax.fill_between(
                ranks[ok],
                pick(lo, p, s)[ok],
                pick(hi, p, s)[ok],
                color=line.get_color(),
                alpha=0.08,
            )
            drawn[str(sval)] = {
                "rank": ranks[ok].tolist(),
                "mean": m[ok].tolist(),
                "min": pick(lo, p, s)[ok].tolist(),
                "max": pick(hi, p, s)[ok].tolist(),
            }
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_yscale("symlog", linthresh=SYMLOG_LINTHRESH)
        ax.set_xlabel("eigenvalue rank (1 = largest)")
        ax.set_ylabel(ERROR_LABEL)
        return drawn

    panel_data: dict[str, Any] = {}
    for p, pval in enumerate(panels):
        fig, ax = new_figure(8.5, 4.2)
        drawn = draw(ax, p)
        ax.set_title(
            f"Fig. {first_fig + p} analogue: {ptitle(pval)}\n{subtitle}\n"
            "100 (sketch - true) / true; symmetric-log axis",
            fontsize=9,
        )
        # outside the axes: no data point is covered
        ax.legend(fontsize=LEGEND_SIZE, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        name = f"fig{first_fig + p:02d}_{kind}_{tag}{pval:g}"
        paths.append(
            save_figure(
                fig,
                out / f"{name}.png",
                {"kind": kind, "panel": pval, "by": by, "series": drawn},
                dpi=FIGURE_DPI,
                palette=True,
            )
        )
        panel_data[str(pval)] = drawn
    ncols = 3
    nrows = -(-len(panels) // ncols)
    fig, axes = new_figure(12.0, 3.2 * nrows + 0.9, nrows=nrows, ncols=ncols, squeeze=False)
    for p, pval in enumerate(panels):
        ax = axes[p // ncols][p % ncols]
        draw(ax, p)
        ax.set_title(ptitle(pval), fontsize=LEGEND_SIZE + 1)
    # one legend for all panels, below them, so that it covers none of their points
    _legend_below(fig, axes, 6)
    for q in range(len(panels), nrows * ncols):
        axes[q // ncols][q % ncols].set_visible(False)
    last = first_fig + len(panels) - 1
    fig.suptitle(
        f"Figs. {first_fig}-{last} analogue: top-{config.top_k} percent error by "
        f"{'zero fraction' if by == 'zero_fraction' else 'sketch ratio'}; {subtitle}; "
        f"lines: mean, bands: min to max; y axis symmetric-log",
        fontsize=10,
    )
    paths.append(
        save_figure(
            fig,
            out / f"figs{first_fig:02d}-{last:02d}_{kind}_panel.png",
            {"kind": kind, "by": by, "panels": panel_data},
            dpi=PANEL_DPI,
            palette=True,
        )
    )
    return paths


@styled
def plot_kinds_overview(
    rows: Sequence[Mapping[str, Any]], config: SketchSyntheticConfig, out: Path
) -> Path:
    """Mean |error| against sketch ratio for each kind, one panel per kind, lines per fraction."""
    fig, axes = new_figure(4.0 * len(config.kinds), 4.2, ncols=len(config.kinds), squeeze=False)
    data: dict[str, Any] = {}
    for ki, kind in enumerate(config.kinds):
        ax = axes[0][ki]
        grid = mean_abs_grid(error_array(rows, config, kind))
        data[kind] = {str(f): grid[fi].tolist() for fi, f in enumerate(config.zero_fractions)}
        for fi, f in enumerate(config.zero_fractions):
            (line,) = ax.plot(config.ratios, grid[fi], marker="o", ms=3, label=f"{_pct(f)} zeros")
            if kind == "rademacher":
                pred = nan_reduce(
                    np.nanmean, error_array(rows, config, kind, "predicted_shift")[fi], (0, 2, 3)
                )
                ax.plot(config.ratios, pred, ls="--", lw=0.8, color=line.get_color())
                data.setdefault("rademacher_predicted_shift", {})[str(f)] = pred.tolist()
        if kind == "rademacher":
            ax.plot([], [], "k--", lw=0.8, label="tr(H less top k) / (d λ)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(config.ratios), [f"{r:g}" for r in config.ratios])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("sketch ratio d / n")
        ax.set_ylabel("mean |error| of top-k [%]")
        ax.set_title(kind, fontsize=LEGEND_SIZE + 1)
    _legend_below(fig, axes, 7)
    fig.suptitle(
        f"Mean |percent error| of the top {config.top_k}, n={config.n}, "
        f"{config.num_matrices} matrices x {config.num_sketches} sketches, seed {config.seed}",
        fontsize=10,
    )
    return save_figure(
        fig,
        out / "sketch_kinds_overview.png",
        {"ratios": list(config.ratios), "mean_abs": data},
        dpi=PANEL_DPI,
        palette=True,
    )
