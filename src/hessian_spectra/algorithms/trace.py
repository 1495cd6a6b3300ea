"""Stochastic trace estimators with standard errors, and per-block traces.

Three estimators, all built on block products (`matmat`):

- ``"hutchinson"``: the Girard-Hutchinson estimator (Girard 1989, Hutchinson
  1989) with Rademacher probes, mean of ``z^T H z``.
- ``"hutch++"``: Hutch++ (Meyer, Musco, Musco, Woodruff 2021, "Hutch++:
  Optimal stochastic trace estimation", SOSA). A third of the budget finds a
  range basis Q = orth(H S), a third computes tr(Q^T H Q) exactly, the rest
  estimates the trace of the deflated remainder (I - QQ^T) H (I - QQ^T) with
  Hutchinson.
- ``"xtrace"``: XTrace (Epperly, Tropp, Webber 2024, "XTrace: making the most of
  every sample in stochastic trace estimation", SIAM J. Matrix Anal. Appl.).
  Every probe is used both for the range basis and, left out of it, as a
  Hutchinson probe of the deflated remainder (the exchangeable leave-one-out
  design); probes are uniform on the sphere of radius sqrt(n) and the
  remainder's probe is renormalized (the paper's "improved" variant).

Each estimator returns a standard error: for Hutchinson and Hutch++ the
sample standard deviation of the independent Hutchinson samples over the
square root of their number (Hutch++'s low-rank part is exact given Q, and
the remainder's estimate is unbiased given Q, so this is its whole error);
for XTrace the paper's estimate std(tr_i) / sqrt(m) over the leave-one-out
estimates tr_i, which are not independent: it is known to under-report the
error, so read it as a scale, not a guarantee.

Stopping: a fixed budget (`num_matvecs`), or `rtol` on the standard error
(stderr <= rtol * |estimate|, tested only after at least 10 probes, capped by
`max_matvecs`). PyHessian stops when two consecutive running means agree to
0.1%, which says nothing about the variance; that rule is not offered.

Per-block traces (`blocks`, e.g. a Hessian operator's parameter slices) come
from the same probes. Each estimator writes its estimate as a sum over
coordinates, ``estimate = sum_k c_k``, where each block's sum of the c_k is
an unbiased estimate of that block's trace tr(P_l H) (P_l the coordinate
projection). So blocks that partition the coordinates sum exactly to the
total. For Hutchinson c = z * (H z). For Hutch++ and XTrace, with P = Q Q^T
the (leave-one-out) projector and B = (I - P) H (I - P),

    tr(P_l H) = tr(P_l (2 H P - P H P)) + tr(P_l B),

whose first part is read off exactly from Q and H Q (diag(H P) = diag(P H)
for symmetric H), and whose second part is estimated with the deflated probe
r = (I - P) w as ``r * (B r)`` (times XTrace's normalization).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hessian_spectra.algorithms._common import (
    Callback,
    Recorder,
    gaussian,
    rademacher,
    resolve_seed,
)
from hessian_spectra.checkpoint import (
    generator_state,
    guarded,
    open_run,
    resolve_resumed_seed,
    tensor_digest,
)
from hessian_spectra.operators.base import LinearOperator, as_operator
from hessian_spectra.results import TraceResult

Method = Literal["hutchinson", "hutch++", "xtrace"]
BlockIndex = slice | torch.Tensor | Sequence[int] | np.ndarray

METHODS = ("hutchinson", "hutch++", "xtrace")
DEFAULT_NUM_MATVECS = 100
MIN_PROBES_FOR_RTOL = 10


def _work_dtype(op: LinearOperator) -> torch.dtype:
    """The dtype of the small dense algebra: float64 except where a device lacks it."""
    return torch.float32 if op.device.type == "mps" else torch.float64


def _as_blocks(
    blocks: Mapping[str, BlockIndex] | None, n: int, device: torch.device
) -> dict[str, slice | torch.Tensor]:
    """Check and convert `blocks` to slices or long index tensors on `device`."""
    if blocks is None:
        return {}
    if not isinstance(blocks, Mapping):
        raise TypeError(
            "blocks must be a mapping name -> slice or index tensor (e.g. op.blocks), "
            f"got {type(blocks).__name__}"
        )
    out: dict[str, slice | torch.Tensor] = {}
    for name, idx in blocks.items():
        if isinstance(idx, slice):
            start, stop, step = idx.indices(n)
            if step != 1:
                idx = torch.arange(start, stop, step, device=device)
            else:
                if stop <= start:
                    raise ValueError(f"block {name!r} is empty ({idx}); drop it or fix its slice")
                out[str(name)] = slice(start, stop)
                continue
        t = torch.as_tensor(idx, device=device)
        if t.dtype == torch.bool:
            if t.shape != (n,):
                raise ValueError(f"boolean block {name!r} must have shape ({n},)")
            t = torch.nonzero(t).flatten()
        if t.ndim != 1 or t.is_floating_point():
            raise ValueError(f"block {name!r} must be a slice or a 1-d integer index tensor")
        if t.numel() == 0:
            raise ValueError(f"block {name!r} is empty; drop it")
        t = t.long()
        if int(t.min()) < 0 or int(t.max()) >= n:
            raise ValueError(f"block {name!r} has indices outside [0, {n}); the operator has n={n}")
        out[str(name)] = t
    return out


def _block_size(idx: slice | torch.Tensor) -> int:
    return int(idx.stop - idx.start) if isinstance(idx, slice) else int(idx.numel())


def _block_sums(C: torch.Tensor, blocks: Mapping[str, slice | torch.Tensor]) -> torch.Tensor:
    """(num_blocks, b): each block's column sums of the per-coordinate terms C (n, b)."""
    rows = []
    for idx in blocks.values():
        part = C[idx] if isinstance(idx, slice) else C.index_select(0, idx)
        rows.append(part.sum(0))
    return torch.stack(rows) if rows else C.new_zeros((0, C.shape[1]))


