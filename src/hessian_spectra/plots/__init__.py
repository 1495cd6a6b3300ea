"""Figures from result records: convergence, densities, sketches, landscapes, layers, monitors.

Every function takes result records (never an operator), returns a
`matplotlib.figure.Figure` built without pyplot (so no global state and no
display is needed), and gives each axis a label with its unit and each figure
a title that says what was run. `hessian_spectra.figures.save_figure` writes a PNG.

One module per subject: `eigen` (eigensolver histories, methods compared,
sketches), `density`, `landscape`, `training` (per-layer traces, monitors),
`blocks` (per-block densities and their Jensen-Shannon distances).
"""

from __future__ import annotations

from hessian_spectra.plots._common import EIG_LABEL, HVP_LABEL
from hessian_spectra.plots.blocks import plot_block_spectra
from hessian_spectra.plots.density import plot_densities, plot_density
from hessian_spectra.plots.eigen import (
    eig_history,
    plot_convergence,
    plot_method_comparison,
    plot_sketch,
)
from hessian_spectra.plots.landscape import plot_landscape, plot_landscapes_1d
from hessian_spectra.plots.training import plot_layer_traces, plot_monitor

__all__ = [
    "EIG_LABEL",
    "HVP_LABEL",
    "eig_history",
    "plot_block_spectra",
    "plot_convergence",
    "plot_densities",
    "plot_density",
    "plot_landscape",
    "plot_landscapes_1d",
    "plot_layer_traces",
    "plot_method_comparison",
    "plot_monitor",
    "plot_sketch",
]
