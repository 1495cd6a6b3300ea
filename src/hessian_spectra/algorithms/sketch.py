"""Hessian sketches: small matrices whose spectra approximate the operator's.

Three kinds, each built from one block product (`matmat`) per pass:

- ``"rademacher"``: the study's S^T H S with S (n, d) of i.i.d. entries
  +-1/sqrt(d). Since E[S^T S] = (n/d) I, this is a random compression, not a
  projection: its trace is unbiased for tr(H) (d times its diagonal are the d
  Hutchinson samples z_i^T H z_i), but its eigenvalues are inflated (each
  outlier scaled by a chi-squared(d)/d factor and every eigenvalue shifted up
  by about tr(H_bulk)/d). One pass, d products.
- ``"rangefinder"``: the randomized range finder with Rayleigh-Ritz (Halko,
  Martinsson, Tropp 2011, "Finding structure with randomness", SIAM Review):
  Q = orth(H^q H Omega) for Gaussian Omega, then the eigenpairs of Q^T H Q.
  By Cauchy interlacing the Ritz values never exceed the true eigenvalues
  (theta_j <= lambda_j), indefinite H included. 2 + q passes, d (2 + q) products.
- ``"nystrom"``: randomized Nystrom approximation with a stabilizing shift
  (Tropp, Yurtsever, Udell, Cevher 2017, "Fixed-rank approximation of a
  positive-semidefinite matrix from streaming data", NeurIPS), for positive
  semidefinite operators: H_nys = Y (Omega^T Y)^+ Y^T with Y = H Omega, which
  is PSD and below H (H - H_nys is PSD). One pass (1 + q with power steps).
  Unless given a shift, a short Lanczos run (20 products) looks at the bottom
  of the spectrum; when it or Omega^T H Omega shows a negative Rayleigh
  quotient (H indefinite) it sketches H + sigma I, with sigma from that
  run's bottom estimate, and subtracts sigma again; the shift is recorded.
  The shift lifts every eigenvalue by sigma, a flat tail that one pass cannot
  see past: when |lambda_min| is a sizeable fraction of lambda_max, use
  power_steps >= 1 (or the range finder).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch

from hessian_spectra.algorithms._linalg import (
    gaussian,
    mul,
    orth,
    rademacher,
    range_finder,
    work_dtype,
)
from hessian_spectra.algorithms._run import RunContext
from hessian_spectra.algorithms.lanczos import lowest_eigenvalue_estimate
from hessian_spectra.history import SHIFT, STEP, TOP
from hessian_spectra.operators.base import LinearOperator, as_operator
from hessian_spectra.results import SketchResult

Kind = Literal["rademacher", "rangefinder", "nystrom"]
KINDS = ("rademacher", "rangefinder", "nystrom")
#: Lanczos steps for the bottom-eigenvalue estimate behind the Nystrom shift.
SHIFT_LANCZOS_STEPS = 20
#: How the warning about a one-pass Nystrom sketch of a shifted operator starts
#: (callers that measure that sketch on purpose filter it by this).
SHIFTED_NYSTROM_WARNING = "nystrom: the operator is indefinite"


def _eigh_desc(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a symmetric matrix, eigenvalues descending."""
    w, U = torch.linalg.eigh((M + M.T) / 2)
    return w.flip(0), U.flip(1)


