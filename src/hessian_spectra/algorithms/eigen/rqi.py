"""Matrix-free Rayleigh quotient iteration (`refine`) and ``eigsh(method="rqi")``.

Rayleigh quotient iteration (Lord Rayleigh 1894; Parlett 1974, "The Rayleigh
quotient iteration and some generalizations for nonnormal matrices") improves
an approximate eigenpair (theta, v) by solving (H - theta I) x = v and taking
x / ||x|| as the next vector; for symmetric H it converges cubically near an
isolated eigenpair. The shifted matrix is indefinite, so the inner systems are
solved by MINRES (Paige and Saunders 1975), written here on torch tensors; an
inexact inner solve keeps fast outer convergence (Simoncini and Elden 2002,
"Inexact Rayleigh quotient-type methods for eigenvalue computations"). Pairs
are refined one after another, each deflated against those already refined,
so two starts cannot return the same eigenvector.

``eigsh(method="rqi")`` is the study's proposed pipeline: a range-finder sketch
(Halko, Martinsson and Tropp 2011) with Rayleigh-Ritz gives starting pairs,
which `refine` polishes. It pays off for a few isolated pairs wanted to high
accuracy; for many clustered pairs each inner solve has to resolve the cluster
and Lanczos is cheaper (see benchmarks/topk.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hessian_spectra.algorithms._linalg import gaussian, range_finder
from hessian_spectra.algorithms._run import Callback, Recorder, RunContext
from hessian_spectra.algorithms.eigen._ritz import (
    EigenProblem,
    RawPairs,
    Solver,
    error_estimates,
    floor_reported,
    rayleigh_ritz,
    rounding_level,
    thresholds,
    warn_unconverged,
)
from hessian_spectra.algorithms.lanczos import ritz_extremes
from hessian_spectra.history import OUTER, PAIR, PHASE, RESIDUALS, RITZ_VALUES, SKETCH_SIZE
from hessian_spectra.operators.base import LinearOperator, ShiftedOperator, as_operator
from hessian_spectra.results import EigshResult, priority

INNER_RTOL = 1e-2
INNER_MAXITER = 100
STALL = 3
POWER_STEPS = 1


@dataclass
class MinresInfo:
    """How a MINRES solve ended.

    Attributes:
        iterations: products taken.
        residual: the final residual norm ||b - (A - shift I) x|| (from the recurrence).
        converged: whether the residual test was met.
        residual_history: the residual norm after each iteration (non-increasing).
    """

    iterations: int
    residual: float
    converged: bool
    residual_history: list[float]


def minres(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    shift: float = 0.0,
    rtol: float = 1e-8,
    maxiter: int | None = None,
) -> tuple[torch.Tensor, MinresInfo]:
    """Solve (A - shift I) x = b for symmetric, possibly indefinite or singular A by MINRES.

    The Paige-Saunders (1975) recurrence, as in SciPy's `minres`, on torch
    tensors (any device or dtype), without preconditioner, from x0 = 0. On a
    singular, inconsistent system the steps after the Krylov space has become
    invariant can add a huge null-space component to x and make the recurrence's
    residual optimistic (as in SciPy; MINRES-QLP, Choi, Paige and Saunders 2011,
    fixes that). Inside Rayleigh quotient iteration such a component is the
    eigenvector sought.

    Args:
        matvec: v -> A v for a symmetric A.
        b: (n,) right-hand side.
        shift: solve with A - shift I.
        rtol: stop when ||r|| <= rtol ||b||. (SciPy also stops on the backward
            error ||r|| / (||A|| ||x||); inside Rayleigh quotient iteration that
            test fires after two or three products, long before x has turned
            towards the eigenvector, and the outer iteration crawls.)
        maxiter: most iterations (products), default n.

    Returns:
        x and a `MinresInfo`.
    """
    n = b.shape[0]
    maxiter = n if maxiter is None else int(maxiter)
    eps = float(torch.finfo(b.dtype).eps)
    x = torch.zeros_like(b)
    beta1 = float(torch.linalg.vector_norm(b.double()))
    if beta1 == 0.0 or maxiter < 1:
        return x, MinresInfo(0, beta1, beta1 == 0.0, [])
    r1 = b.clone()
    r2 = b.clone()
    y = b.clone()
    w = torch.zeros_like(b)
    w2 = torch.zeros_like(b)
    oldb, beta, dbar, epsln, phibar = 0.0, beta1, 0.0, 0.0, beta1
    tnorm2 = 0.0
    cs, sn = -1.0, 0.0
    history: list[float] = []
    converged = False
    itn = 0
    while itn < maxiter:
        itn += 1
        v = y / beta
        y = matvec(v)
        if shift != 0.0:
            y = y - shift * v
        if itn >= 2:
            y = y - (beta / oldb) * r1
        alfa = float(torch.dot(v.double(), y.double()))
        y = y - (alfa / beta) * r2
        r1 = r2
        r2 = y
        oldb = beta
        beta = float(torch.linalg.vector_norm(y.double()))
        tnorm2 += alfa * alfa + oldb * oldb + beta * beta
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        gamma = max(math.hypot(gbar, beta), eps)
        cs = gbar / gamma
        sn = beta / gamma
        phi = cs * phibar
        phibar = sn * phibar
        w1 = w2
        w2 = w
        w = (v - oldeps * w1 - delta * w2) / gamma
        x = x + phi * w
        history.append(phibar)
        anorm = math.sqrt(tnorm2)
        if phibar <= rtol * beta1:
            converged = True
            break
        if beta <= eps * anorm:  # Krylov space invariant: x is the exact solution there
            converged = phibar <= rtol * beta1
            break
    return x, MinresInfo(itn, phibar, converged, history)


class RefineState:
    """The whole state of `refine` (checkpoint these attributes to resume between outer steps).

    Attributes:
        values, vectors: the pairs, refined in place one after another.
        residuals, converged: per pair, once refined.
        index: the pair in progress.
        num_matvecs: products so far.
    """

    def __init__(self, values: np.ndarray, vectors: torch.Tensor) -> None:
        self.values = np.asarray(values, dtype=np.float64).copy()
        self.vectors = vectors.clone()
        k = self.values.size
        self.residuals = np.full(k, np.nan)
        self.converged = np.zeros(k, dtype=bool)
        self.outer = np.zeros(k, dtype=np.int64)
        self.index = 0
        self.num_matvecs = 0


def _refine_pairs(
    op: LinearOperator,
    state: RefineState,
    tol: float,
    max_matvecs: int,
    rec: Recorder,
    scale_hint: float = 0.0,
) -> str:
    """Run RQI on every pair of `state` in turn; returns the stop reason.

    Each pair gets an equal share of the remaining budget, and gives up after
    `STALL` outer steps without a smaller residual (RQI's residuals decrease
    monotonically in exact arithmetic, Parlett 1974), keeping its best iterate.
    """
    k = state.values.size
    stop_reason = "converged"
    user_stop = False
    while state.index < k:
        i = state.index
        U = state.vectors[:, :i]

        def project(x: torch.Tensor, U: torch.Tensor = U) -> torch.Tensor:
            for _ in range(2 if U.shape[1] else 0):
                x = x - U @ (U.T @ x)
            return x

        def shifted(x: torch.Tensor, project: Callable[..., torch.Tensor] = project) -> Any:
            return project(op.matvec(project(x)))

        v = project(state.vectors[:, i])
        nrm = float(torch.linalg.vector_norm(v))
        if nrm == 0.0 or not math.isfinite(nrm):
            raise ValueError(
                f"eigenvector {i} is zero or lies in the span of the vectors before it: "
                "pass independent starting vectors"
            )
        v = v / nrm
        given = float(state.values[i])
        cap = max(2, (max_matvecs - state.num_matvecs) // (k - i))
        start = state.num_matvecs
        shift = given
        best: tuple[float, float, float, torch.Tensor] | None = None
        stall = 0
        conv = False
        while True:
            w = op.matvec(v)
            state.num_matvecs += 1
            theta = float(torch.dot(v.double(), w.double()))
            r = w - theta * v
            res = float(torch.linalg.vector_norm(r.double()))
            # the part of the residual orthogonal to the pairs refined before: the
            # rest is the coupling to those (inexact) pairs, at most their residuals
            res_defl = float(torch.linalg.vector_norm(project(r).double()))
            if best is None or res_defl < best[2]:
                best, stall = (theta, res, res_defl, v), 0
            else:
                stall += 1
            scale = max(abs(theta), scale_hint, float(np.abs(state.values[:i]).max(initial=0.0)))
            thr, _, _ = thresholds(
                np.array([theta]), tol, op.precision_dtype, scale, true_residuals=True
            )
            conv = best[2] <= float(thr[0])
            user_stop = rec.record(
                {
                    RITZ_VALUES: [*state.values[:i], theta],
                    RESIDUALS: [*state.residuals[:i], res],
                    PAIR: i,
                    OUTER: int(state.outer[i]),
                },
                postfix=f"pair {i + 1}/{k}",
            )
            left = cap - (state.num_matvecs - start)
            if conv or user_stop or left < 2 or stall >= STALL:
                break
            if not math.isfinite(shift):
                shift = theta
            before = op.num_matvecs
            x, _info = minres(
                shifted, v, shift=shift, rtol=INNER_RTOL, maxiter=min(INNER_MAXITER, left - 1)
            )
            state.num_matvecs += op.num_matvecs - before
            x = project(x)
            xn = float(torch.linalg.vector_norm(x))
            if xn == 0.0 or not math.isfinite(xn):
                break
            v = x / xn
            state.outer[i] += 1
            shift = float("nan")  # from now on: the Rayleigh quotient
        assert best is not None
        state.values[i], state.residuals[i] = best[0], best[1]
        state.vectors[:, i] = best[3]
        state.converged[i] = conv
        state.index += 1
        if user_stop:
            stop_reason = "callback"
            break
        if not conv:
            stop_reason = "max_matvecs" if stall < STALL else "stagnated"
        if state.num_matvecs >= max_matvecs and state.index < k:
            stop_reason = "max_matvecs"
            break
    return stop_reason


def _finish(
    op: LinearOperator, state: RefineState, tol: float, stop_reason: str, scale_hint: float = 0.0
) -> RawPairs:
    done = state.index
    values = state.values[:done]
    residuals = state.residuals[:done]
    V = state.vectors[:, :done]
    scale = max(float(np.abs(values).max(initial=0.0)), scale_hint)
    _, limited, floor = thresholds(values, tol, op.precision_dtype, scale, true_residuals=True)
    G = V.double().T @ V.double()
    G.diagonal().sub_(1.0)
    return RawPairs(
        values=values.copy(),
        vectors=V.clone(),
        residuals=residuals.copy(),
        converged=state.converged[:done].copy(),
        precision_limited=limited,
        error_estimates=error_estimates(values, residuals, values),
        orthogonality_loss=float(G.abs().max()) if done else 0.0,
        stop_reason=stop_reason,
        floor=floor,
        true_floor=True,
    )


def refine(
    op: LinearOperator | torch.Tensor | np.ndarray,
    eigenvalues: np.ndarray | torch.Tensor | list[float],
    eigenvectors: torch.Tensor | np.ndarray,
    *,
    tol: float = 1e-6,
    max_matvecs: int | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> EigshResult:
    """Polish approximate eigenpairs by matrix-free Rayleigh quotient iteration.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> op = hs.DenseOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
        >>> v = torch.zeros(100, 1, dtype=torch.float64)
        >>> v[99], v[90] = 1.0, 0.1  # near the top eigenvector, 100
        >>> ref = hs.refine(op, [99.0], v)
        >>> ref.eigenvalues.round(8).tolist(), bool(ref.converged.all())
        ([100.0], True)

    Pairs are refined in the given order, each deflated against those refined
    before it. The first inner solve of a pair uses its given eigenvalue as the
    shift (so the pair moves to the eigenvalue nearest that value); later ones
    use the Rayleigh quotient. Inner systems are solved by MINRES to a relative
    residual of 1e-2 (at most 100 products). Costs one product per outer step
    plus the inner iterations; cheap for isolated eigenvalues and good starts,
    expensive inside clusters, where each inner solve must resolve the cluster.

    Args:
        op: the symmetric operator (or a dense symmetric matrix).
        eigenvalues: (k,) approximate eigenvalues (NaN: use the Rayleigh quotient).
        eigenvectors: (n, k) approximate eigenvectors (need not be normalized).
        tol: relative residual tolerance ``||H v - theta v|| <= max(tol |theta|, floor)``.
        max_matvecs: the most products in all (default max(1000, 100 k)).
        callback: called with each history record; returning True stops.
        progress: show a progress bar.

    Returns:
        An `EigshResult` in the given order (``which="input"``), with true
        residuals (``verified=True``: each comes from a product of its vector).
        Pairs left unconverged (budget spent, or stagnation) come with a
        `ConvergenceWarning`.
    """
    op = as_operator(op)
    n = op.shape[0]
    lam = np.asarray(
        eigenvalues.detach().cpu().numpy()
        if isinstance(eigenvalues, torch.Tensor)
        else eigenvalues,
        dtype=np.float64,
    ).reshape(-1)
    V = torch.as_tensor(eigenvectors)
    if V.ndim == 1:
        V = V[:, None]
    if V.ndim != 2 or V.shape[0] != n:
        raise ValueError(f"eigenvectors must have shape ({n}, k), got {tuple(V.shape)}")
    k = V.shape[1]
    if k < 1:
        raise ValueError("no pairs to refine: pass at least one eigenvector")
    if lam.size != k:
        raise ValueError(f"got {lam.size} eigenvalues for {k} eigenvectors: pass one per vector")
    if k >= n:
        raise ValueError(f"k={k} pairs must be fewer than n={n}")
    V = V.to(dtype=op.dtype, device=op.device)
    if not bool(torch.isfinite(V).all()):
        raise ValueError("eigenvectors hold NaN or inf")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    bounded = max_matvecs is not None  # the progress bar's total
    if max_matvecs is None:
        max_matvecs = max(1000, 100 * k)
    elif int(max_matvecs) < k:
        raise ValueError(
            f"max_matvecs={max_matvecs} is too small to refine {k} pairs: each needs at least "
            "one product; raise it or pass None"
        )
    state = RefineState(lam, V)
    with Recorder(
        op,
        "refine",
        total=int(max_matvecs) if bounded else None,
        progress=progress,
        callback=callback,
    ) as rec:
        settings = rec.settings(k=k, tol=float(tol), max_matvecs=int(max_matvecs))
        reason = _refine_pairs(op, state, float(tol), int(max_matvecs), rec)
        raw = _finish(op, state, float(tol), reason)
        floor_reported(raw, rounding_level(raw, op.precision_dtype, None))
        rec.finish(f"{int(np.sum(raw.converged))}/{k} converged")
        seconds, num_matvecs, history = rec.seconds, rec.matvecs, rec.history
    warn_unconverged(
        raw,
        "refine",
        num_matvecs=num_matvecs,
        max_matvecs=int(max_matvecs),
        tol=float(tol),
        orthogonality_limit=math.inf,
    )
    return EigshResult(
        eigenvalues=raw.values,
        eigenvectors=raw.vectors,
        residuals=raw.residuals,
        converged=raw.converged,
        error_estimates=raw.error_estimates,
        precision_limited=raw.precision_limited,
        orthogonality_loss=raw.orthogonality_loss,
        verified=True,
        which="input",
        method="refine",
        stop_reason=raw.stop_reason,
        num_matvecs=num_matvecs,
        seconds=seconds,
        history=history,
        settings=settings,
    )


def rqi_sketch_size(k: int, n: int) -> int:
    """Columns of the range finder that seeds method="rqi": max(2k, k + 10), at most n."""
    return min(n, max(2 * k, k + 10))


def rqi_eigsh(p: EigenProblem, ctx: RunContext) -> RawPairs:
    """`eigsh(method="rqi")`: a range-finder sketch with Rayleigh-Ritz, then `refine`.

    The range finder (Halko, Martinsson and Tropp 2011, with `POWER_STEPS`
    subspace iteration) multiplies blocks, so a Hessian operator computes it
    with one forward pass and one gradient graph per block. For "LA" it runs on
    H - min(theta_min, 0) I (and for "SA" on max(theta_max, 0) I - H), with the
    extreme Ritz values of 10 Lanczos steps: the wanted end then has the largest
    magnitudes while a (nearly) PSD Hessian is left unshifted, where a shift
    would lift its bulk of near-zero eigenvalues and flatten the spectrum the
    sketch relies on. "LM" and "BE" sketch H itself.
    """
    op, k, which, tol, generator = p.op, p.k, p.which, p.tol, ctx.generator
    n = op.shape[0]
    s = rqi_sketch_size(k, n)
    before = op.num_matvecs
    scale_hint = 0.0
    S: LinearOperator = op
    if which in ("LA", "SA"):
        lo, hi, _ = ritz_extremes(op, generator)
        scale_hint = max(abs(lo), abs(hi))
        if which == "LA" and lo < 0:
            S = ShiftedOperator(op, shift=-lo, scale=1.0)
        elif which == "SA":
            S = ShiftedOperator(op, shift=-max(hi, 0.0), scale=-1.0)
    Omega = gaussian(op, s, generator)
    if p.v0 is not None:
        c = min(p.v0.shape[1], s)
        Omega[:, :c] = p.v0[:, :c]
    Q = range_finder(S, Omega, POWER_STEPS)
    HQ = op.matmat(Q)
    theta, C = rayleigh_ritz(Q, HQ)
    rr_res = torch.linalg.vector_norm(
        (HQ @ torch.as_tensor(C, dtype=op.dtype, device=op.device))
        - Q @ torch.as_tensor(C * theta, dtype=op.dtype, device=op.device),
        dim=0,
    )
    ctx.record(
        {
            RITZ_VALUES: theta[priority(theta, which)[:k]],
            RESIDUALS: rr_res.double().cpu().numpy()[priority(theta, which)[:k]],
            PHASE: "sketch",
            SKETCH_SIZE: s,
        },
        postfix="sketch",
    )
    order = priority(theta, which)[:k]
    X = Q @ torch.as_tensor(C[:, order], dtype=op.dtype, device=op.device)
    state = RefineState(theta[order], X)
    state.num_matvecs = op.num_matvecs - before
    scale_hint = max(scale_hint, float(np.abs(theta).max()))
    reason = _refine_pairs(op, state, tol, p.max_matvecs, ctx.recorder, scale_hint)
    return _finish(op, state, tol, reason, scale_hint)


def _memory(
    n: int, k: int, capacity: int, block_size: int, max_matvecs: int, item: int, basis_item: int
) -> tuple[int, int]:
    """The sketch's blocks (the test matrix, its product, the basis and its product, the
    Rayleigh-Ritz residuals), the k pairs being refined (twice), and MINRES's vectors."""
    s = rqi_sketch_size(k, n)
    return 0, n * (7 * s + 3 * k + 24) * item


SOLVER = Solver(
    rqi_eigsh,
    min_matvecs=lambda k, n, block_size: 2 * min(n, rqi_sketch_size(k, n)) + 2 * k,
    memory=_memory,
    lower_memory=(
        "ask for fewer pairs (k: the sketch holds max(2k, k + 10) columns), or use "
        "method='lanczos' with a max_basis"
    ),
)
