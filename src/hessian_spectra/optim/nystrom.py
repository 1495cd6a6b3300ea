"""The Nystrom preconditioner of SketchySGD, usable by any training loop.

A rank-r randomized Nystrom approximation of a positive semidefinite curvature
operator H (`hessian_spectra.algorithms.sketch` with ``kind="nystrom"``),
``H_nys = U Lambda U^T``, gives the preconditioner

    P = U (Lambda + rho I) U^T + rho (I - U U^T)

(Frangella, Tropp, Udell 2023, "Randomized Nystrom preconditioning", SIAM J.
Matrix Anal. Appl.; Frangella, Rathore, Zhao, Udell 2024, "SketchySGD", SIAM J.
Math. Data Sci.). It is H_nys + rho I: the top r directions are scaled by
their own curvature, the rest by rho. Its inverse, square root and inverse
square root cost two thin products with U, and ``P^-1/2 H P^-1/2`` is an
operator like any other (`preconditioned`), whose largest eigenvalue sets a
step size.

For an indefinite H (a network away from a minimum) the sketch is taken with
no shift: directions of negative curvature are dropped and only the positive
part is kept (each kept eigenvalue is clamped at zero), which is what a
preconditioner needs; rho keeps P positive definite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from hessian_spectra.algorithms import sketch
from hessian_spectra.operators import LinearOperator


class NystromPreconditioner:
    """``P = U (Lambda + rho) U^T + rho (I - U U^T)`` from a low-rank ``U Lambda U^T``.

    Build it from an operator with `from_operator` (a Nystrom sketch, ``rank``
    products), or from eigenpairs you already have.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> H = torch.diag(torch.tensor([100.0, 10.0, 1.0, 0.1], dtype=torch.float64))
        >>> P = hs.optim.NystromPreconditioner.from_operator(
        ...     hs.DenseOperator(H), rank=4, rho=1e-12, seed=0)
        >>> g = torch.tensor([100.0, 10.0, 1.0, 0.1], dtype=torch.float64)
        >>> [round(x, 6) for x in P.solve(g).tolist()]  # the Newton direction H^-1 g
        [1.0, 1.0, 1.0, 1.0]

    Args:
        eigenvalues: (r,) the approximation's eigenvalues (non-negative).
        eigenvectors: (n, r) orthonormal columns U (zero columns are allowed and ignored).
        rho: the regularization, > 0.

    Attributes:
        eigenvalues, eigenvectors, rho: as given (eigenvalues in U's dtype).
        num_matvecs: products the sketch took (0 when built from eigenpairs).
    """

    def __init__(self, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, rho: float) -> None:
        U = torch.as_tensor(eigenvectors)
        lam = torch.as_tensor(eigenvalues, dtype=U.dtype, device=U.device)
        if U.ndim != 2 or lam.ndim != 1 or lam.shape[0] != U.shape[1]:
            raise ValueError(
                f"expected eigenvalues (r,) and eigenvectors (n, r), got {tuple(lam.shape)} "
                f"and {tuple(U.shape)}"
            )
        rho = float(rho)
        if not (rho > 0 and np.isfinite(rho)):
            raise ValueError(f"rho must be positive and finite, got {rho}")
        if bool((lam < 0).any()):
            raise ValueError(
                "a preconditioner needs non-negative eigenvalues; clamp them at zero or "
                "sketch a positive semidefinite operator"
            )
        self.eigenvalues = lam
        self.eigenvectors = U
        self.rho = rho
        self.num_matvecs = 0
        # U has n non-zero (orthonormal) columns: P = U (Lambda + rho) U^T exactly
        self._full = int((torch.linalg.vector_norm(U, dim=0) > 0.5).sum()) >= U.shape[0]

    @classmethod
    def from_operator(
        cls,
        op: LinearOperator,
        rank: int = 10,
        *,
        rho: float | None = None,
        seed: int | None = None,
    ) -> NystromPreconditioner:
        """Sketch `op` (``min(rank, n)`` products) and build the preconditioner.

        Args:
            op: a symmetric curvature operator (a `HessianOperator`, a GGN, ...).
            rank: the sketch size r.
            rho: the regularization; None takes the sketch's smallest eigenvalue
                lambda_r (the tail is then treated as if its curvature were
                lambda_r, the choice of Nystrom PCG), but at least
                ``sqrt(n) eps lambda_1``: the sketch's own stabilizing shift
                (Tropp et al. 2017), below which it sees rounding noise.
            seed: the sketch's seed (drawn when None).
        """
        rank = int(rank)
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        size = min(rank, op.shape[0])
        sk = sketch(op, size, kind="nystrom", power_steps=0, shift=0.0, seed=seed)  # rank HVPs
        assert sk.eigenvectors is not None  # the Nystrom sketch returns them
        U = sk.eigenvectors.to(op.dtype)
        lam = torch.as_tensor(np.clip(sk.eigenvalues, 0.0, None), dtype=U.dtype, device=U.device)
        if rho is None:
            rho = default_rho(lam, op.shape[0], op.dtype)
        pre = cls(lam, U, rho)
        pre.num_matvecs = int(sk.num_matvecs)
        return pre

    # ------------------------------------------------------------------ shape
    @property
    def rank(self) -> int:
        """The number of columns r of U."""
        return int(self.eigenvectors.shape[1])

    @property
    def n(self) -> int:
        """The dimension n."""
        return int(self.eigenvectors.shape[0])

    def with_shift(self, shift: float) -> NystromPreconditioner:
        """The preconditioner of ``H + shift I``: the same U, Lambda + shift and rho + shift."""
        out = NystromPreconditioner(self.eigenvalues + shift, self.eigenvectors, self.rho + shift)
        out.num_matvecs = self.num_matvecs
        return out

    # ------------------------------------------------------------------ products
    def _power(self, x: torch.Tensor, exponent: float) -> torch.Tensor:
        """P^exponent x for a vector (n,) or a block (n, b)."""
        U = self.eigenvectors
        if x.shape[0] != self.n:
            raise ValueError(f"expected a tensor with {self.n} rows, got {tuple(x.shape)}")
        xv = x.to(U.dtype)
        c = U.T @ xv
        top = (self.eigenvalues + self.rho) ** exponent
        scale = top[:, None] if xv.ndim == 2 else top
        out = U @ (c * scale)
        if not self._full:  # when U spans everything, the complement is rounding noise
            out = out + (self.rho**exponent) * (xv - U @ c)
        return out.to(x.dtype)

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        """``P^-1 g``: the preconditioned direction (a vector (n,) or a block (n, b))."""
        return self._power(g, -1.0)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """``P v``."""
        return self._power(v, 1.0)

    def inv_sqrt(self, v: torch.Tensor) -> torch.Tensor:
        """``P^-1/2 v``."""
        return self._power(v, -0.5)

    def approximation(self, v: torch.Tensor) -> torch.Tensor:
        """``U Lambda U^T v``: the low-rank approximation of the curvature, applied to v."""
        U = self.eigenvectors
        c = U.T @ v.to(U.dtype)
        lam = self.eigenvalues[:, None] if v.ndim == 2 else self.eigenvalues
        return (U @ (c * lam)).to(v.dtype)

    def preconditioned(self, op: LinearOperator) -> LinearOperator:
        """The operator ``P^-1/2 op P^-1/2``; its largest eigenvalue sets a safe step size."""
        if op.shape[0] != self.n:
            raise ValueError(
                f"the operator has n={op.shape[0]} but the preconditioner n={self.n}; "
                "build both over the same parameters"
            )
        return _Preconditioned(op, self)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers that `from_state_dict` rebuilds it from."""
        return {
            "eigenvalues": self.eigenvalues.detach().clone(),
            "eigenvectors": self.eigenvectors.detach().clone(),
            "rho": self.rho,
            "num_matvecs": self.num_matvecs,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> NystromPreconditioner:
        """The preconditioner `state_dict` describes."""
        pre = cls(state["eigenvalues"], state["eigenvectors"], float(state["rho"]))
        pre.num_matvecs = int(state.get("num_matvecs", 0))
        return pre

    def __repr__(self) -> str:
        top = float(self.eigenvalues.max()) if self.rank else float("nan")
        return (
            f"NystromPreconditioner(n={self.n}, rank={self.rank}, rho={self.rho:.3g}, "
            f"top={top:.3g})"
        )


def default_rho(eigenvalues: torch.Tensor, n: int, dtype: torch.dtype) -> float:
    """lambda_r of the sketch, at least ``sqrt(n) eps lambda_1`` (and positive)."""
    lam = eigenvalues[eigenvalues > 0]
    if lam.numel() == 0:
        return float(torch.finfo(dtype).tiny) ** 0.5
    top, bottom = float(lam.max()), float(lam.min())
    return max(bottom, math.sqrt(n) * float(torch.finfo(dtype).eps) * top)


class _Preconditioned(LinearOperator):
    """``P^-1/2 H P^-1/2`` for a `NystromPreconditioner` P; products count on H too.

    Symmetric by construction; its products carry H's rounding amplified by P's
    condition number, so the generic symmetry check (tuned to one product's
    rounding) is left to H itself.
    """

    check_symmetry = False

    def __init__(self, op: LinearOperator, pre: NystromPreconditioner) -> None:
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op = op
        self.pre = pre

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        W = self.pre.inv_sqrt(V)
        return self.pre.inv_sqrt(self.op.matmat(W))


__all__ = ["NystromPreconditioner", "default_rho"]
