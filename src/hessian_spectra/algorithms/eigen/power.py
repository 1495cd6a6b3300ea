"""``eigsh(method="power")``: deflated power iteration as in PyHessian, with a residual test.

PyHessian (Yao, Gholami, Keutzer and Mahoney 2020, `hessian.eigenvalues`) finds
eigenpair i by power iteration (von Mises 1929) on a random start that is
orthogonalized against the eigenvectors already found before every product,
and stops when two successive Rayleigh quotients differ by less than
``tol = 1e-3`` relatively. That rule (``stop="relative_change"``) can stop
while the vector is still far from an eigenvector (the Rayleigh quotient
converges twice as fast as the vector, and slowly converging quotients change
little per step); ``stop="residual"`` (default) instead requires
``||H v - theta v|| <= max(tol |theta|, floor)``, available free from the
product just taken. (The rule tests the residual's part orthogonal to the pairs
found before; the rest is the coupling to those inexact pairs, at most their
residuals, which no deflated iteration can remove. Reported residuals are the
full ones.)

Power iteration converges to the eigenvalue of largest magnitude ("LM"). For
"LA" it runs on ``H - sigma I``, which it needs where the negative end of H
outweighs the wanted positive eigenvalues: pair i converges to the top when
``lambda_i - sigma > |lambda_min - sigma|``, i.e. ``sigma < (lambda_i +
lambda_min) / 2``. Every unit of shift also slows it (the factor is
``(lambda_{i+1} - sigma) / (lambda_i - sigma)``), so the shift is the smallest
that does the job, estimated cheaply: ``sigma = min(theta_min, 0)`` with
theta_min the smallest Ritz value of 10 Lanczos steps (`ritz_extremes`, 10
products, once).
Extreme Ritz values approach the ends of the spectrum first, and sigma meets
the condition whenever the wanted eigenvalues are non-negative and theta_min
has reached half of lambda_min; a nearly PSD Hessian (theta_min >= 0) is not
shifted at all. "SA" is the mirror image, on ``max(theta_max, 0) I - H``.
Convergence remains as slow as ever when eigenvalues are close: for a
comparison, not for production (use Lanczos).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hessian_spectra.algorithms._linalg import gaussian
from hessian_spectra.algorithms._run import RunContext
from hessian_spectra.algorithms.eigen._ritz import (
    EigenProblem,
    RawPairs,
    Solver,
    error_estimates,
    thresholds,
)
from hessian_spectra.algorithms.lanczos import ritz_extremes
from hessian_spectra.history import PAIR, RESIDUALS, RITZ_VALUES, SHIFT, SIDE
from hessian_spectra.operators.base import LinearOperator, ShiftedOperator


class PowerState:
    """The whole state of a deflated power iteration (checkpoint these attributes to resume).

    Args:
        op: the operator H (products are counted on it).
        V0: optional (n, b) starts: column i starts eigenpair i.
        generator: random source for the other starts.
    """

    def __init__(
        self, op: LinearOperator, V0: torch.Tensor | None, generator: torch.Generator
    ) -> None:
        self.op = op
        self.V0 = V0
        self.generator = generator
        self.values: list[float] = []
        self.vectors: list[torch.Tensor] = []
        self.residuals: list[float] = []
        self.converged: list[bool] = []
        self.iterations: list[int] = []
        self.num_matvecs = 0
        self.shift = 0.0
        self.scale = 1.0
        # the pair in progress
        self.v: torch.Tensor | None = None
        self.theta_prev: float | None = None
        self.iters = 0

    def _deflate(self, v: torch.Tensor) -> torch.Tensor:
        if self.vectors:
            U = torch.stack(self.vectors, dim=1)
            for _ in range(2):
                v = v - U @ (U.T @ v)
        return v

    def start_pair(self) -> None:
        """Draw (or take from V0) the start of the next pair."""
        i = len(self.values)
        if self.V0 is not None and i < self.V0.shape[1]:
            v = self.V0[:, i].clone()
        else:
            v = gaussian(self.op, 1, self.generator)[:, 0]
        v = self._deflate(v)
        nrm = torch.linalg.vector_norm(v)
        if float(nrm) == 0.0:  # a start inside the found space: draw afresh
            v = self._deflate(gaussian(self.op, 1, self.generator)[:, 0])
            nrm = torch.linalg.vector_norm(v)
        self.v = v / nrm
        self.theta_prev = None
        self.iters = 0

    def iterate(self, S: LinearOperator) -> tuple[float, float, float, torch.Tensor]:
        """One power step on the shifted operator S = scale (H + shift I).

        Returns the Rayleigh quotient theta of H at the current vector, its
        residual norm ||H v - theta v||, the norm of that residual's part
        orthogonal to the pairs found before (the part deflated power iteration
        can reduce: the rest is the coupling to those inexact pairs, bounded by
        their residuals), and the current vector.
        """
        assert self.v is not None
        v = self._deflate(self.v)
        v = v / torch.linalg.vector_norm(v)
        w = S.matvec(v)
        self.num_matvecs += 1
        self.iters += 1
        mu = float(torch.dot(v.double(), w.double()))
        r = (w.double() - mu * v.double()) / abs(self.scale)
        theta = mu / self.scale - self.shift
        res = float(torch.linalg.vector_norm(r))
        res_defl = float(torch.linalg.vector_norm(self._deflate(r.to(v.dtype)).double()))
        wn = torch.linalg.vector_norm(w)
        self.v = w / wn if float(wn) > 0 else v
        return theta, res, res_defl, v

    def finish_pair(self, theta: float, res: float, v: torch.Tensor, converged: bool) -> None:
        self.values.append(theta)
        self.vectors.append(v)
        self.residuals.append(res)
        self.converged.append(converged)
        self.iterations.append(self.iters)
        self.v = None


def power_eigsh(p: EigenProblem, ctx: RunContext) -> RawPairs:
    """Deflated power iteration for `eigsh(method="power")`."""
    op, k, which, tol, max_matvecs, stop = p.op, p.k, p.which, p.tol, p.max_matvecs, p.stop
    generator = ctx.generator
    state = PowerState(op, p.v0, generator)
    if which == "LM":
        sides = [("LM", k)]
    elif which == "BE":
        sides = [("LA", math.ceil(k / 2)), ("SA", k // 2)]
    else:
        sides = [(which, k)]
    extremes: tuple[float, float, float] | None = None
    if which != "LM":
        before = op.num_matvecs
        extremes = ritz_extremes(op, generator)
        state.num_matvecs += op.num_matvecs - before
    per_pair = max(2, (max_matvecs - state.num_matvecs) // k)
    stop_reason = "converged"
    user_stop = False
    for side, count in sides:
        if count == 0:
            continue
        if side == "LM":
            S: LinearOperator = op
            state.shift, state.scale = 0.0, 1.0
        elif side == "LA":
            assert extremes is not None
            state.shift, state.scale = -min(extremes[0], 0.0), 1.0
            S = ShiftedOperator(op, shift=state.shift, scale=state.scale)
        else:
            assert extremes is not None
            state.shift, state.scale = -max(extremes[1], 0.0), -1.0
            S = ShiftedOperator(op, shift=state.shift, scale=state.scale)
        for _ in range(count):
            state.start_pair()
            cap = min(per_pair, max_matvecs - state.num_matvecs)
            theta, res, v, conv = 0.0, math.inf, state.v, False
            while state.iters < cap:
                theta, res, res_defl, v = state.iterate(S)
                scale = max([abs(theta), abs(state.shift), *map(abs, state.values)])
                thr, _, _ = thresholds(
                    np.array([theta]), tol, op.precision_dtype, scale, true_residuals=True
                )
                if stop == "residual":
                    conv = res_defl <= float(thr[0])
                else:
                    prev = state.theta_prev
                    conv = prev is not None and abs(theta - prev) / (abs(prev) + 1e-6) < tol
                state.theta_prev = theta
                user_stop = ctx.record(
                    {
                        RITZ_VALUES: [*state.values, theta],
                        RESIDUALS: [*state.residuals, res],
                        PAIR: len(state.values),
                        SIDE: side,
                        SHIFT: state.shift,
                    },
                    postfix=f"pair {len(state.values) + 1}/{k}",
                )
                if conv or user_stop:
                    break
            assert v is not None
            state.finish_pair(theta, res, v, bool(conv))
            if user_stop:
                stop_reason = "callback"
                break
            if not conv:
                stop_reason = "max_matvecs"
            if state.num_matvecs >= max_matvecs:
                break
        if user_stop or state.num_matvecs >= max_matvecs:
            break
    values = np.asarray(state.values, dtype=np.float64)
    residuals = np.asarray(state.residuals, dtype=np.float64)
    scale = float(np.abs(values).max()) if values.size else 0.0
    if extremes is not None:
        scale = max(scale, abs(extremes[0]), abs(extremes[1]))
    _, limited, floor = thresholds(values, tol, op.precision_dtype, scale, true_residuals=True)
    V = torch.stack(state.vectors, dim=1)
    G = V.double().T @ V.double()
    G.diagonal().sub_(1.0)
    if values.size < k:
        stop_reason = "callback" if user_stop else "max_matvecs"
    return RawPairs(
        values=values,
        vectors=V,
        residuals=residuals,
        converged=np.asarray(state.converged, dtype=bool),
        precision_limited=limited if stop == "residual" else np.zeros(values.size, bool),
        error_estimates=error_estimates(values, residuals, values),
        orthogonality_loss=float(G.abs().max()),
        stop_reason=stop_reason,
        floor=floor,
        true_floor=True,
    )


def _memory(
    n: int, k: int, capacity: int, block_size: int, max_matvecs: int, item: int, basis_item: int
) -> tuple[int, int]:
    """The k vectors found, stacked for each deflation and at the end (their Gram matrix in
    float64), and the short Lanczos run of the shift."""
    return 0, n * (3 * k + 16) * item + 2 * n * k * 8


SOLVER = Solver(
    power_eigsh,
    min_matvecs=lambda k, n, block_size: 2 * k,
    stops=("residual", "relative_change"),
    memory=_memory,
)