def _std_err(x: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation (ddof=1) over the last axis over sqrt(count); NaN below 2."""
    m = x.shape[-1]
    if m < 2:
        return torch.full(x.shape[:-1], float("nan"), dtype=x.dtype, device=x.device)
    return x.std(dim=-1, unbiased=True) / math.sqrt(m)


def _orth(Y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the columns of Y (Householder QR, robust to rank loss)."""
    Q, _ = torch.linalg.qr(Y, mode="reduced")
    return Q


class _Estimator:
    """Incremental state shared by the three estimators.

    The state is the attributes named in `_STATE`; `state_dict` and
    `from_state_dict` checkpoint and restore it. `extend` draws probes and
    multiplies them first, then calls `on_update` (a checkpoint's mark that the
    state is changing) right before it updates the state.
    """

    _STATE: tuple[str, ...] = ()

    def __init__(
        self, op: LinearOperator, gen: torch.Generator, blocks: Mapping[str, slice | torch.Tensor]
    ) -> None:
        self.op = op
        self.gen = gen
        self.blocks = blocks
        self.wd = _work_dtype(op)
        self.on_update: Callable[[], None] | None = None

    def _updating(self) -> None:
        if self.on_update is not None:
            self.on_update()

    def state_dict(self) -> dict[str, Any]:
        """The estimator's sums and bases (for a checkpoint)."""
        return {name: getattr(self, name) for name in self._STATE}

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, Any],
        op: LinearOperator,
        gen: torch.Generator,
        blocks: Mapping[str, slice | torch.Tensor],
    ) -> _Estimator:
        """An estimator continuing from `state_dict` (no product is taken)."""
        est = cls.__new__(cls)
        _Estimator.__init__(est, op, gen, blocks)
        for name in cls._STATE:
            value = state[name]
            if isinstance(value, torch.Tensor):
                value = value.to(op.device)
            elif isinstance(value, list):
                value = [v.to(op.device) for v in value]
            setattr(est, name, value)
        return est

    def mul(self, V: torch.Tensor) -> torch.Tensor:
        """H V in the work dtype, the product taken in the operator's dtype."""
        return self.op.matmat(V.to(self.op.dtype)).to(self.wd)

    @property
    def probes(self) -> int:
        raise NotImplementedError

    def summary(
        self,
    ) -> tuple[float, float, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(estimate, stderr, samples, block estimates, block stderrs)."""
        raise NotImplementedError


class _Hutchinson(_Estimator):
    """z^T H z over Rademacher z; per-block z_l . (H z)_l."""

    _STATE = ("samples", "block_samples")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.samples: list[torch.Tensor] = []
        self.block_samples: list[torch.Tensor] = []

    @property
    def probes(self) -> int:
        return sum(int(s.numel()) for s in self.samples)

    def extend(self, b: int) -> None:
        Z = rademacher(self.op, b, self.gen)
        HZ = self.mul(Z)
        C = Z.to(self.wd) * HZ
        self._updating()
        self.samples.append(C.sum(0))
        if self.blocks:
            self.block_samples.append(_block_sums(C, self.blocks))

    def summary(
        self,
    ) -> tuple[float, float, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        x = torch.cat(self.samples)
        be = bs = None
        if self.blocks:
            xb = torch.cat(self.block_samples, dim=1)
            be, bs = xb.mean(1), _std_err(xb)
        return float(x.mean()), float(_std_err(x)), x, be, bs


class _HutchPlusPlus(_Estimator):
    """tr(Q^T H Q) exactly, plus Hutchinson on (I - QQ^T) H (I - QQ^T)."""

    _STATE = ("Q", "lowrank", "block_lowrank", "samples", "block_samples")

    def __init__(self, *args: Any, rank: int) -> None:
        super().__init__(*args)
        S = rademacher(self.op, rank, self.gen)
        self.Q = _orth(self.mul(S))
        Z = self.mul(self.Q)
        C = self.Q.T @ Z
        C = (C + C.T) / 2
        self.lowrank = float(torch.trace(C))
        self.block_lowrank: torch.Tensor | None = None
        if self.blocks:
            # diag(2 H P - P H P) with P = QQ^T, per coordinate.
            d = 2 * (self.Q * Z).sum(1) - ((self.Q @ C) * self.Q).sum(1)
            self.block_lowrank = _block_sums(d[:, None], self.blocks)[:, 0]
        self.samples: list[torch.Tensor] = []
        self.block_samples: list[torch.Tensor] = []

    @property
    def probes(self) -> int:
        return sum(int(s.numel()) for s in self.samples)

    def extend(self, b: int) -> None:
        G = rademacher(self.op, b, self.gen).to(self.wd)
        Gp = G - self.Q @ (self.Q.T @ G)
        HGp = self.mul(Gp)
        BG = HGp - self.Q @ (self.Q.T @ HGp)
        C = Gp * BG
        self._updating()
        self.samples.append(C.sum(0))
        if self.blocks:
            self.block_samples.append(_block_sums(C, self.blocks))

    def summary(
        self,
    ) -> tuple[float, float, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        x = torch.cat(self.samples)
        be = bs = None
        if self.blocks:
            assert self.block_lowrank is not None
            xb = torch.cat(self.block_samples, dim=1)
            be, bs = self.block_lowrank + xb.mean(1), _std_err(xb)
        return self.lowrank + float(x.mean()), float(_std_err(x)), x, be, bs


class _XTrace(_Estimator):
    """The exchangeable leave-one-out estimator, grown a block of probes at a time.

    Q is extended by block Gram-Schmidt (twice) so its earlier columns never
    change and Z = H Q only needs the new columns: each probe costs two
    products, whether the run is one block or many.
    """

    _STATE = ("Om", "Y", "Q", "Z", "R")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        n = self.op.shape[0]
        wd, dev = self.wd, self.op.device
        self.Om = torch.empty((n, 0), dtype=wd, device=dev)
        self.Y = torch.empty((n, 0), dtype=wd, device=dev)
        self.Q = torch.empty((n, 0), dtype=wd, device=dev)
        self.Z = torch.empty((n, 0), dtype=wd, device=dev)
        self.R = torch.empty((0, 0), dtype=wd, device=dev)

    @property
    def probes(self) -> int:
        return int(self.Om.shape[1])

    def extend(self, b: int) -> None:
        n = self.op.shape[0]
        W = gaussian(self.op, b, self.gen).to(self.wd)
        W = W * (math.sqrt(n) / torch.linalg.vector_norm(W, dim=0))
        # The probe actually multiplied (rounded to the operator's dtype).
        W = W.to(self.op.dtype).to(self.wd)
        Yb = self.mul(W)
        m = self.probes
        R12 = torch.zeros((m, b), dtype=self.wd, device=self.Y.device)
        Yp = Yb
        for _ in range(2):
            coef = self.Q.T @ Yp
            Yp = Yp - self.Q @ coef
            R12 = R12 + coef
        Qb, R22 = torch.linalg.qr(Yp, mode="reduced")
        Zb = self.mul(Qb)
        R = torch.zeros((m + b, m + b), dtype=self.wd, device=self.Y.device)
        R[:m, :m] = self.R
        R[:m, m:] = R12
        R[m:, m:] = R22
        self._updating()
        self.R = R
        self.Om = torch.cat([self.Om, W], 1)
        self.Y = torch.cat([self.Y, Yb], 1)
        self.Q = torch.cat([self.Q, Qb], 1)
        self.Z = torch.cat([self.Z, Zb], 1)

    def _captures_range(self, C: torch.Tensor) -> bool:
        """Whether Y = H Omega lost rank because range(Q) already holds H's range.

        Both must hold: a diagonal entry of R at rounding level, and Q (numerically)
        invariant, ||H Q - Q C|| at rounding level. An ill-conditioned R alone (a
        steeply decaying spectrum in low precision) is not enough: the
        leave-one-out formulas stay valid for it.
        """
        d = self.R.diagonal().abs()
        eps = torch.finfo(self.op.dtype).eps
        if not d.numel() or bool(d.min() > 1e3 * eps * d.max()):
            return False
        leak = torch.linalg.matrix_norm(self.Z - self.Q @ C)
        return bool(leak <= 1e3 * eps * torch.linalg.matrix_norm(self.Z))

    def summary(
        self,
    ) -> tuple[float, float, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        Q, Z, Om, Y, R = self.Q, self.Z, self.Om, self.Y, self.R
        n, m = Om.shape
        C = Q.T @ Z
        C = (C + C.T) / 2
        trC = torch.trace(C)
        if self._captures_range(C):
            # Y = H Omega has lost rank: range(Q) holds H's whole range (up to
            # rounding), so tr(Q^T H Q) is the trace and no probe is left over.
            x = trC.repeat(m)
            be = bs = None
            if self.blocks:
                d = 2 * (Q * Z).sum(1) - ((Q @ C) * Q).sum(1)
                be = _block_sums(d[:, None], self.blocks)[:, 0]
                bs = torch.zeros_like(be)
            return float(trC), 0.0, x, be, bs
        # Leave-one-out projector P_i = Q (I - s_i s_i^T) Q^T spans H Omega_{-i}:
        # s_i is the normalized i-th column of R^{-T}, orthogonal to R e_j, j != i.
        eye = torch.eye(m, dtype=R.dtype, device=R.device)
        S = torch.linalg.solve_triangular(R, eye, upper=True).T
        S = S / torch.linalg.vector_norm(S, dim=0)
        if not bool(torch.isfinite(S).all()):
            raise ValueError(
                "xtrace: the products H w of the probes are linearly dependent but do not "
                "span an invariant subspace (R is singular); use method='hutch++' or "
                "'hutchinson' for this operator"
            )
        W = Q.T @ Om  # Q^T w_i
        T = Z.T @ Om  # Q^T H w_i
        CS, CW = C @ S, C @ W
        a = (S * W).sum(0)  # s_i . W_i
        sCs = (S * CS).sum(0)
        # r_i = (I - P_i) w_i; r_i^T H r_i from small matrices only.
        wHw = (Om * Y).sum(0)
        rHr = (
            wHw
            - 2 * (T * W).sum(0)
            + 2 * (S * T).sum(0) * a
            + (W * CW).sum(0)
            - 2 * a * (S * CW).sum(0)
            + a * a * sCs
        )
        rr = (Om * Om).sum(0) - (W * W).sum(0) + a * a
        scale = (n - m + 1) / rr
        x = trC - sCs + scale * rHr
        be = bs = None
        if self.blocks:
            xb = self._block_terms(S, W, C, a, sCs, scale)
            be, bs = xb.mean(1), _std_err(xb)
        return float(x.mean()), float(_std_err(x)), x, be, bs

    def _block_terms(
        self,
        S: torch.Tensor,
        W: torch.Tensor,
        C: torch.Tensor,
        a: torch.Tensor,
        sCs: torch.Tensor,
        scale: torch.Tensor,
    ) -> torch.Tensor:
        """(num_blocks, m): each block's share of each leave-one-out estimate tr_i."""
        Q, Z, Om, Y = self.Q, self.Z, self.Om, self.Y
        m = Om.shape[1]
        dQZ = (Q * Z).sum(1, keepdim=True)
        dQCQ = ((Q @ C) * Q).sum(1, keepdim=True)
        out = []
        chunk = max(1, min(m, 2**22 // max(1, Q.shape[0])))
        for lo in range(0, m, chunk):
            sl = slice(lo, min(m, lo + chunk))
            Si, Wi, ai = S[:, sl], W[:, sl], a[sl]
            QS, ZS = Q @ Si, Z @ Si
            QCS = Q @ (C @ Si)
            # diag(2 H P_i - P_i H P_i), per coordinate.
            low = 2 * (dQZ - ZS * QS) - (dQCQ - 2 * QS * QCS + sCs[sl] * QS * QS)
            r = Om[:, sl] - Q @ Wi + ai * QS
            h = Y[:, sl] - Z @ Wi + ai * ZS  # H r_i
            g = Q.T @ h
            Bh = h - Q @ g + (Si * g).sum(0) * QS  # (I - P_i) H r_i
            out.append(_block_sums(low + scale[sl] * r * Bh, self.blocks))
        return torch.cat(out, dim=1)


def trace(
    op: Any,
    *,
    method: Method = "xtrace",
    num_matvecs: int | None = None,
    rtol: float | None = None,
    seed: int | None = None,
    blocks: Mapping[str, BlockIndex] | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    max_matvecs: int = 2000,
    block_size: int = 10,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> TraceResult:
    """Estimate tr(H) with a standard error, from Hessian-vector products only.

    Args:
        op: a symmetric `LinearOperator` (or a dense symmetric matrix).
        method: "xtrace" (default; its standard error is the paper's own
            estimate, which is known to under-report the true error),
            "hutch++" or "hutchinson".
        num_matvecs: a fixed budget of operator products (default 100 when
            `rtol` is not given). XTrace uses two products per probe (an odd
            budget leaves one unused); Hutch++ splits it in thirds (the
            remainder going to its Hutchinson part).
        rtol: stop once stderr <= rtol * |estimate|, tested after each block
            of probes once at least 10 Hutchinson-type probes are in, or at
            `max_matvecs`. Exclusive with `num_matvecs`. With "hutch++" the
            low-rank part is fixed at max(10, block_size) directions (capped
            by max_matvecs // 3) and only the Hutchinson part grows.
        seed: the random seed (drawn and recorded when None).
        blocks: name -> slice, integer index tensor or boolean mask of the flat
            vector (e.g. ``op.blocks`` of a Hessian operator). Per-block traces
            and standard errors come from the same probes; when the blocks
            partition the coordinates they sum to the total estimate.
        progress: show a progress bar.
        callback: called with each history record; returning True stops.
        max_matvecs: the cap on products when stopping by `rtol`.
        block_size: probes multiplied per block product (one history record each).
        checkpoint: a file to save the run's state to (the estimator's sums and
            bases, the generator state, the product count, the history),
            written atomically every `checkpoint_every` blocks and when the call
            is left by an exception (KeyboardInterrupt included) at a consistent
            point; removed when the call returns. Only rank 0 writes it.
        checkpoint_every: blocks of probes between saves (default 10).
        resume: continue the run saved in `checkpoint` (start afresh when there
            is no file): the same result, to the bit, as an uninterrupted call
            with the same arguments. Without it an existing file is refused;
            a file of another computation, a truncated or a foreign file raise
            `CheckpointError`.

    Returns:
        A `TraceResult` with `estimate`, `stderr`, `samples` (the Hutchinson
        samples, Hutch++'s remainder samples, or XTrace's leave-one-out
        estimates), `block_estimates` / `block_stderrs` when `blocks` were
        given, `num_matvecs`, `seconds`, `history` and `seed`.
    """
    op = as_operator(op)
    n = op.shape[0]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if num_matvecs is not None and rtol is not None:
        raise ValueError(
            "give either num_matvecs (a fixed budget) or rtol (with max_matvecs as the cap), "
            "not both"
        )
    if rtol is not None and not (rtol > 0):
        raise ValueError(f"rtol must be positive, got {rtol}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    adaptive = rtol is not None
    budget = int(max_matvecs if adaptive else (num_matvecs or DEFAULT_NUM_MATVECS))
    if num_matvecs is not None and num_matvecs < 1:
        raise ValueError(f"num_matvecs must be positive, got {num_matvecs}")
    bl = _as_blocks(blocks, n, op.device)
    run = open_run(
        checkpoint,
        f"trace/{method}",
        lambda: {
            **op.fingerprint(),
            "num_matvecs": num_matvecs,
            "rtol": rtol,
            "max_matvecs": max_matvecs if adaptive else None,
            "block_size": block_size,
            "blocks": {
                name: [idx.start, idx.stop] if isinstance(idx, slice) else tensor_digest(idx)
                for name, idx in bl.items()
            },
        },
        every=checkpoint_every,
        resume=resume,
    )
    seed, gen = resolve_seed(resolve_resumed_seed(seed, run), op)
    if run is not None:
        run.extra["seed"] = seed

    # How many products the sketch part takes and how many probes follow.
    rank = 0
    if method == "hutch++":
        if adaptive:
            rank = min(max(10, block_size), budget // 3)
            if rank < 1:
                raise ValueError("hutch++ with rtol needs max_matvecs >= 3")
        else:
            if budget < 3:
                raise ValueError(f"hutch++ needs num_matvecs >= 3, got {budget}")
            rank = budget // 3
        if rank >= n:
            raise ValueError(
                f"hutch++ would sketch {rank} >= n={n} directions; for so small an operator "
                "compute the trace exactly, or lower num_matvecs"
            )
        max_probes = budget - 2 * rank
    elif method == "xtrace":
        max_probes = budget // 2
        if adaptive:
            max_probes = min(max_probes, n - 1)  # the cap, not a request
        if max_probes < 2:
            raise ValueError(f"xtrace needs num_matvecs >= 4 (two per probe), got {budget}")
        if max_probes >= n:
            raise ValueError(
                f"xtrace would use {max_probes} >= n={n} probes; for so small an operator "
                "compute the trace exactly, or lower num_matvecs"
            )
    else:
        max_probes = budget

    settings = {
        "method": method,
        "num_matvecs": num_matvecs,
        "rtol": rtol,
        "max_matvecs": max_matvecs if adaptive else None,
        "block_size": block_size,
        "blocks": list(bl),
    }
    est: Any
    converged: bool | None = None
    kinds: dict[str, type[_Estimator]] = {
        "hutchinson": _Hutchinson,
        "hutch++": _HutchPlusPlus,
        "xtrace": _XTrace,
    }
    with (
        guarded(run),
        Recorder(
            op, f"trace ({method})", total=budget, progress=progress, callback=callback
        ) as rec,
    ):
        if run is not None and run.state is not None:
            est = kinds[method].from_state_dict(run.state["estimator"], op, gen, bl)
            rec.load_state_dict(run.state["recorder"])
            gen.set_state(run.state["generator"])
        elif method == "hutchinson":
            est = _Hutchinson(op, gen, bl)
        elif method == "hutch++":
            est = _HutchPlusPlus(op, gen, bl, rank=rank)
        else:
            est = _XTrace(op, gen, bl)
        if run is not None:
            est.on_update = run.dirty
            rec.on_record = run.boundary
            run.bind(
                state=lambda: {"estimator": est.state_dict()},
                snapshot=lambda: {
                    "recorder": rec.state_dict(),
                    "generator": generator_state(gen),
                },
            )
            run.boundary(periodic=False)
        # a resumed run first re-takes the stopping tests of its last recorded block
        resuming = run is not None and run.resumed and est.probes > 0
        while True:
            if resuming:
                resuming = False
                value, err, samples, be, bs = est.summary()
                stop = False
            else:
                b = min(block_size, max_probes - est.probes)
                est.extend(b)
                value, err, samples, be, bs = est.summary()
                stop = rec.record(
                    postfix=f"{value:.4g} +- {err:.2g}",
                    estimate=value,
                    stderr=err,
                    probes=est.probes,
                )
            if adaptive:
                assert rtol is not None
                converged = est.probes >= MIN_PROBES_FOR_RTOL and err <= rtol * abs(value)
                if converged:
                    break
            if stop or est.probes >= max_probes:
                break
        seconds = rec.seconds
        used = rec.matvecs
        history = rec.history
        all_settings = rec.settings(**settings)
    if run is not None:
        run.finish()

    names = list(bl)
    return TraceResult(
        estimate=value,
        stderr=err,
        samples=samples.detach().cpu().numpy(),
        block_estimates=None if be is None else dict(zip(names, be.tolist(), strict=True)),
        block_stderrs=None if bs is None else dict(zip(names, bs.tolist(), strict=True)),
        block_sizes=None if be is None else {k: _block_size(v) for k, v in bl.items()},
        method=method,
        converged=converged,
        num_matvecs=used,
        seconds=seconds,
        history=history,
        seed=seed,
        settings=all_settings,
    )
