"""What a spectrum series hands to training tools: scalar names, density histograms, a time budget.

`SpectrumMonitor` and the training-loop callbacks (``integrations/``) log a
record the same way, through this module:

- `record_scalars`: the record as named scalars, ``hessian/lambda_1``,
  ``hessian/lambda_2``, ..., ``hessian/preconditioned_lambda_1``,
  ``hessian/threshold``, ``hessian/trace``, ``hessian/trace_stderr``,
  ``hessian/trace/<layer>``, ``hessian/hvps``, ``hessian/seconds``;
- `density_histogram`: a stochastic Lanczos quadrature density as the
  bucket counts of a TensorBoard histogram (estimated numbers of eigenvalues);
- `write_record`: both, to anything with TensorBoard's ``add_scalar`` (and
  ``add_histogram_raw``), e.g. ``torch.utils.tensorboard.SummaryWriter``;
- `OverheadBudget`: spaces measurements so that their share of the wall time
  stays under a budget (e.g. 5 %), and reports the share spent;
- `adaptive_sharpness` and `density_entries`: the record entries of the
  preconditioned sharpness with the optimizer's stability threshold, and of a
  spectral density.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hessian_spectra.algorithms import density, eigsh
from hessian_spectra.operators import (
    LinearOperator,
    PreconditionedOperator,
    has_preconditioner,
    stability_threshold,
)
from hessian_spectra.results import MonitorKeys as Key

__all__ = [
    "OverheadBudget",
    "adaptive_sharpness",
    "density_entries",
    "density_histogram",
    "record_scalars",
    "write_record",
]

PREFIX = "hessian"


def record_scalars(record: Mapping[str, Any], prefix: str = PREFIX) -> dict[str, float]:
    """One monitor record as ``{tag: value}`` scalars (tags under `prefix`).

    Example:
        >>> rec = {"step": 3, "eigenvalues": [5.0, 2.0], "eig_matvecs": 12, "trace": 9.0}
        >>> sorted(record_scalars(rec))
        ['hessian/hvps', 'hessian/lambda_1', 'hessian/lambda_2', 'hessian/trace']
    """
    out: dict[str, float] = {}
    for i, v in enumerate(record.get(Key.EIGENVALUES) or []):
        out[f"{prefix}/lambda_{i + 1}"] = float(v)
    for i, v in enumerate(record.get(Key.PRECONDITIONED_EIGENVALUES) or []):
        out[f"{prefix}/preconditioned_lambda_{i + 1}"] = float(v)
    if record.get(Key.THRESHOLD) is not None:
        out[f"{prefix}/threshold"] = float(record[Key.THRESHOLD])
    if record.get(Key.TRACE) is not None:
        out[f"{prefix}/trace"] = float(record[Key.TRACE])
    if record.get(Key.TRACE_STDERR) is not None:
        out[f"{prefix}/trace_stderr"] = float(record[Key.TRACE_STDERR])
    for name, (est, _err) in (record.get(Key.LAYER_TRACES) or {}).items():
        out[f"{prefix}/trace/{name}"] = float(est)
    hvps = sum(
        int(record.get(key) or 0)
        for key in (
            Key.EIG_MATVECS,
            Key.TRACE_MATVECS,
            Key.PRECONDITIONED_MATVECS,
            Key.DENSITY_MATVECS,
        )
    )
    if hvps:
        out[f"{prefix}/hvps"] = float(hvps)
    if record.get(Key.SECONDS) is not None:
        out[f"{prefix}/seconds"] = float(record[Key.SECONDS])
    return out


def density_histogram(
    nodes: Sequence[Sequence[float]] | np.ndarray,
    weights: Sequence[Sequence[float]] | np.ndarray,
    n: int,
    bins: int = 64,
) -> dict[str, Any]:
    """A quadrature density as the arguments of TensorBoard's ``add_histogram_raw``.

    The bucket counts are estimated numbers of eigenvalues: each probe's Gauss
    weights times n, averaged over the probes, summed in each of `bins` equal
    buckets between the smallest and largest node.

    Example:
        >>> h = density_histogram([[-1.0, 0.0, 2.0]], [[0.25, 0.5, 0.25]], n=100, bins=3)
        >>> h["num"], [round(c) for c in h["bucket_counts"]]
        (100.0, [25, 50, 25])
    """
    N = np.atleast_2d(np.asarray(nodes, dtype=np.float64))
    W = np.atleast_2d(np.asarray(weights, dtype=np.float64)) * float(n) / max(N.shape[0], 1)
    lo, hi = float(N.min()), float(N.max())
    if hi <= lo:
        pad = max(abs(lo), 1.0) * 1e-3
        lo, hi = lo - pad, hi + pad
    edges = np.linspace(lo, hi, int(bins) + 1)
    counts, _ = np.histogram(N.ravel(), bins=edges, weights=W.ravel())
    return {
        "min": lo,
        "max": hi,
        "num": float(W.sum()),
        "sum": float((W * N).sum()),
        "sum_squares": float((W * N * N).sum()),
        "bucket_limits": [float(x) for x in edges[1:]],
        "bucket_counts": [float(c) for c in counts],
    }


def write_record(writer: Any, record: Mapping[str, Any], step: int, prefix: str = PREFIX) -> None:
    """Write a record's scalars (and its density as a histogram) with a TensorBoard writer.

    Args:
        writer: anything with ``add_scalar(tag, value, global_step)``; histograms
            go through its ``add_histogram_raw`` when it has one.
        record: a monitor record.
        step: the global step the values belong to.
        prefix: the tags' leading name.
    """
    for tag, value in record_scalars(record, prefix).items():
        writer.add_scalar(tag, value, int(step))
    nodes, weights = record.get(Key.DENSITY_NODES), record.get(Key.DENSITY_WEIGHTS)
    if nodes and weights and hasattr(writer, "add_histogram_raw"):
        n = int(record.get(Key.SIZE) or 1)
        writer.add_histogram_raw(
            f"{prefix}/density", global_step=int(step), **density_histogram(nodes, weights, n)
        )


class OverheadBudget:
    """Keeps measurements under a share of the wall time: ``spent / elapsed <= share``.

    The clock starts at the first `allows` (or `start`). A measurement is
    allowed when, had it the duration of the previous one, the share spent
    measuring would stay within the budget; the first is always allowed. So the
    measurements space themselves: every ``seconds_per_measurement / share``
    seconds at most.

    Example:
        >>> budget = OverheadBudget(0.05)
        >>> budget.allows()
        True
        >>> budget.spend(1.0)  # a measurement of one second: the next waits ~19 s
        >>> budget.allows()
        False
        >>> budget.skipped
        1

    Args:
        share: the budget, a fraction in (0, 1) (None: every measurement is allowed).

    Attributes:
        spent: seconds measured so far; ``skipped``: measurements refused.
    """

    def __init__(self, share: float | None = 0.05) -> None:
        if share is not None and not 0.0 < float(share) < 1.0:
            raise ValueError(f"max_overhead must be a fraction in (0, 1), got {share}")
        self.share = None if share is None else float(share)
        self.spent = 0.0
        self.skipped = 0
        self._last: float | None = None
        self._t0: float | None = None

    def start(self) -> None:
        """Start the clock (when it has not started)."""
        if self._t0 is None:
            self._t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Wall seconds since the clock started."""
        return 0.0 if self._t0 is None else time.perf_counter() - self._t0

    def allows(self) -> bool:
        """Whether a measurement now keeps the share within the budget (counts refusals)."""
        self.start()
        if self.share is None or self._last is None:
            return True
        ok = self.spent + self._last <= self.share * (self.elapsed + self._last)
        if not ok:
            self.skipped += 1
        return ok

    def spend(self, seconds: float) -> None:
        """Count a measurement's wall seconds."""
        self.start()
        self.spent += float(seconds)
        self._last = float(seconds)

    @property
    def overhead(self) -> float:
        """The share of the wall time spent measuring so far (0 before the clock starts)."""
        elapsed = self.elapsed
        return self.spent / elapsed if elapsed > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The budget, the share spent, seconds spent and elapsed, measurements skipped."""
        return {
            "max_overhead": self.share,
            "overhead": self.overhead,
            "seconds_measuring": self.spent,
            "seconds_elapsed": self.elapsed,
            "skipped": self.skipped,
        }


def adaptive_sharpness(
    op: LinearOperator,
    optimizer: Any,
    k: int,
    *,
    v0: torch.Tensor | None,
    preconditioned: bool = True,
    **eig_kwargs: Any,
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Record entries for an optimizer: its stability threshold, and the preconditioned top-k.

    Args:
        op: the Hessian (an operator with ``params`` in its vector order).
        optimizer: the training's optimizer.
        k: eigenvalues of ``P^-1/2 H P^-1/2`` to compute (when the optimizer has a
            preconditioner with state, and `preconditioned`).
        v0: the previous preconditioned eigenvectors (warm start) or None.
        preconditioned: compute the preconditioned eigenvalues at all.
        **eig_kwargs: passed to `eigsh`.

    Returns:
        The entries (``threshold``, ``threshold_of``, ``threshold_label``,
        ``preconditioned_eigenvalues``, ``preconditioned_matvecs``, where they
        apply) and the new eigenvectors (None when none were computed).
    """
    params = getattr(op, "params", None)
    out: dict[str, Any] = {}
    th = stability_threshold(optimizer, params)
    if th is not None:
        out[Key.THRESHOLD] = th.value
        out[Key.THRESHOLD_OF] = "preconditioned" if th.preconditioned else "raw"
        out[Key.THRESHOLD_LABEL] = th.formula
    if not preconditioned or params is None or not has_preconditioner(optimizer, params):
        return out, None
    pop = PreconditionedOperator(op, optimizer)
    if v0 is not None and v0.shape[0] != pop.shape[0]:
        v0 = None  # the parameter set changed size: start cold
    res = eigsh(pop, k, v0=v0, **eig_kwargs)
    out[Key.PRECONDITIONED_EIGENVALUES] = [float(x) for x in res.eigenvalues]
    out[Key.PRECONDITIONED_MATVECS] = int(res.num_matvecs)
    return out, res.eigenvectors.detach().clone()


def density_entries(op: LinearOperator, num_steps: int, seed: int) -> dict[str, Any]:
    """Record entries of a one-probe stochastic Lanczos quadrature density (`num_steps` steps)."""
    res = density(op, num_steps=int(num_steps), num_probes=1, seed=seed)
    return {
        Key.DENSITY_NODES: np.asarray(res.nodes, dtype=np.float64).tolist(),
        Key.DENSITY_WEIGHTS: np.asarray(res.weights, dtype=np.float64).tolist(),
        Key.DENSITY_MATVECS: int(res.num_matvecs),
    }
