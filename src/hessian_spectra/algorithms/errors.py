"""What the algorithms raise or warn beyond plain argument errors.

- `InsufficientMemoryError`: a call whose basis or probes would not fit in
  the memory available (or in the user's ``max_memory``), refused before
  anything is allocated.
- `ConvergenceWarning`: an `eigsh` run that stopped (its budget spent) with
  pairs that did not converge.

The operator-level errors (a product that is NaN or inf, an operator that is
not symmetric) live with the operator contract, in
`hessian_spectra.operators`.
"""

from __future__ import annotations


class InsufficientMemoryError(MemoryError, ValueError):
    """A call would allocate more memory than is available, or than ``max_memory`` allows.

    Raised before any product is taken; the message gives the bytes the call
    needs, the bytes available and the options that lower the need. It is both
    a `MemoryError` and a `ValueError` (an argument the machine cannot satisfy).
    """


class ConvergenceWarning(UserWarning):
    """An eigensolver stopped with pairs that did not reach the tolerance.

    The result is still returned (check ``result.converged``); the message says
    how many pairs converged, the largest relative residual, and what to raise.
    """


__all__ = ["ConvergenceWarning", "InsufficientMemoryError"]
