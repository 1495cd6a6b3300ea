"""Optimizers fed by curvature estimates from Hessian-vector products.

- `SketchySGD`: stochastic gradients preconditioned by a Nystrom sketch of the
  Hessian refreshed every few hundred steps, with a step size from the
  largest eigenvalue of the preconditioned Hessian (``sketchy.py``).
- `NystromPreconditioner`: that preconditioner on its own, for other loops
  (``nystrom.py``).
- `curvature_lr` and `CurvatureLR`: plain SGD with ``lr = c / lambda_max`` from
  a `SpectrumMonitor`'s warm-started estimate (``curvature_lr.py``).

Every optimizer here takes a closure that returns the loss and differentiates
it itself (``_closure.py``).
"""

from hessian_spectra.optim.curvature_lr import CurvatureLR, curvature_lr
from hessian_spectra.optim.nystrom import NystromPreconditioner
from hessian_spectra.optim.sketchy import SketchySGD

__all__ = ["CurvatureLR", "NystromPreconditioner", "SketchySGD", "curvature_lr"]
