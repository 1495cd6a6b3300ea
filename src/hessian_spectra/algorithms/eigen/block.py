"""``eigsh(method="block")``: block Lanczos on `matmat`, with deflation, thick restart and locking.

Block Lanczos (Golub and Underwood 1977; Cullum and Donath 1974) builds an
orthonormal basis of the block Krylov space span{V, H V, H^2 V, ...} of an
(n, b) start block V, in which the projected operator is block tridiagonal.
A block of b starting vectors sees up to b directions of every eigenspace, so
eigenvalues of multiplicity up to b are found with all their copies, which
single-vector Lanczos cannot do. Each step is one block product, which a
Hessian operator computes with one forward pass and one gradient graph per
batch: cheaper per column than b separate products.

Every new block is orthogonalized against the whole basis by classical
Gram-Schmidt applied twice. Its orthonormal basis and coupling come from a thin
SVD, and directions whose singular value is below a rounding-level tolerance
(a rank-deficient block, e.g. an invariant subspace found) are deflated: dropped
with zero coupling and replaced by random vectors orthogonal to the basis, so
the block keeps its size. When the basis is full, a thick restart (Wu and Simon
2000, in block form) keeps the wanted Ritz vectors and locks converged ones.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

from hessian_spectra.algorithms._linalg import gaussian
from hessian_spectra.algorithms._run import RunContext
from hessian_spectra.algorithms.eigen._ritz import (
    ROUNDING_LEVEL,
    EigenProblem,
    RawPairs,
    Solver,
    error_estimates,
    restart_choice,
    restart_keep,
    thresholds,
)
from hessian_spectra.history import (
    ALL_RESIDUALS,
    ALL_RITZ_VALUES,
    BASIS_SIZE,
    BLOCK,
    NUM_CONVERGED,
    RESIDUALS,
    RESTARTS,
    RITZ_VALUES,
)
from hessian_spectra.operators.base import LinearOperator
from hessian_spectra.results import select


class BlockLanczosState:
    """The whole state of a block Lanczos run (checkpoint these attributes to resume).

    The basis buffer ``Q`` (n, capacity + b) is allocated once and laid out as
    [locked vectors | active basis | next block]. With ``m`` active columns and
    the next block R of ``br`` columns, the run keeps the relation
    ``H Q_a = Q_a T + R G`` (up to the locked pairs' residuals), where ``T``
    (m, m) is the projected matrix and ``G`` (br, m) the coupling of R.

    Args:
        op: the symmetric operator.
        V0: (n, b0) starting columns (b0 >= 1); completed with random columns
            to `block_size`, or combined randomly when b0 > block_size.
        block_size: columns per block product.
        capacity: the most locked plus active columns held at once.
        generator: random source for completion and deflation vectors.
    """

    def __init__(
        self,
        op: LinearOperator,
        V0: torch.Tensor | None,
        block_size: int,
        capacity: int,
        generator: torch.Generator,
    ) -> None:
        n = op.shape[0]
        b = max(1, min(int(block_size), n))
        self.op = op
        self.n = n
        self.b = b
        self.capacity = max(min(int(capacity), n), b)
        self.generator = generator
        self.eps = float(torch.finfo(op.dtype).eps)
        self.Q = torch.zeros((n, self.capacity + b), dtype=op.dtype, device=op.device)
        self.T = np.zeros((self.capacity, self.capacity))
        self.G = np.zeros((b, 0))
        self.num_locked = 0
        self.m = 0
        self.br = 0
        self.locked_values = np.empty(0)
        self.locked_residuals = np.empty(0)
        self.num_matvecs = 0
        self.restarts = 0
        self.deflations = 0
        self.anorm = 0.0
        if V0 is None:
            V = gaussian(op, b, generator)
        elif V0.shape[1] > b:
            W = torch.randn((V0.shape[1], b), generator=generator, dtype=torch.float64)
            V = (V0.double() @ W.to(V0.device)).to(op.dtype)
        else:
            V = V0
        R, _ = self._orthonormal_block(V, 0, want=b)
        self.Q[:, : R.shape[1]] = R
        self.br = R.shape[1]

    # ------------------------------------------------------------------ helpers
    @property
    def active(self) -> torch.Tensor:
        o = self.num_locked
        return self.Q[:, o : o + self.m]

    @property
    def locked_basis(self) -> torch.Tensor:
        return self.Q[:, : self.num_locked]

    @property
    def next_block(self) -> torch.Tensor:
        o = self.num_locked + self.m
        return self.Q[:, o : o + self.br]

    @property
    def done(self) -> bool:
        """Whether another block step would overflow the basis."""
        return self.num_locked + self.m + self.br > self.capacity

    def _orthogonalize(self, W: torch.Tensor, upto: int) -> torch.Tensor:
        Qj = self.Q[:, :upto]
        for _ in range(2):
            W = W - Qj @ (Qj.T @ W)
        return W

    def _orthonormal_block(
        self, W: torch.Tensor, upto: int, want: int
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Orthonormal R and coupling B with W ~ R B (B: (r, b_w)), deflating small directions.

        `W` is first orthogonalized against Q[:, :upto]. Directions below the
        rounding tolerance are dropped and R is completed with random columns
        orthogonal to everything (their coupling is zero) up to `want` columns,
        as far as the space allows.
        """
        W = self._orthogonalize(W, upto)
        U, s, Vh = torch.linalg.svd(W.double(), full_matrices=False)
        scale = max(self.anorm, float(s.max()) if s.numel() else 0.0, 1e-300)
        tol = 10 * self.eps * scale * max(1, upto + W.shape[1]) ** 0.5
        r = min(int((s > tol).sum()), want)
        R = U[:, :r].to(self.op.dtype)
        B = (s[:r, None] * Vh[:r]).cpu().numpy()
        if r < W.shape[1] and upto > 0:
            self.deflations += 1
        room = self.n - upto
        fill = min(want, room) - r
        if fill > 0:
            self.Q[:, upto : upto + r] = R
            Z = gaussian(self.op, fill, self.generator)
            for _ in range(2):
                Z, _ = torch.linalg.qr(self._orthogonalize(Z, upto + r))
            R = torch.cat([R, Z], dim=1)
            B = np.vstack([B, np.zeros((fill, W.shape[1]))])
        return R, B

    # ------------------------------------------------------------------ iteration
    def step(self) -> None:
        """One block step: one product of the next block."""
        if self.done:
            raise RuntimeError("the block Lanczos basis is full: restart or stop")
        o, m, br = self.num_locked, self.m, self.br
        Rb = self.next_block
        W = self.op.matmat(Rb)
        self.num_matvecs += br
        A = (Rb.T @ W).double().cpu().numpy()
        A = (A + A.T) / 2
        W = W - Rb @ torch.as_tensor(A, dtype=W.dtype, device=W.device)
        if m:
            W = W - self.active @ torch.as_tensor(self.G.T, dtype=W.dtype, device=W.device)
        end = o + m + br
        want = min(self.b, self.capacity + self.b - end, self.n - end)
        gnorm = float(np.linalg.norm(self.G, 2)) if self.G.size else 0.0
        self.anorm = max(self.anorm, float(np.linalg.norm(A, 2)), gnorm)
        Rn, B = self._orthonormal_block(W, end, want=max(want, 0))
        self.T[m : m + br, m : m + br] = A
        if m:
            self.T[m : m + br, :m] = self.G
            self.T[:m, m : m + br] = self.G.T
        self.m = m + br
        self.Q[:, end : end + Rn.shape[1]] = Rn
        self.br = Rn.shape[1]
        G = np.zeros((self.br, self.m))
        G[:, m : m + br] = B[: self.br]
        self.G = G

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Active Ritz values (ascending), coefficient vectors, and residual norms ||G s||."""
        if self.m == 0:
            return np.empty(0), np.empty((0, 0)), np.empty(0)
        theta, S = scipy.linalg.eigh(self.T[: self.m, : self.m])
        res = np.linalg.norm(self.G @ S, axis=0) if self.br else np.zeros(self.m)
        return theta, S, res

    def restart(self, keep: list[int], lock: list[bool]) -> None:
        """Thick restart: keep the active Ritz vectors `keep`, lock those flagged."""
        theta, S, _ = self.ritz()
        keep_idx = np.asarray(keep, dtype=np.int64)
        lock_mask = np.asarray(lock, dtype=bool)
        o, br = self.num_locked, self.br
        Sk = S[:, keep_idx]
        Y = self.active @ torch.as_tensor(Sk, dtype=self.op.dtype, device=self.op.device)
        R = self.next_block.clone()
        Gk = self.G @ Sk
        nl = int(lock_mask.sum())
        la = keep_idx.size - nl
        if o + nl + la + br > self.capacity:
            raise ValueError("thick restart keeps more vectors than the basis holds")
        lm = torch.as_tensor(lock_mask, device=Y.device)
        self.Q[:, o : o + nl] = Y[:, lm]
        self.Q[:, o + nl : o + nl + la] = Y[:, ~lm]
        self.Q[:, o + nl + la : o + nl + la + br] = R
        self.locked_values = np.concatenate([self.locked_values, theta[keep_idx[lock_mask]]])
        self.locked_residuals = np.concatenate(
            [self.locked_residuals, np.linalg.norm(Gk[:, lock_mask], axis=0)]
        )
        self.num_locked = o + nl
        self.m = la
        self.T[:la, :la] = np.diag(theta[keep_idx[~lock_mask]])
        self.G = Gk[:, ~lock_mask]
        self.restarts += 1

    def orthogonality_loss(self) -> float:
        """max |Q^T Q - I| over the locked and active basis (float64)."""
        cols = self.num_locked + self.m
        if cols == 0:
            return float("nan")
        Q = self.Q[:, :cols].double()
        G = Q.T @ Q
        G.diagonal().sub_(1.0)
        return float(G.abs().max())


def block_lanczos_eigsh(p: EigenProblem, ctx: RunContext) -> RawPairs:
    """Drive `BlockLanczosState` until the k wanted pairs converge (see `eigsh`)."""
    op, k, which, tol = p.op, p.k, p.which, p.tol
    n = op.shape[0]
    state = BlockLanczosState(op, p.v0, p.block_size, p.max_basis, ctx.generator)
    stop_reason = "max_matvecs"
    ortho_loss = 0.0
    while True:
        state.step()
        theta, S, res = state.ritz()
        vals = np.concatenate([state.locked_values, theta])
        resid = np.concatenate([state.locked_residuals, res])
        kk = min(k, vals.size)
        sel = select(vals, which, kk)
        thr, limited, floor = thresholds(vals, tol, op.precision_dtype)
        conv = resid[sel] <= thr[sel]
        nconv = int(conv.sum())
        asc = np.argsort(vals)
        stop = ctx.record(
            {
                RITZ_VALUES: vals[sel],
                # reported no lower than at the end (see rounding_level)
                RESIDUALS: np.maximum(resid[sel], ROUNDING_LEVEL * floor),
                NUM_CONVERGED: nconv,
                ALL_RITZ_VALUES: vals[asc],
                ALL_RESIDUALS: np.maximum(resid[asc], ROUNDING_LEVEL * floor),
                BASIS_SIZE: state.num_locked + state.m,
                BLOCK: state.br,
                RESTARTS: state.restarts,
            },
            postfix=f"{nconv}/{k} converged",
        )
        if kk == k and bool(conv.all()):
            stop_reason = "converged"
            break
        if stop:
            stop_reason = "callback"
            break
        if state.num_matvecs + state.br > p.max_matvecs:
            break
        if state.num_locked + state.m >= n or state.br == 0:
            stop_reason = "exhausted"
            break
        if state.done:
            ortho_loss = max(ortho_loss, state.orthogonality_loss())
            free = state.capacity - state.num_locked - state.br
            keep, lock = restart_choice(vals, resid, thr, which, k, state.num_locked, free, state.b)
            state.restart(keep, lock)
    ortho_loss = max(ortho_loss, state.orthogonality_loss())
    o = state.num_locked
    Sa = torch.as_tensor(S, dtype=op.dtype, device=op.device)
    cols = []
    Y = state.active @ Sa
    for i in sel:
        cols.append(state.locked_basis[:, int(i)] if i < o else Y[:, int(i) - o])
    return RawPairs(
        values=vals[sel],
        vectors=torch.stack(cols, dim=1),
        residuals=resid[sel],
        converged=resid[sel] <= thr[sel],
        precision_limited=limited[sel],
        error_estimates=error_estimates(vals[sel], resid[sel], vals),
        orthogonality_loss=ortho_loss,
        stop_reason=stop_reason,
        restarts=state.restarts,
        floor=floor,
    )


def _min_matvecs(k: int, n: int, block_size: int) -> int:
    """Whole blocks covering k columns."""
    b = min(block_size, n)
    return min(n, b * math.ceil(k / b))


def _default_max_basis(k: int, n: int, block_size: int) -> int:
    """max(3k, k + 4 block_size), at most n."""
    return min(n, max(3 * k, k + 4 * block_size))


def _memory(
    n: int, k: int, capacity: int, block_size: int, max_matvecs: int, item: int, basis_item: int
) -> tuple[int, int]:
    """The basis (n, cap + b) in the operator's dtype; beside it the vectors a restart keeps
    (twice) or the Ritz vectors of the whole active basis, a block's product and its SVD in
    float64, and the dense projected matrix with its eigenvectors."""
    b = max(1, min(block_size, n))
    cap = max(min(capacity, n), b)
    basis = n * (cap + b) * item
    vectors = max(2 * n * restart_keep(k, cap), n * (cap + k)) * item
    return basis, vectors + n * b * (3 * item + 3 * 8) + 3 * cap * cap * 8


SOLVER = Solver(
    block_lanczos_eigsh,
    min_matvecs=_min_matvecs,
    default_max_basis=_default_max_basis,
    min_basis=lambda k, block_size: k + 2 * block_size,
    memory=_memory,
    lower_memory=(
        "lower max_basis (now {max_basis}: the basis holds n x (max_basis + block_size) "
        "numbers) or block_size (now {block_size}), or ask for fewer pairs (k)"
    ),
)
