"""What every eigensolver behind `eigsh` shares: the call, the answer, the Ritz helpers.

`EigenProblem` is a checked `eigsh` call; a solver (a `Solver` in its own
module) turns it into `RawPairs`, which `eigsh` finishes (verification,
orthogonality test, result order). The helpers are the common numerics: the
residual thresholds with their precision floor, the Kato-Temple / Parlett error
estimate ``min(r, r^2 / gap)`` (Parlett, *The Symmetric Eigenvalue Problem*,
1980, ch. 11), semi-orthogonality (Simon 1984), Rayleigh-Ritz on a basis, true
residuals, starting vectors, and the choice of vectors a thick restart (Wu and
Simon 2000) keeps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch

from hessian_spectra.algorithms._run import RunContext
from hessian_spectra.algorithms.errors import ConvergenceWarning
from hessian_spectra.operators.base import LinearOperator
from hessian_spectra.results import priority

#: How much larger the floor of residuals computed from a product is (see `thresholds`).
TRUE_RESIDUAL_FLOOR = 10.0
#: Rounding errors eps ||H|| below which no residual or error estimate is reported.
ROUNDING_LEVEL = 10.0


def thresholds(
    values: np.ndarray,
    tol: float,
    dtype: torch.dtype,
    scale: float | None = None,
    *,
    true_residuals: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Residual thresholds ``max(tol |theta|, floor)``, precision-limited flags, and the floor.

    The floor is the operator's machine epsilon times the largest magnitude in
    play (`scale`, default the largest |value|): a residual cannot be trusted
    below it, so pairs whose ``tol |theta|`` lies under it stop on the floor and
    are flagged as limited by precision (float32 operators, eigenvalues near 0).
    Residuals computed from a product (``true_residuals``: power iteration,
    RQI, ``verify``) carry that product's own rounding, a few eps ||H||, so
    their floor is `TRUE_RESIDUAL_FLOOR` (10) times larger; the Lanczos
    recurrence's estimates have no such noise.
    """
    v = np.abs(np.asarray(values, dtype=np.float64))
    if scale is None:
        scale = float(v.max()) if v.size else 0.0
    floor = float(torch.finfo(dtype).eps) * scale
    if true_residuals:
        floor *= TRUE_RESIDUAL_FLOOR
    want = tol * v
    return np.maximum(want, floor), want < floor, floor


def precision_ratio(dtype: torch.dtype, basis_dtype: torch.dtype | None) -> float:
    """How much coarser a basis kept in `basis_dtype` rounds than the operator (at least 1)."""
    if basis_dtype is None:
        return 1.0
    return max(1.0, float(torch.finfo(basis_dtype).eps) / float(torch.finfo(dtype).eps))


def rounding_level(raw: RawPairs, dtype: torch.dtype, basis_dtype: torch.dtype | None) -> float:
    """No residual or error estimate below this: ``ROUNDING_LEVEL eps max |theta|``.

    The products that give the residuals and Ritz values are rounded to the
    operator's dtype, the basis that combines them to its own (`eps` is the
    coarser of the two), and the Rayleigh-Ritz algebra adds a few rounding
    errors of its own: a Ritz value is no more accurate than a few eps ||H||
    (||H|| estimated by the largest Ritz value magnitude the run saw), so
    no residual or error below `ROUNDING_LEVEL` eps ||H|| is a measurement.
    """
    base = raw.floor / (TRUE_RESIDUAL_FLOOR if raw.true_floor else 1.0)  # eps max |theta|
    return ROUNDING_LEVEL * base * precision_ratio(dtype, basis_dtype)


def floor_reported(raw: RawPairs, level: float) -> None:
    """Report no residual or error estimate below `level`; flag the pairs that were below it.

    A Lanczos residual estimate ``beta |s|`` keeps shrinking past the rounding
    level (to 1e-35 in float32) while the pair's true error stays about
    eps ||H||: such a pair is reported at the level, as precision-limited.
    """
    res = np.asarray(raw.residuals, dtype=np.float64)
    raw.precision_limited = np.asarray(raw.precision_limited, dtype=bool) | (res <= level)
    raw.residuals = np.maximum(res, level)
    raw.error_estimates = np.maximum(np.asarray(raw.error_estimates, dtype=np.float64), level)


