"""The three stochastic trace estimators behind `trace`, with per-block traces.

All are built on block products (`matmat`) and grow a block of probes at a time:

- `Hutchinson`: the Girard-Hutchinson estimator (Girard 1989, Hutchinson
  1989) with Rademacher probes, mean of ``z^T H z``.
- `HutchPlusPlus`: Hutch++ (Meyer, Musco, Musco, Woodruff 2021, "Hutch++:
  Optimal stochastic trace estimation", SOSA). A third of the budget finds a
  range basis Q = orth(H S), a third computes tr(Q^T H Q) exactly, the rest
  estimates the trace of the deflated remainder (I - QQ^T) H (I - QQ^T) with
  Hutchinson.
- `XTrace`: XTrace (Epperly, Tropp, Webber 2024, "XTrace: making the most of
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
from collections.abc import Callable, Mapping
from typing import Any

import torch

from hessian_spectra.algorithms._linalg import gaussian, orth, rademacher, work_dtype
from hessian_spectra.operators.base import LinearOperator

#: Rounding errors per column (eps of the work dtype) of the small algebra in the error bar
#: of a captured range.
ROUNDING = 10.0


def leak_tolerance(dtype: torch.dtype, n: int) -> float:
    """||H Q - Q C|| / ||H Q|| below which Q counts as invariant: rounding level of `dtype`.

    100 sqrt(n) eps (an n x n operator formed in floating point is exact to
    about sqrt(n) eps), but at most 0.05: at half precision 100 eps alone
    would be about 1, which any subspace passes.
    """
    return min(100.0 * math.sqrt(n) * float(torch.finfo(dtype).eps), 0.05)


#: (estimate, stderr, samples, block estimates, block stderrs)
Summary = tuple[float, float, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def block_sums(C: torch.Tensor, blocks: Mapping[str, slice | torch.Tensor]) -> torch.Tensor:
    """(num_blocks, b): each block's column sums of the per-coordinate terms C (n, b)."""
    rows = []
    for idx in blocks.values():
        part = C[idx] if isinstance(idx, slice) else C.index_select(0, idx)
        rows.append(part.sum(0))
    return torch.stack(rows) if rows else C.new_zeros((0, C.shape[1]))


