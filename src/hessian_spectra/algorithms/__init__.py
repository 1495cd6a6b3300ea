"""Matrix-free algorithms. They see only a `LinearOperator`, never a model or data.

Layers above import the public entry points from here, not from the modules
that define them, so the modules can move without breaking their callers.
"""

from hessian_spectra.algorithms.density import density
from hessian_spectra.algorithms.eigsh import eigsh
from hessian_spectra.algorithms.lanczos import lanczos
from hessian_spectra.algorithms.rqi import refine
from hessian_spectra.algorithms.sketch import sketch
from hessian_spectra.algorithms.trace import trace

__all__ = ["density", "eigsh", "lanczos", "refine", "sketch", "trace"]