def warn_unconverged(
    raw: RawPairs,
    call: str,
    *,
    num_matvecs: int,
    max_matvecs: int,
    tol: float,
    orthogonality_limit: float,
) -> None:
    """Warn (`ConvergenceWarning`) when pairs are returned unconverged, unless a callback stopped.

    The message says how many of the pairs converged, the largest relative
    residual, why the run stopped and what to raise.
    """
    conv = np.asarray(raw.converged, dtype=bool)
    if conv.all() or raw.stop_reason == "callback":
        return
    values = np.abs(np.asarray(raw.values, dtype=np.float64))
    scale = max(float(values.max(initial=0.0)), 1e-300)
    rel = np.asarray(raw.residuals, dtype=np.float64) / np.maximum(values, 1e-300 * scale)
    worst = float(rel[~conv].max()) if (~conv).any() else float("nan")
    head = (
        f"{call}: {int(conv.sum())} of {conv.size} pairs converged; the largest relative "
        f"residual is {worst:.2g} (tol={tol:g})"
    )
    if raw.orthogonality_loss > orthogonality_limit:
        why = (
            f"the basis lost orthogonality ({raw.orthogonality_loss:.2g} > "
            f"{orthogonality_limit:.2g}), which voids the convergence test: work in a higher "
            "precision (a float64 operator, or no lower basis_dtype)"
        )
    elif raw.stop_reason == "stagnated":
        why = (
            "Rayleigh quotient iteration stagnated: raise tol, or use method='lanczos' for "
            "clustered eigenvalues"
        )
    else:
        why = (
            f"the run stopped at {num_matvecs} products (max_matvecs={max_matvecs}): raise "
            "max_matvecs (or tol) to converge the rest"
        )
    warnings.warn(
        f"{head}; {why}. The pairs are returned with converged=False where they did not converge.",
        ConvergenceWarning,
        stacklevel=3,
    )


def error_estimates(values: np.ndarray, residuals: np.ndarray, others: np.ndarray) -> np.ndarray:
    """``min(r, r^2 / gap)``, gap to the nearest other Ritz value.

    An estimate, not a bound: an eigenvalue not yet found can sit in the gap.
    """
    vals = np.asarray(values, dtype=np.float64)
    res = np.asarray(residuals, dtype=np.float64)
    pool = np.asarray(others, dtype=np.float64)
    out = res.copy()
    for i, (t, r) in enumerate(zip(vals, res, strict=True)):
        d = np.abs(pool - t)
        d = d[d > 0]  # drop the value itself (and exact copies, which have no gap)
        if d.size and d.min() > 0:
            out[i] = min(r, r * r / d.min())
    return out


def orthogonality_threshold(dtype: torch.dtype) -> float:
    """Semi-orthogonality, sqrt(eps): beyond it Ritz residual estimates are not reliable."""
    return math.sqrt(float(torch.finfo(dtype).eps))


def check_v0(op: LinearOperator, v0: Any) -> torch.Tensor | None:
    """`v0` as an (n, b) tensor in the operator's dtype/device, or None; refuses bad ones."""
    if v0 is None:
        return None
    n = op.shape[0]
    V = torch.as_tensor(v0)
    if V.ndim == 1:
        V = V[:, None]
    if V.ndim != 2 or V.shape[0] != n or V.shape[1] < 1:
        raise ValueError(
            f"v0 must have shape ({n},) or ({n}, b) for this operator, got {tuple(V.shape)}"
        )
    V = V.to(dtype=op.dtype, device=op.device)
    if not bool(torch.isfinite(V).all()):
        raise ValueError("v0 holds NaN or inf: pass finite starting vectors")
    if float(torch.linalg.matrix_norm(V.double())) == 0.0:
        raise ValueError(
            "v0 is zero: pass a non-zero starting vector (or v0=None for a random one)"
        )
    return V


