"""Matrix-free algorithms. They see only a `LinearOperator`, never a model or data.

Layers above import the public entry points from here, not from the modules
that define them, so the modules can move without breaking their callers.

Layout: `lanczos` is the kernel (the Lanczos process, short runs for the ends
of the spectrum); `eigen/` the eigensolvers behind `eigsh` (and `refine`);
`trace`, `density` and `sketch` the estimators; `_run` the run context (seed,
generator, record, checkpoint) and `_linalg` the small dense helpers they all
share.
"""

from hessian_spectra.algorithms.density import density
from hessian_spectra.algorithms.eigen.eigsh import Method as EigshMethod
from hessian_spectra.algorithms.eigen.eigsh import Which, eigsh
from hessian_spectra.algorithms.eigen.rqi import refine
from hessian_spectra.algorithms.lanczos import BOUND_STEPS, lanczos
from hessian_spectra.algorithms.sketch import Kind as SketchKind
from hessian_spectra.algorithms.sketch import sketch
from hessian_spectra.algorithms.trace import Method as TraceMethod
from hessian_spectra.algorithms.trace import trace

__all__ = [
    "BOUND_STEPS",
    "EigshMethod",
    "SketchKind",
    "TraceMethod",
    "Which",
    "density",
    "eigsh",
    "lanczos",
    "refine",
    "sketch",
    "trace",
]