def sketch(
    op: LinearOperator | torch.Tensor | np.ndarray,
    size: int,
    *,
    kind: Kind = "rademacher",
    power_steps: int = 0,
    seed: int | None = None,
    shift: float | None = None,
    progress: bool = False,
) -> SketchResult:
    """A d x d sketch of the operator, its eigenvalues and (where the kind has them) vectors.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> lam = torch.zeros(200, dtype=torch.float64)
        >>> lam[:5] = torch.tensor([9.0, 7.0, 5.0, 3.0, 1.0])  # rank 5
        >>> sk = hs.sketch(hs.DenseOperator(torch.diag(lam)), 10, kind="rangefinder", seed=0)
        >>> sk.eigenvalues[:5].round(8).tolist()
        [9.0, 7.0, 5.0, 3.0, 1.0]

    Args:
        op: a symmetric `LinearOperator` (or a dense symmetric matrix).
        size: the sketch size d.
        kind: "rademacher" (the study's S^T H S), "rangefinder" (Rayleigh-Ritz on
            a randomized range; eigenvalues never above the true ones) or
            "nystrom" (for PSD operators; shifted for indefinite ones).
        power_steps: q extra passes H^q sharpening the range (rangefinder,
            nystrom); each costs d products. Not defined for "rademacher".
        seed: the random seed (drawn and recorded when None).
        shift: Nystrom only: sketch H + shift I. None chooses it from a short
            Lanczos run for the bottom of the spectrum (20 products, counted in
            num_matvecs): 0 when neither it nor Omega^T H Omega shows a
            negative Rayleigh quotient, otherwise the bottom estimate with a
            10% margin. An operator whose ``positive_semidefinite`` is True
            (`GGNOperator`, `FisherOperator`) gets 0 without that run; pass 0
            for another operator known to be PSD to save those products. A
            one-pass sketch it shifts warns (UserWarning) and says what to use.
        progress: show a progress bar.

    Returns:
        A `SketchResult`. ``matrix`` is S^T H S (rademacher) or Q^T H Q with Q
        the orthonormal test basis (rangefinder, nystrom); ``eigenvalues`` are
        descending. ``eigenvectors`` (n, d): for "rangefinder" the Ritz vectors
        Q U (with ``residuals`` ||H v - theta v||, computed without extra
        products); for "nystrom" the approximation's eigenvectors; for
        "rademacher" the columns of H S U normalized, U the sketch's
        eigenvectors: the lift S u of a sketch eigenvector followed by one
        power step, which costs no product (H S is already known) and
        approximates well-separated top eigenvectors, a start for `refine`.
        ``trace``: for "rademacher" an unbiased estimate of tr(H); for the
        others the trace of the low-rank approximation (for PSD H a lower
        bound, not an estimate of tr(H): use `trace` for that).
    """
    op = as_operator(op)
    n = op.shape[0]
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if power_steps < 0:
        raise ValueError(f"power_steps must be non-negative, got {power_steps}")
    if kind == "rademacher" and power_steps:
        raise ValueError(
            "power_steps applies to 'rangefinder' and 'nystrom'; the Rademacher sketch "
            "S^T H S is one pass"
        )
    if kind != "rademacher" and size > n:
        raise ValueError(f"a {kind} sketch needs size <= n={n}, got {size}")
    if shift is not None and kind != "nystrom":
        raise ValueError("shift applies to kind='nystrom' only")
    passes = {"rademacher": 1, "rangefinder": 2 + power_steps, "nystrom": 1 + power_steps}[kind]
    ctx = RunContext(op, f"sketch ({kind})", seed=seed, total=size * passes, progress=progress)
    gen = ctx.generator
    wd = work_dtype(op)
    settings = {"size": size, "kind": kind, "power_steps": power_steps, "shift": shift}
    residuals: np.ndarray | None = None
    used_shift = 0.0
    with ctx:
        if kind == "rademacher":
            S = rademacher(op, size, gen).to(wd) / math.sqrt(size)
            HS = mul(op, S)
            M = S.T @ HS
            M = (M + M.T) / 2
            lam, U = _eigh_desc(M)
            V = HS @ U
            norms = torch.linalg.vector_norm(V, dim=0)
            V = V / torch.where(norms > 0, norms, torch.ones_like(norms))
            matrix, vectors, tr = M, V, float(torch.trace(M))
            ctx.record({TOP: float(lam[0])})
        elif kind == "rangefinder":
            Q = range_finder(
                op,
                gaussian(op, size, gen).to(wd),
                power_steps,
                on_pass=lambda p: ctx.record({STEP: "range" if p == 0 else f"power {p}"}),
            )
            Z = mul(op, Q)
            M = Q.T @ Z
            M = (M + M.T) / 2
            lam, U = _eigh_desc(M)
            vectors = Q @ U
            residuals = (
                torch.linalg.vector_norm(Z @ U - vectors * lam, dim=0).detach().cpu().numpy()
            )
            matrix, tr = M, float(torch.trace(M))
            ctx.record({TOP: float(lam[0])})
        else:
            lam, vectors, matrix, used_shift = _nystrom(op, size, power_steps, gen, wd, shift)
            tr = float(lam.sum())
            ctx.record({TOP: float(lam[0]), SHIFT: used_shift})
        ctx.finish(f"top {float(lam[0]):.4g}")
        seconds, used, history = ctx.seconds, ctx.matvecs, ctx.history
        all_settings = ctx.settings(**settings)
    if kind == "nystrom" and shift is None and used_shift > 0 and power_steps == 0:
        warnings.warn(
            f"{SHIFTED_NYSTROM_WARNING}, so the sketch is of H + {used_shift:.3g} I "
            "(then shifted back): it stays below H, but one pass cannot see past the lifted "
            "bulk, so its eigenvalues can be far below the true ones (by tens of percent on "
            "network Hessians). For eigenvalues use kind='rangefinder'; for a PSD "
            "approximation, power_steps >= 1",
            UserWarning,
            stacklevel=2,
        )
    return SketchResult(
        matrix=matrix.detach().cpu().numpy(),
        eigenvalues=lam.detach().cpu().numpy(),
        eigenvectors=vectors.to(op.dtype),
        trace=tr,
        kind=kind,
        shift=used_shift,
        residuals=residuals,
        num_matvecs=used,
        seconds=seconds,
        history=history,
        seed=ctx.seed,
        settings=all_settings,
    )


