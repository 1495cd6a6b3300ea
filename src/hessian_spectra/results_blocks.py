"""The record of per-block spectra: `BlockSpectraResult` (from `hs.block_spectra`).

Kept beside ``results.py`` (which holds every other record and the JSON
machinery) so that neither file grows past its size limit. A record registers
with `load_result` when its module is imported: ``hs.load_result`` is
exported through this module (the same function), so it reads
`BlockSpectraResult` files in a fresh process too; so does
`BlockSpectraResult.from_json`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessian_spectra.results import DensityResult, Result, load_result

__all__ = ["BlockSpectraResult", "load_result"]


@dataclass(frozen=True, kw_only=True)
class BlockSpectraResult(Result):
    """Each block's trace, top eigenvalues and spectral density, and how the densities differ.

    The measurement of Zhang et al. 2024 ("Why Transformers Need Adam: A
    Hessian Perspective"): the Hessian's diagonal blocks (one per layer, or
    per module role) and the Jensen-Shannon distance between their spectral
    densities; blocks of different kinds (embeddings, attention, MLP, norms)
    have very different spectra in transformers, alike ones in CNNs.

    Attributes:
        blocks: the block names, in parameter order.
        grouping: ``"layers"``, ``"modules"``, ``"parameters"`` or ``"custom"``.
        block_sizes: parameters in each block.
        trace: the whole Hessian's trace estimate and `trace_stderr` its
            standard error.
        block_traces: each block's trace (the trace of its diagonal block of
            the Hessian), from the same probes as the whole; they sum to `trace`.
        block_trace_stderrs: the standard error of each.
        block_eigenvalues: each block's top eigenvalues (`eigsh` on the
            operator restricted to the block's parameters), largest first.
        block_residuals: their residual norms ``||H_b v - theta v||``.
        block_converged: whether each block's pairs all met the tolerance.
        block_densities: each block's stochastic Lanczos quadrature:
            ``{"nodes", "weights", "residuals", "converged", "num_nodes", "n"}``
            (see `density`).
        js_distance: (b, b) Jensen-Shannon distances (base 2, in [0, 1])
            between the blocks' densities on `grid`, symmetric with zero diagonal.
        grid: the eigenvalue grid the densities were compared on.
    """

    blocks: Sequence[str]
    grouping: str
    block_sizes: Mapping[str, int]
    trace: float
    trace_stderr: float
    block_traces: Mapping[str, float]
    block_trace_stderrs: Mapping[str, float]
    block_eigenvalues: Mapping[str, np.ndarray]
    block_residuals: Mapping[str, np.ndarray]
    block_converged: Mapping[str, bool]
    block_densities: Mapping[str, Mapping[str, Any]]
    js_distance: np.ndarray
    grid: np.ndarray

    def density(self, block: str) -> DensityResult:
        """Block `block`'s spectral density as a `DensityResult` (pdf, cdf, counts)."""
        if block not in self.block_densities:
            raise KeyError(f"no block {block!r}; the blocks are {list(self.blocks)}")
        d = self.block_densities[block]
        return DensityResult(
            nodes=np.asarray(d["nodes"]),
            weights=np.asarray(d["weights"]),
            residuals=np.asarray(d["residuals"]),
            converged=np.asarray(d["converged"]),
            num_nodes=np.asarray(d["num_nodes"]),
            n=int(d["n"]),
            num_matvecs=0,
            seconds=0.0,
        )

    def distance(self, a: str, b: str) -> float:
        """The Jensen-Shannon distance between the densities of blocks `a` and `b`."""
        names = list(self.blocks)
        return float(np.asarray(self.js_distance)[names.index(a), names.index(b)])
