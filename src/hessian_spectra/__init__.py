"""hessian-spectra: matrix-free spectra of neural-network Hessians.

Everything is built on Hessian-vector products: top-k eigenpairs (Lanczos,
block Lanczos, power iteration, sketch-seeded Rayleigh quotient iteration),
trace estimates with standard errors, stochastic Lanczos quadrature densities
and Hessian sketches.

Example:
    >>> import torch, hessian_spectra as hs
    >>> _ = torch.manual_seed(0)
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    >>> data = [(torch.randn(32, 4), torch.randint(0, 3, (32,))) for _ in range(3)]
    >>> op = hs.HessianOperator(model, nn.CrossEntropyLoss(), data)  # mean over 96 samples
    >>> top = hs.eigsh(op, k=3, seed=0)                  # Lanczos, largest 3
    >>> tr = hs.trace(op, num_matvecs=30, seed=0)        # XTrace, with a standard error
    >>> den = hs.density(op, num_steps=20, seed=0)       # stochastic Lanczos quadrature
    >>> op.shape, bool(top.converged.all()), top.num_matvecs < op.shape[0]
    ((131, 131), True, True)
"""

from __future__ import annotations

import importlib
from typing import Any

from hessian_spectra._version import __version__

# Public names and the module that defines each. Imported lazily so that
# `import hessian_spectra` stays cheap and the CLI starts fast.
_EXPORTS: dict[str, str] = {
    # operators
    "LinearOperator": "hessian_spectra.operators.base",
    "DenseOperator": "hessian_spectra.operators.base",
    "ShiftedOperator": "hessian_spectra.operators.base",
    "HessianOperator": "hessian_spectra.operators.hessian",
    "GGNOperator": "hessian_spectra.operators.ggn",
    "FisherOperator": "hessian_spectra.operators.fisher",
    "PreconditionedOperator": "hessian_spectra.operators.preconditioned",
    # algorithms
    "lanczos": "hessian_spectra.algorithms",
    "eigsh": "hessian_spectra.algorithms",
    "refine": "hessian_spectra.algorithms",
    "trace": "hessian_spectra.algorithms",
    "diagonal": "hessian_spectra.algorithms",
    "density": "hessian_spectra.algorithms",
    "sketch": "hessian_spectra.algorithms",
    # analysis
    "layer_traces": "hessian_spectra.analysis.layers",
    "block_spectra": "hessian_spectra.analysis.blocks",
    "loss_landscape": "hessian_spectra.analysis.landscape",
    "SpectrumMonitor": "hessian_spectra.analysis.monitor",
    # optimizers fed by curvature (also as hs.optim.<name>)
    "SketchySGD": "hessian_spectra.optim",
    "NystromPreconditioner": "hessian_spectra.optim",
    "curvature_lr": "hessian_spectra.optim",
    "CurvatureLR": "hessian_spectra.optim",
    # results
    "Result": "hessian_spectra.results",
    "EigshResult": "hessian_spectra.results",
    "TraceResult": "hessian_spectra.results",
    "DiagonalResult": "hessian_spectra.results",
    "DensityResult": "hessian_spectra.results",
    "SketchResult": "hessian_spectra.results",
    "LandscapeResult": "hessian_spectra.results",
    "MonitorResult": "hessian_spectra.results",
    "BlockSpectraResult": "hessian_spectra.results_blocks",
    # through results_blocks, so that hs.load_result also knows BlockSpectraResult files
    "load_result": "hessian_spectra.results_blocks",
    # progress
    "set_progress": "hessian_spectra._progress",
}

__all__ = ["__version__", *_EXPORTS]

# Subpackages reachable as attributes (``hs.optim.SketchySGD``), imported on first use.
_SUBPACKAGES: tuple[str, ...] = ("optim",)


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"hessian_spectra.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hessian_spectra' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
