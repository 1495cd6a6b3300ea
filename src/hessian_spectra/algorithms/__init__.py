"""Matrix-free algorithms. They see only a `LinearOperator`, never a model or data.

Layers above import the public entry points from here, not from the modules
that define them, so the modules can move without breaking their callers.

Layout: `lanczos` is the kernel (the Lanczos process, short runs for the ends
of the spectrum); `eigen/` the eigensolvers behind `eigsh` (and `refine`);
`trace`, `diagonal`, `density` and `sketch` the estimators; `_run` the run context (seed,
generator, record, checkpoint) and `_linalg` the small dense helpers they all
share; `memory` the check of a call's memory before it allocates (with
`eigsh_memory`, `trace_memory` and `density_memory` to size a run up front);
`errors` what they raise or warn beyond argument errors.
"""

from hessian_spectra.algorithms.density import density, density_memory
from hessian_spectra.algorithms.diagonal import Method as DiagonalMethod
from hessian_spectra.algorithms.diagonal import diagonal
from hessian_spectra.algorithms.eigen.eigsh import Method as EigshMethod
from hessian_spectra.algorithms.eigen.eigsh import Which, eigsh, eigsh_memory
from hessian_spectra.algorithms.eigen.rqi import refine
from hessian_spectra.algorithms.errors import ConvergenceWarning, InsufficientMemoryError
from hessian_spectra.algorithms.lanczos import BOUND_STEPS, lanczos
from hessian_spectra.algorithms.memory import available_memory
from hessian_spectra.algorithms.sketch import Kind as SketchKind
from hessian_spectra.algorithms.sketch import sketch
from hessian_spectra.algorithms.trace import Method as TraceMethod
from hessian_spectra.algorithms.trace import trace, trace_memory

__all__ = [
    "BOUND_STEPS",
    "ConvergenceWarning",
    "DiagonalMethod",
    "EigshMethod",
    "InsufficientMemoryError",
    "SketchKind",
    "TraceMethod",
    "Which",
    "available_memory",
    "density",
    "density_memory",
    "diagonal",
    "eigsh",
    "eigsh_memory",
    "lanczos",
    "refine",
    "sketch",
    "trace",
    "trace_memory",
]