def std_err(x: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation (ddof=1) over the last axis over sqrt(count); NaN below 2."""
    m = x.shape[-1]
    if m < 2:
        return torch.full(x.shape[:-1], float("nan"), dtype=x.dtype, device=x.device)
    return x.std(dim=-1, unbiased=True) / math.sqrt(m)


class Estimator:
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
        self.wd = work_dtype(op)
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
    ) -> Estimator:
        """An estimator continuing from `state_dict` (no product is taken)."""
        est = cls.__new__(cls)
        Estimator.__init__(est, op, gen, blocks)
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
        """Hutchinson-type probes so far."""
        raise NotImplementedError

    def extend(self, b: int) -> None:
        """Draw b more probes and take their products (one block product)."""
        raise NotImplementedError

    def summary(self) -> Summary:
        """(estimate, stderr, samples, block estimates, block stderrs)."""
        raise NotImplementedError


class Hutchinson(Estimator):
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
            self.block_samples.append(block_sums(C, self.blocks))

    def summary(self) -> Summary:
        x = torch.cat(self.samples)
        be = bs = None
        if self.blocks:
            xb = torch.cat(self.block_samples, dim=1)
            be, bs = xb.mean(1), std_err(xb)
        return float(x.mean()), float(std_err(x)), x, be, bs


class HutchPlusPlus(Estimator):
    """tr(Q^T H Q) exactly, plus Hutchinson on (I - QQ^T) H (I - QQ^T)."""

    _STATE = ("Q", "lowrank", "block_lowrank", "samples", "block_samples")

    def __init__(self, *args: Any, rank: int) -> None:
        super().__init__(*args)
        S = rademacher(self.op, rank, self.gen)
        self.Q = orth(self.mul(S))
        Z = self.mul(self.Q)
        C = self.Q.T @ Z
        C = (C + C.T) / 2
        self.lowrank = float(torch.trace(C))
        self.block_lowrank: torch.Tensor | None = None
        if self.blocks:
            # diag(2 H P - P H P) with P = QQ^T, per coordinate.
            d = 2 * (self.Q * Z).sum(1) - ((self.Q @ C) * self.Q).sum(1)
            self.block_lowrank = block_sums(d[:, None], self.blocks)[:, 0]
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
            self.block_samples.append(block_sums(C, self.blocks))

    def summary(self) -> Summary:
        x = torch.cat(self.samples)
        be = bs = None
        if self.blocks:
            assert self.block_lowrank is not None
            xb = torch.cat(self.block_samples, dim=1)
            be, bs = self.block_lowrank + xb.mean(1), std_err(xb)
        return self.lowrank + float(x.mean()), float(std_err(x)), x, be, bs


class XTrace(Estimator):
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
        if m and self._rank_deficient(R22, Yb):
            # Y_b lies partly in range(Q): Householder QR made up directions for
            # its null part that need not be orthogonal to Q; refactor it column
            # by column, completing with the probes' own directions.
            Qb, R22 = self._completed_qr(Yp, W, float(torch.linalg.vector_norm(Yb, dim=0).max()))
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

    def _completed_qr(
        self, Yp: torch.Tensor, W: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Yp = Qb R22 with Qb orthonormal and orthogonal to Q, for a rank-deficient Yp.

        Gram-Schmidt (twice) column by column; a column whose remainder is at
        rounding level keeps that remainder's norm as R22[j, j] and gets, as
        q_j, its probe's direction orthogonal to everything before it. Yp must
        already be orthogonal to Q.
        """
        b = Yp.shape[1]
        tol = 1e3 * torch.finfo(self.wd).eps * scale
        Qb = torch.zeros_like(Yp)
        R22 = torch.zeros((b, b), dtype=Yp.dtype, device=Yp.device)
        for j in range(b):
            basis = torch.cat([self.Q, Qb[:, :j]], 1)
            v = Yp[:, j]
            for _ in range(2):
                coef = Qb[:, :j].T @ v
                v = v - Qb[:, :j] @ coef
                R22[:j, j] += coef
            r = torch.linalg.vector_norm(v)
            R22[j, j] = r
            if float(r) > tol:
                Qb[:, j] = v / r
                continue
            u = W[:, j]
            for _ in range(2):
                u = u - basis @ (basis.T @ u)
            Qb[:, j] = u / torch.linalg.vector_norm(u)
        return Qb, R22

    def _rank_deficient(self, R22: torch.Tensor, Yb: torch.Tensor) -> bool:
        """Whether a new block's QR has a diagonal entry at the work dtype's rounding level."""
        d = R22.diagonal().abs()
        scale = float(torch.linalg.vector_norm(Yb, dim=0).max())
        return bool(d.numel()) and bool(d.min() <= 1e3 * torch.finfo(self.wd).eps * scale)

    def _captures_range(self, C: torch.Tensor) -> bool:
        """Whether Y = H Omega lost rank because range(Q) already holds H's range.

        Both must hold, each at rounding level: a diagonal entry of R at the
        rounding level of the small algebra (the work dtype: below it the
        leave-one-out formulas cannot be evaluated, while an R merely
        ill-conditioned by a steeply decaying spectrum or by low-precision
        products leaves them valid), and Q (numerically) invariant,
        ||H Q - Q C|| at the rounding level of the products (the operator's
        dtype) relative to ||H Q||.
        """
        d = self.R.diagonal().abs()
        if not d.numel():
            return False
        if bool(d.min() > 1e3 * torch.finfo(self.wd).eps * d.max()):
            return False
        leak = torch.linalg.matrix_norm(self.Z - self.Q @ C)
        tol = leak_tolerance(self.op.dtype, self.op.shape[0])
        return bool(leak <= tol * torch.linalg.matrix_norm(self.Z))

    def _rounding_error(self) -> float:
        """The error of tr(Q^T H Q) as the trace that rounding allows: the shortcut's stderr.

        Three parts: each entry of Z = H Q carries a relative rounding error of
        eps (of the operator's dtype), moving sum_ij Q_ij Z_ij by up to
        eps sum |Q_ij Z_ij|; the small algebra on m columns (QR, Q^T Z) adds
        about m eps (of the work dtype) of it; and an eigenvalue outside
        range(Q) would show in H Omega with about its own size, so the
        n - m of them are each at most the smallest diagonal entry of R.
        """
        n, m = self.Om.shape
        eps = float(torch.finfo(self.op.dtype).eps)
        eps_wd = float(torch.finfo(self.wd).eps)
        dot = float((self.Q.abs() * self.Z.abs()).sum())
        tail = (n - m) * float(self.R.diagonal().abs().min())
        return (eps + ROUNDING * m * eps_wd) * dot + tail

    def summary(self) -> Summary:
        Q, Z, Om, Y, R = self.Q, self.Z, self.Om, self.Y, self.R
        n, m = Om.shape
        C = Q.T @ Z
        C = (C + C.T) / 2
        trC = torch.trace(C)
        if self._captures_range(C):
            # Y = H Omega has lost rank: range(Q) holds H's whole range (up to
            # rounding), so tr(Q^T H Q) is the trace, within the products'
            # rounding, and no probe is left over.
            err = self._rounding_error()
            x = trC.repeat(m)
            be = bs = None
            if self.blocks:
                d = 2 * (Q * Z).sum(1) - ((Q @ C) * Q).sum(1)
                be = block_sums(d[:, None], self.blocks)[:, 0]
                bs = torch.full_like(be, err)
            return float(trC), err, x, be, bs
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
            be, bs = xb.mean(1), std_err(xb)
        return float(x.mean()), float(std_err(x)), x, be, bs

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
            out.append(block_sums(low + scale[sl] * r * Bh, self.blocks))
        return torch.cat(out, dim=1)


#: method name of `trace` -> its estimator
ESTIMATORS: dict[str, type[Estimator]] = {
    "hutchinson": Hutchinson,
    "hutch++": HutchPlusPlus,
    "xtrace": XTrace,
}

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "HutchPlusPlus",
    "Hutchinson",
    "XTrace",
    "block_sums",
    "leak_tolerance",
]
