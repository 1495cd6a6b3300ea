"""Stochastic estimates of an operator's diagonal, with a standard error per entry: `diagonal`.

What AdaHessian and Sophia precondition with, and a per-parameter curvature
map. Two estimators, both from products only:

- ``"hutchinson"``: Bekas, Kokiopoulou and Saad 2007 ("An estimator for the
  diagonal of a matrix", Appl. Numer. Math.): the mean over Rademacher
  probes z of ``z * (H z)``, unbiased, with each entry's error the sample
  standard deviation over the probes over sqrt(probes). Its variance for
  entry k is ``sum_{j != k} H_kj^2`` per probe: large when H has large
  off-diagonal entries, as a low-rank H has.
- ``"xdiag"``: XDiag (Epperly, Tropp, Webber 2024, "XTrace: making the most
  of every sample in stochastic trace estimation", SIAM J. Matrix Anal.
  Appl.). The m = num_matvecs / 2 Rademacher probes W give a basis Q of
  ``H W`` (one product per probe) and ``H Q`` (one more); each probe i is
  used twice, exchangeably: the diagonal of ``P_i H`` is read off exactly
  from the basis of the OTHER probes (``P_i = Q (I - s_i s_i^T) Q^T``, s_i
  the normalized i-th column of ``R^{-T}``) and the rest, ``(I - P_i) H``,
  is estimated with probe i alone, ``w_i * ((I - P_i) H w_i)``. The mean of
  these m estimates is unbiased. On a low-rank-plus-small matrix the basis
  takes the large part exactly and only the small remainder is sampled.

Standard errors. Each XDiag estimate i equals ``diag(H) + e_i`` with the e_i
of mean zero but correlated (each uses the other probes' basis), so their
spread over sqrt(m) under-reports the error (measured: +-2 of it covered the
exact diagonal 81-93% of the time where 95% was due). The error reported is
the jackknife's instead: XDiag rerun with each probe left out, from the same
products (the basis without probe j is a rotation of Q, so the leave-two-out
projectors are rank-two updates of Q's, and the m reruns cost O(n m^2) like
the estimate itself). The jackknife variance is an over-estimate (Efron and
Stein 1981): +-2 of it covered 94-99% of the time, so read it as an honest,
somewhat cautious error bar.

Per-block summaries (``blocks``, e.g. a model operator's parameter slices)
come from the same probes: each block's summed diagonal (its trace) with a
standard error from the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch

from hessian_spectra.algorithms._linalg import mul, rademacher, work_dtype
from hessian_spectra.algorithms._run import Callback, RunContext
from hessian_spectra.algorithms.memory import check_max_memory, check_memory, dtype_bytes
from hessian_spectra.algorithms.trace import BlockIndex, _as_blocks, _block_size
from hessian_spectra.algorithms.trace_estimators import block_sums, std_err
from hessian_spectra.history import ESTIMATE, PROBES, STDERR
from hessian_spectra.operators.base import LinearOperator, as_operator
from hessian_spectra.results import DiagonalResult

__all__ = ["Method", "diagonal"]

Method = Literal["hutchinson", "xdiag"]
METHODS = ("hutchinson", "xdiag")
DEFAULT_NUM_MATVECS = 100
CHUNK = 2**22  # numbers in one chunk of per-coordinate work


def diagonal(
    op: LinearOperator | torch.Tensor | np.ndarray,
    *,
    method: Method = "xdiag",
    num_matvecs: int = DEFAULT_NUM_MATVECS,
    seed: int | None = None,
    blocks: Mapping[str, BlockIndex] | str | None = None,
    block_size: int = 10,
    progress: bool = False,
    callback: Callback | None = None,
    max_memory: float | None = None,
) -> DiagonalResult:
    """Estimate diag(H) with a standard error per entry, from products only.

    Example:
        >>> import numpy as np, torch, hessian_spectra as hs
        >>> rng = np.random.default_rng(0)
        >>> U = np.linalg.qr(rng.standard_normal((200, 5)))[0]
        >>> H = 100 * U @ U.T + np.diag(rng.uniform(0, 1, 200))  # low rank plus a diagonal
        >>> op = hs.DenseOperator(torch.as_tensor(H))
        >>> dg = hs.diagonal(op, method="xdiag", num_matvecs=40, seed=0)
        >>> err = (dg.estimate - torch.as_tensor(H).diagonal()).abs()
        >>> bool((err <= 3 * dg.stderr).float().mean() > 0.9)  # within 3 standard errors
        True
        >>> hu = hs.diagonal(op, method="hutchinson", num_matvecs=40, seed=0)
        >>> bool(dg.stderr.mean() < hu.stderr.mean() / 5)  # the basis takes the low rank
        True

    Args:
        op: a symmetric `LinearOperator` (or a dense symmetric matrix).
        method: ``"xdiag"`` (default) or ``"hutchinson"``.
        num_matvecs: the budget of products. XDiag uses two per probe (an odd
            budget leaves one unused) and needs at least 4 and fewer than
            2 n; Hutchinson one per probe, at least 2.
        seed: the random seed (drawn and recorded when None).
        blocks: name -> slice, integer index tensor or boolean mask of the flat
            vector (e.g. ``op.blocks`` of a model operator), or, for a model
            operator, how to group its parameters (``"layers"``,
            ``"modules"`` or ``"parameters"``, as `trace` takes them): per-block sums of the
            diagonal (block traces) and their standard errors.
        block_size: probes multiplied per block product (one history record each).
        progress: show a progress bar.
        callback: called with each history record; returning True stops
            (Hutchinson: after the current block; XDiag: no further probes
            are drawn, and the basis products of those drawn still run).
        max_memory: the most bytes the probes and bases may take (default:
            the memory available on the operator's device).

    Returns:
        A `DiagonalResult`: ``estimate`` and ``stderr`` (n,) in float64 on the
        operator's device, ``block_estimates`` / ``block_stderrs`` /
        ``block_sizes`` when `blocks` were given, ``probes``,
        ``num_matvecs``, ``seconds``, ``seed`` and ``history`` (each record:
        the probes so far and, once known, the trace of the estimate with its
        standard error).
    """
    op = as_operator(op)
    n = op.shape[0]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(num_matvecs, bool) or not isinstance(num_matvecs, int):
        raise TypeError(f"num_matvecs must be an int, got {type(num_matvecs).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    probes = num_matvecs if method == "hutchinson" else num_matvecs // 2
    if method == "hutchinson" and probes < 2:
        raise ValueError(f"hutchinson needs num_matvecs >= 2 for a standard error, got {probes}")
    if method == "xdiag":
        if probes < 2:
            raise ValueError(f"xdiag needs num_matvecs >= 4 (two per probe), got {num_matvecs}")
        if probes >= n:
            raise ValueError(
                f"xdiag would use {probes} >= n={n} probes: for so small an operator the exact "
                f"diagonal costs n={n} products of unit vectors (op.matmat(torch.eye(n))); or "
                "lower num_matvecs"
            )
    bl = _as_blocks(blocks, op)
    wd = work_dtype(op)
    check_max_memory(max_memory)
    item, w = dtype_bytes(op.dtype), dtype_bytes(wd)
    b = min(block_size, probes)
    need = n * b * (2 * item + 4 * w)
    if method == "xdiag":
        need += 4 * n * probes * w + 8 * min(n * probes, CHUNK) * w
    check_memory(
        [(op.device, need)],
        what=f"diagonal(method={method!r}, num_matvecs={num_matvecs})",
        lower="lower num_matvecs, or use method='hutchinson', which holds one block of probes",
        max_memory=max_memory,
    )
    ctx = RunContext(
        op,
        f"diagonal ({method})",
        seed=seed,
        total=num_matvecs,
        progress=progress,
        callback=callback,
    )
    with ctx:
        if method == "hutchinson":
            est, err, be, bs, used = _hutchinson(op, ctx, probes, block_size, bl, wd)
        else:
            est, err, be, bs, used = _xdiag(op, ctx, probes, block_size, bl, wd)
        seconds, matvecs, history = ctx.seconds, ctx.matvecs, ctx.history
        settings = ctx.settings(method=method, num_matvecs=num_matvecs, block_size=block_size)
        settings["blocks"] = list(bl)
    names = list(bl)
    return DiagonalResult(
        estimate=est,
        stderr=err,
        block_estimates=None if be is None else dict(zip(names, be.tolist(), strict=True)),
        block_stderrs=None if bs is None else dict(zip(names, bs.tolist(), strict=True)),
        block_sizes=None if be is None else {k: _block_size(v) for k, v in bl.items()},
        method=method,
        probes=used,
        num_matvecs=matvecs,
        seconds=seconds,
        history=history,
        seed=ctx.seed,
        settings=settings,
    )


Summary = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, int]


def _hutchinson(
    op: LinearOperator,
    ctx: RunContext,
    probes: int,
    block_size: int,
    bl: Mapping[str, slice | torch.Tensor],
    wd: torch.dtype,
) -> Summary:
    """Mean of z * (H z) over Rademacher probes; per-entry mean and M2 merged block by block."""
    n = op.shape[0]
    mean = torch.zeros(n, dtype=wd, device=op.device)
    m2 = torch.zeros_like(mean)
    traces: list[torch.Tensor] = []  # per-probe sums: the trace's samples
    block_rows: list[torch.Tensor] = []
    done = 0
    while done < probes:
        b = min(block_size, probes - done)
        Z = rademacher(op, b, ctx.generator).to(wd)
        C = Z * mul(op, Z)
        # Chan et al.'s merge of (count, mean, M2) with the block's own
        block_mean = C.mean(1)
        delta = block_mean - mean
        total = done + b
        m2 += ((C - block_mean[:, None]) ** 2).sum(1) + delta**2 * (done * b / total)
        mean += delta * (b / total)
        done = total
        traces.append(C.sum(0))
        if bl:
            block_rows.append(block_sums(C, bl))
        x = torch.cat(traces)
        stop = ctx.record(
            {PROBES: done, ESTIMATE: float(x.mean()), STDERR: float(std_err(x))},
            postfix=f"{done} probes",
        )
        if stop:
            break
    err = (
        (m2.clamp_min(0) / (done - 1) / done).sqrt()
        if done > 1
        else torch.full_like(mean, math.nan)
    )
    be = bs = None
    if bl:
        xb = torch.cat(block_rows, 1)
        be, bs = xb.mean(1), std_err(xb)
    return mean, err, be, bs, done


def _xdiag(
    op: LinearOperator,
    ctx: RunContext,
    probes: int,
    block_size: int,
    bl: Mapping[str, slice | torch.Tensor],
    wd: torch.dtype,
) -> Summary:
    """XDiag from the products H W and H Q; jackknife standard errors from the same products."""
    Ws: list[torch.Tensor] = []
    Ys: list[torch.Tensor] = []
    done = 0
    while done < probes:
        b = min(block_size, probes - done)
        W = rademacher(op, b, ctx.generator).to(wd)
        Ws.append(W)
        Ys.append(mul(op, W))
        done += b
        if ctx.record({PROBES: done}, postfix=f"{done} probes") and done >= 2:
            break
    W, Y = torch.cat(Ws, 1), torch.cat(Ys, 1)
    del Ws, Ys
    m = W.shape[1]
    Q, R = torch.linalg.qr(Y, mode="reduced")
    Z = torch.cat([mul(op, Q[:, lo : lo + block_size]) for lo in range(0, m, block_size)], 1)
    ctx.record({PROBES: m}, postfix="basis")
    captured = _captured(op, Q, R, Z)
    if captured is not None:
        est, err = captured
        be = bs = None
        if bl:
            be = block_sums(est[:, None], bl)[:, 0]
            bs = block_sums(err[:, None] ** 2, bl)[:, 0].sqrt()
        ctx.record(
            {PROBES: m, ESTIMATE: float(est.sum()), STDERR: float(err.square().sum().sqrt())}
        )
        return est, err, be, bs, m
    eye = torch.eye(m, dtype=R.dtype, device=R.device)
    S = torch.linalg.solve_triangular(R, eye, upper=True).T
    S = S / torch.linalg.vector_norm(S, dim=0)
    if not bool(torch.isfinite(S).all()):
        raise ValueError(
            "xdiag: the products H w of the probes are linearly dependent but do not span an "
            "invariant subspace (R is singular); use method='hutchinson' for this operator"
        )
    c = Q.T @ Y  # = R up to rounding; used as computed
    g = S.T @ S  # s_i . s_j
    a = S.T @ c  # a[j, i] = s_j . c_i
    n = op.shape[0]
    est = torch.empty(n, dtype=wd, device=op.device)
    err = torch.empty_like(est)
    loo_trace = torch.zeros(m, dtype=wd, device=op.device)  # sum over entries of each rerun
    loo_blocks = torch.zeros((len(bl), m), dtype=wd, device=op.device)
    rows = max(1, CHUNK // max(1, m * m))
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        full, loo = _xdiag_rows(Q[lo:hi], Z[lo:hi], Y[lo:hi], W[lo:hi], S, c, g, a)
        est[lo:hi] = full
        centred = loo - loo.mean(1, keepdim=True)
        err[lo:hi] = ((m - 1) / m * (centred**2).sum(1)).sqrt()
        loo_trace += loo.sum(0)
        if bl:
            loo_blocks += _rows_block_sums(loo, lo, hi, bl)
    be = bs = None
    if bl:
        be = block_sums(est[:, None], bl)[:, 0]
        bs = _jackknife(loo_blocks)
    ctx.record(
        {PROBES: m, ESTIMATE: float(est.sum()), STDERR: float(_jackknife(loo_trace[None])[0])},
        postfix="done",
    )
    return est, err, be, bs, m


def _jackknife(loo: torch.Tensor) -> torch.Tensor:
    """Standard errors from leave-one-out reruns, one row per quantity: sqrt((m-1)/m sum dev^2)."""
    m = loo.shape[1]
    return ((m - 1) / m * ((loo - loo.mean(1, keepdim=True)) ** 2).sum(1)).sqrt()


def _xdiag_rows(
    Q: torch.Tensor,
    Z: torch.Tensor,
    Y: torch.Tensor,
    W: torch.Tensor,
    S: torch.Tensor,
    c: torch.Tensor,
    g: torch.Tensor,
    a: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Some rows of the XDiag estimate and of its m leave-one-probe-out reruns.

    Probe i's estimate is ``diag(H) - diag(Q s_i s_i^T Q^T H)`` read off the
    basis, plus ``w_i * h_i`` with ``h_i = (I - P_i) y_i = e_i + Q s_i (s_i . c_i)``
    (e_i = y_i - Q c_i, rounding). Left out probe j, the basis of the other
    probes but i is Q's with span{s_i, s_j} removed (both are orthogonal to
    R e_k for every other k), a rank-two update with Gram matrix
    [[1, g], [g, 1]], g = s_i . s_j.
    """
    m = S.shape[0]
    QS, ZS = Q @ S, Z @ S
    dQZ = (Q * Z).sum(1, keepdim=True)
    E = Y - Q @ c
    aii = a.diagonal()
    full = (dQZ - QS * ZS + W * (E + QS * aii)).mean(1)
    loo = torch.empty((Q.shape[0], m), dtype=Q.dtype, device=Q.device)
    for j in range(m):
        gj, aj = g[:, j], a[j]
        den = 1 - gj * gj
        den[j] = 1.0
        qj, zj = QS[:, j : j + 1], ZS[:, j : j + 1]
        low = dQZ - (QS * ZS + qj * zj - gj * (QS * zj + qj * ZS)) / den
        hut = W * (E + QS * ((aii - gj * aj) / den) + qj * ((aj - gj * aii) / den))
        terms = low + hut
        terms[:, j] = 0.0
        loo[:, j] = terms.sum(1) / (m - 1)
    return full, loo


def _rows_block_sums(
    C: torch.Tensor, lo: int, hi: int, blocks: Mapping[str, slice | torch.Tensor]
) -> torch.Tensor:
    """(num_blocks, b): each block's sums over the rows lo:hi (C holds those rows)."""
    out = []
    for idx in blocks.values():
        if isinstance(idx, slice):
            start, stop = max(idx.start, lo), min(idx.stop, hi)
            part = C[start - lo : stop - lo] if stop > start else C[:0]
        else:
            sel = idx[(idx >= lo) & (idx < hi)] - lo
            part = C.index_select(0, sel)
        out.append(part.sum(0))
    return torch.stack(out)


def _captured(
    op: LinearOperator, Q: torch.Tensor, R: torch.Tensor, Z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """When H W lost rank because range(Q) holds H's whole range: diag(Q Q^T H) is the diagonal.

    Both must hold, as for XTrace: a diagonal entry of R at rounding level, and
    Q (numerically) invariant, ``||H Q - Q C||`` at rounding level. The error
    reported is then the products' rounding level, per entry: eps of the
    operator's dtype times the entry's row of H Q, never zero.
    """
    d = R.diagonal().abs()
    eps = torch.finfo(op.dtype).eps
    if not d.numel() or bool(d.min() > 1e3 * eps * d.max()):
        return None
    C = Q.T @ Z
    leak = torch.linalg.matrix_norm(Z - Q @ C)
    if bool(leak > 1e3 * eps * torch.linalg.matrix_norm(Z)):
        return None
    est = (Q * Z).sum(1)
    err = eps * torch.linalg.vector_norm(Z, dim=1) * math.sqrt(Q.shape[1])
    return est, err
