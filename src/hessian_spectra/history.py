"""The keys of a result's ``history`` records, named once.

Every algorithm appends one record (a plain dict) per iteration to its
result's ``history``; plots, reports and JSON readers look values up by these
names. Each record holds `MATVECS` and `SECONDS` (so far, in the run) and the
estimates of the algorithm that wrote it, listed here by algorithm. The
strings are part of the JSON format: never change one, add a new name instead.

This module imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- every record
#: operator columns multiplied so far in the run (a resumed run counts on)
MATVECS = "matvecs"
#: wall seconds so far in the run
SECONDS = "seconds"

# --------------------------------------------------------------------------- eigsh, refine
#: current estimates of the wanted eigenvalues, in the result order
RITZ_VALUES = "ritz_values"
#: residual norms ||H v - theta v|| of those estimates
RESIDUALS = "residuals"
#: how many of the wanted pairs meet the tolerance (Lanczos, block Lanczos)
NUM_CONVERGED = "num_converged"
#: every Ritz value of the basis, ascending (Lanczos, block Lanczos)
ALL_RITZ_VALUES = "all_ritz_values"
#: residual estimates of `ALL_RITZ_VALUES`
ALL_RESIDUALS = "all_residuals"
#: basis vectors held, locked ones included (Lanczos, block Lanczos)
BASIS_SIZE = "basis_size"
#: thick restarts so far (Lanczos, block Lanczos)
RESTARTS = "restarts"
#: columns of the next block product (block Lanczos)
BLOCK = "block"
#: the pair being computed, 0-based (power iteration, RQI)
PAIR = "pair"
#: the end of the spectrum being computed, "LA" or "SA" (power iteration)
SIDE = "side"
#: spectral shift of the iteration (power iteration); Nystrom's shift (sketch)
SHIFT = "shift"
#: outer Rayleigh quotient steps of the current pair (RQI)
OUTER = "outer"
#: the stage of the pipeline, "sketch" for the record of the range finder (RQI)
PHASE = "phase"
#: columns of the range-finder sketch (RQI)
SKETCH_SIZE = "sketch_size"

# --------------------------------------------------------------------------- trace
#: the current trace estimate
ESTIMATE = "estimate"
#: its standard error
STDERR = "stderr"
#: Hutchinson-type probes so far
PROBES = "probes"

# --------------------------------------------------------------------------- density, sketch
#: Lanczos steps of the running probes (density); the pass, e.g. "range", "power 1" (sketch)
STEP = "step"
#: probes still running (density)
ACTIVE = "active"
#: the sketch's largest eigenvalue (sketch)
TOP = "top"

__all__ = [
    "ACTIVE",
    "ALL_RESIDUALS",
    "ALL_RITZ_VALUES",
    "BASIS_SIZE",
    "BLOCK",
    "ESTIMATE",
    "MATVECS",
    "NUM_CONVERGED",
    "OUTER",
    "PAIR",
    "PHASE",
    "PROBES",
    "RESIDUALS",
    "RESTARTS",
    "RITZ_VALUES",
    "SECONDS",
    "SHIFT",
    "SIDE",
    "SKETCH_SIZE",
    "STDERR",
    "STEP",
    "TOP",
]
