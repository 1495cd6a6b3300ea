"""Eigensolvers behind `eigsh`, one module each, and the helpers they share.

- `eigsh`: the entry point: argument checks, the run context, the table
  ``SOLVERS`` (method name -> `Solver`), the finishing steps.
- `lanczos_driver`, `block`, `power`, `rqi`: one solver each (`rqi` also holds
  the public `refine` and its MINRES).
- `_ritz`: what they share: the checked call (`EigenProblem`), the answer
  (`RawPairs`), the `Solver` description, thresholds, error estimates,
  Rayleigh-Ritz, restart choice.

Imports run downwards only: `eigsh` imports the solvers, the solvers import
`_ritz` and the kernel (`hessian_spectra.algorithms.lanczos`), never the entry
module or each other. To add a solver, write one module with a `SOLVER` and add
one line to ``SOLVERS`` in `eigsh`.

Layers above import `eigsh` and `refine` from `hessian_spectra.algorithms`.
"""