def _nystrom(
    op: LinearOperator,
    d: int,
    power_steps: int,
    gen: torch.Generator,
    wd: torch.dtype,
    shift: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Eigenvalues, eigenvectors, Omega^T H Omega and the shift used."""
    n = op.shape[0]
    eps = torch.finfo(op.dtype).eps
    Om = orth(gaussian(op, d, gen).to(wd))
    for _ in range(power_steps):
        Om = orth(mul(op, Om))
    Om = Om.to(op.dtype).to(wd)  # the test matrix actually multiplied
    Y = mul(op, Om)
    B0 = Om.T @ Y
    B0 = (B0 + B0.T) / 2
    b_min = float(torch.linalg.eigvalsh(B0)[0])
    scale = float(torch.linalg.matrix_norm(Y, ord=2))
    if shift is None and op.positive_semidefinite:
        sigma = 0.0
    elif shift is None:
        # A clearly negative Rayleigh quotient proves H indefinite: an
        # eigenvalue of Omega^T H Omega or the smallest Ritz value of a short
        # Lanczos run, which goes for the bottom of the spectrum. Omega^T H
        # Omega alone is not enough: when the negative eigenvalues are small
        # beside the positive ones a random subspace sees only the positive
        # part, and Nystrom of an unshifted indefinite H can over-estimate by
        # tens of percent. Then sigma comes from the bottom of the spectrum:
        # Lanczos's smallest Ritz value less its residual, with a 10% margin.
        sigma = 0.0
        theta_min, bottom = lowest_eigenvalue_estimate(op, gen, SHIFT_LANCZOS_STEPS)
        clearly = -100 * math.sqrt(n) * eps * scale
        if b_min < clearly or theta_min < clearly:
            sigma = -1.1 * min(b_min, bottom)
    else:
        sigma = float(shift)
    Ys = Y + sigma * Om
    # Stabilizing shift nu (Tropp et al. 2017, Alg. 3), at the operator's precision.
    nu = math.sqrt(n) * eps * float(torch.linalg.matrix_norm(Ys, ord=2))
    Ynu = Ys + nu * Om
    B = Om.T @ Ynu
    B = (B + B.T) / 2
    # B = V D V^T; F = Ynu V D^{-1/2} so that F F^T = Ynu B^{-1} Ynu^T. An
    # eigendecomposition rather than a Cholesky factor, so that directions
    # where B is not positive (an indefinite H with too small a shift) are
    # dropped instead of failing.
    D, V = torch.linalg.eigh(B)
    keep = D > 0.5 * nu
    if bool(keep.any()):
        F = (Ynu @ V[:, keep]) / torch.sqrt(D[keep])
        U, sv, _ = torch.linalg.svd(F, full_matrices=False)
        lam = torch.clamp(sv * sv - nu, min=0.0) - sigma
    else:  # H Omega = 0: nothing to approximate
        U, lam = Y[:, :0], Y.new_zeros(0)
    if U.shape[1] < d:
        pad = d - U.shape[1]
        U = torch.cat([U, torch.zeros((n, pad), dtype=U.dtype, device=U.device)], 1)
        lam = torch.cat([lam, torch.full((pad,), -sigma, dtype=lam.dtype, device=lam.device)])
    return lam, U, B0, sigma