def combine_columns(V: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One starting vector from an (n, b) block: a random Gaussian combination of its columns."""
    if V.shape[1] == 1:
        return V[:, 0].clone()
    w = torch.randn(V.shape[1], generator=generator, dtype=torch.float64)
    norms = torch.linalg.vector_norm(V.double(), dim=0)
    w = torch.where(norms > 0, w / norms.clamp_min(1e-300), torch.zeros_like(w))
    return (V.double() @ w.to(V.device)).to(V.dtype)


def verify_pairs(
    op: LinearOperator, values: np.ndarray, vectors: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """True residual norms ``||H v - theta v||`` (one block product) and Rayleigh quotients."""
    if vectors.shape[1] == 0:
        return np.empty(0), np.empty(0)
    HV = op.matmat(vectors)
    theta = torch.as_tensor(values, dtype=vectors.dtype, device=vectors.device)
    R = (HV - vectors * theta).double()
    rq = (vectors.double() * HV.double()).sum(0)
    return (
        torch.linalg.vector_norm(R, dim=0).cpu().numpy(),
        rq.cpu().numpy(),
    )


def rayleigh_ritz(Q: torch.Tensor, HQ: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values (ascending) and coefficient vectors of an orthonormal basis Q given H Q.

    Uses the symmetrized projection Q^T H Q in float64 and `scipy.linalg.eigh`.
    """
    T = (Q.T @ HQ).double().cpu().numpy()
    T = (T + T.T) / 2
    theta, S = scipy.linalg.eigh(T)
    return theta, S


def restart_choice(
    vals: np.ndarray,
    resid: np.ndarray,
    thr: np.ndarray,
    which: str,
    k: int,
    num_locked: int,
    free: int,
    reserve: int,
) -> tuple[list[int], list[bool]]:
    """What a thick restart keeps: the wanted Ritz vectors (converged ones locked), then a buffer.

    `vals`, `resid` and `thr` cover the locked pairs first, then the active
    Ritz pairs; the returned indices count from the first active pair. Of the
    `free` basis columns left beside the locked vectors, the buffer of next
    wanted vectors takes at most half of what the wanted ones leave, and leaves
    at least `reserve` columns for the steps after the restart.
    """
    o = num_locked
    order = priority(vals, which)
    wanted = order[:k]
    conv = resid <= thr
    lock_ids = [int(i) - o for i in wanted if i >= o and conv[i]]
    keep_ids = [int(i) - o for i in wanted if i >= o and not conv[i]]
    extra = [int(i) - o for i in order[k:] if i >= o]
    room = free - len(lock_ids) - len(keep_ids)
    n_extra = max(0, min(len(extra), room // 2, room - reserve))
    keep = lock_ids + keep_ids + extra[:n_extra]
    lock = [True] * len(lock_ids) + [False] * (len(keep) - len(lock_ids))
    return keep, lock


@dataclass
class RawPairs:
    """What a method returns to `eigsh` before the common finishing steps."""

    values: np.ndarray
    vectors: torch.Tensor
    residuals: np.ndarray
    converged: np.ndarray
    precision_limited: np.ndarray
    error_estimates: np.ndarray
    orthogonality_loss: float
    stop_reason: str
    restarts: int = 0
    floor: float = 0.0
    true_floor: bool = False  # whether `floor` is already the true-residual floor
    basis_bytes: int = 0  # memory held by the basis (Lanczos)


@dataclass(frozen=True)
class EigenProblem:
    """A checked `eigsh` call, as every solver receives it.

    Attributes:
        op: the operator.
        k: pairs wanted, 1 <= k < n.
        which: "LA", "SA", "LM" or "BE".
        tol: relative residual tolerance.
        max_matvecs: the product budget.
        max_basis: the most basis vectors held at once (the solver's default
            when the call gave none).
        block_size: columns per block product, at most n.
        stop: the stopping rule ("residual", or a rule the solver declares).
        v0: (n, b) starting vectors in the operator's dtype and device, or None.
        basis_device, basis_dtype: where and in what precision a Lanczos basis
            is kept (None: the operator's).
    """

    op: LinearOperator
    k: int
    which: str
    tol: float
    max_matvecs: int
    max_basis: int
    block_size: int
    stop: str = "residual"
    v0: torch.Tensor | None = None
    basis_device: torch.device | str | None = None
    basis_dtype: torch.dtype | None = None


def default_max_basis(k: int, n: int, block_size: int) -> int:
    """The basis cap when `max_basis` is None: max(3k, k + 32), at most n."""
    return min(n, max(3 * k, k + 32))


def fewest_matvecs(k: int, n: int, block_size: int) -> int:
    """The smallest budget a solver accepts: one product per wanted pair."""
    return k


def basis_floor(k: int, block_size: int) -> int:
    """The smallest `max_basis` that leaves room to restart: k + 2."""
    return k + 2


#: ``(n, k, capacity, block_size, max_matvecs, item, basis_item)`` -> (basis, other) bytes
MemoryModel = Callable[[int, int, int, int, int, int, int], tuple[int, int]]


def vectors_memory(
    n: int, k: int, capacity: int, block_size: int, max_matvecs: int, item: int, basis_item: int
) -> tuple[int, int]:
    """The need of a solver that keeps only its k vectors: no basis, a few copies of them."""
    return 0, 4 * n * (k + 4) * item


def restart_keep(k: int, capacity: int) -> int:
    """The most Ritz vectors a thick restart keeps (see `restart_choice`)."""
    return max(1, min(capacity - 1, k + max(0, capacity - k) // 2))


@dataclass(frozen=True)
class Solver:
    """An eigensolver behind ``eigsh(method=...)``: its driver and what its arguments need.

    Attributes:
        solve: ``solve(problem, ctx) -> RawPairs``: compute the pairs, drawing
            random numbers from ``ctx.generator``, recording one history record
            per iteration with ``ctx.record`` (stop when it returns True), and,
            with `checkpoints`, saving its state through ``ctx.track``.
        min_matvecs: ``(k, n, block_size)`` -> the smallest budget that can
            give k pairs.
        default_max_basis: ``(k, n, block_size)`` -> the basis cap when the
            call gives none.
        min_basis: ``(k, block_size)`` -> the smallest basis cap accepted
            (capped at n).
        stops: the stopping rules it accepts ("residual" first).
        checkpoints: whether it takes ``checkpoint``, ``basis_device`` and
            ``basis_dtype``.
        memory: ``(n, k, capacity, block_size, max_matvecs, item,
            basis_item)`` -> bytes of (the basis, on the basis device; the
            other vectors, on the operator's device), with ``capacity`` the
            basis cap and ``item`` and ``basis_item`` the bytes of one number
            of the operator's and the basis's dtype: what `eigsh_memory` and
            the check before a run add up.
        lower_memory: the options that lower `memory`, for the refusal's
            message (``{max_basis}`` and ``{block_size}`` are filled in).
    """

    solve: Callable[[EigenProblem, RunContext], RawPairs]
    min_matvecs: Callable[[int, int, int], int] = fewest_matvecs
    default_max_basis: Callable[[int, int, int], int] = default_max_basis
    min_basis: Callable[[int, int], int] = basis_floor
    stops: tuple[str, ...] = ("residual",)
    checkpoints: bool = False
    memory: MemoryModel = vectors_memory
    lower_memory: str = "ask for fewer pairs (k)"


__all__ = [
    "ROUNDING_LEVEL",
    "TRUE_RESIDUAL_FLOOR",
    "EigenProblem",
    "MemoryModel",
    "RawPairs",
    "Solver",
    "basis_floor",
    "check_v0",
    "combine_columns",
    "default_max_basis",
    "error_estimates",
    "fewest_matvecs",
    "floor_reported",
    "orthogonality_threshold",
    "precision_ratio",
    "rayleigh_ritz",
    "restart_choice",
    "restart_keep",
    "rounding_level",
    "thresholds",
    "vectors_memory",
    "verify_pairs",
    "warn_unconverged",
]
