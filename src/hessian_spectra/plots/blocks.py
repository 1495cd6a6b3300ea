"""Per-block spectra: the blocks' densities overlaid and their Jensen-Shannon distances."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from hessian_spectra.figures import new_figure, styled
from hessian_spectra.plots._common import EIG_LABEL, fmt
from hessian_spectra.results_blocks import BlockSpectraResult

#: blocks whose distances are written in the heat map's cells
ANNOTATE_UP_TO = 12


def short_names(names: list[str]) -> list[str]:
    """Block names without the module path they share (``transformer.h.0`` -> ``h.0``)."""
    dotted = [n for n in names if "." in n]
    if len(dotted) < 2:
        return list(names)
    prefix = os.path.commonprefix(dotted)
    prefix = prefix[: prefix.rfind(".") + 1] if "." in prefix else ""
    head = prefix.rstrip(".").rpartition(".")[0]  # keep the stack's own name: "h.0", not "0"
    cut = len(head) + 1 if head else 0
    return [n[cut:] if n.startswith(prefix) and cut else n for n in names]


@styled
def plot_block_spectra(
    res: BlockSpectraResult, *, points: int = 800, title: str | None = None
) -> Figure:
    """Each block's spectral density on shared axes (left) and the JS distances (right).

    Args:
        res: a `block_spectra` result.
        points: grid points of the densities.
        title: the figure title.
    """
    names = list(res.blocks)
    labels = short_names(names)
    dens = {name: res.density(name) for name in names}
    nodes = np.concatenate([np.asarray(d.nodes, dtype=np.float64).ravel() for d in dens.values()])
    lo, hi = float(nodes.min()), float(nodes.max())
    pad = 0.05 * max(hi - lo, 1e-12)
    grid = np.linspace(lo - pad, hi + pad, points)
    b = len(names)
    fig, (ax1, ax2) = new_figure(10.0, 4.2, ncols=2, width_ratios=[1.4, 1.0])
    pdfs = [np.asarray(dens[n].pdf(grid), dtype=np.float64) for n in names]
    top = max(float(p.max()) for p in pdfs)
    floor = max(top * 1e-6, 1e-300)
    for j, (label, pdf) in enumerate(zip(labels, pdfs, strict=True)):
        ax1.semilogy(grid, np.maximum(pdf, floor), color=f"C{j % 10}", label=label)
    ax1.set_ylim(bottom=floor)
    ax1.set_xlabel(EIG_LABEL)
    ax1.set_ylabel("density (1 / λ unit)")
    ax1.set_title("Spectral density of each block (SLQ, log scale)")
    ax1.legend(frameon=False, loc="upper right", fontsize="small", ncol=1 if b <= 8 else 2)
    D = np.asarray(res.js_distance, dtype=np.float64)
    im = ax2.imshow(D, vmin=0.0, vmax=1.0, cmap="viridis")
    ax2.grid(False)
    ax2.set_xticks(range(b), labels, rotation=60, ha="right", fontsize="small")
    ax2.set_yticks(range(b), labels, fontsize="small")
    if b <= ANNOTATE_UP_TO:
        for i in range(b):
            for j in range(b):
                ax2.text(
                    j,
                    i,
                    f"{D[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize="x-small",
                    color="white" if D[i, j] < 0.6 else "black",
                )
    ax2.set_title("Jensen-Shannon distance between blocks")
    fig.colorbar(im, ax=ax2, label="JS distance (0: same density, 1: disjoint)")
    off = D[~np.eye(b, dtype=bool)] if b > 1 else np.zeros(1)
    fig.suptitle(
        title
        or f"Per-block Hessian spectra ({res.grouping}, {b} blocks; mean JS distance "
        f"{fmt(float(off.mean()), 3)})"
    )
    return fig
