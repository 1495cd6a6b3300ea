"""The Lanczos kernel shared by `eigsh`, `density` and the experiments.

Lanczos (1950) builds an orthonormal basis Q of the Krylov space
span{v0, H v0, ..., H^{m-1} v0} in which Q^T H Q = T is tridiagonal. In
floating point the three-term recurrence loses orthogonality as soon as a Ritz
value converges, and copies ("ghosts") of converged eigenvalues appear
(Paige 1971). With ``reorth="full"`` every new vector is orthogonalized against
the whole basis by classical Gram-Schmidt, applied twice when the first pass
cancels much of the vector ("twice is enough", Giraud, Langou, Rozloznik
2005; the test of Daniel, Gragg, Kaufman and Stewart 1976), which keeps Q
orthonormal to working precision. ``reorth="none"`` is the plain
recurrence, kept to show the ghosts.

On breakdown (beta below a tolerance: an invariant subspace was found) the
process continues with a random vector orthogonal to the basis, so the
tridiagonal matrix becomes block diagonal and the run goes on to find more of
the spectrum.

`ritz_extremes` and `lowest_eigenvalue_estimate` run a few steps from a random
start for cheap estimates of the ends of the spectrum (the spectral shifts of
power iteration, RQI and the Nystrom sketch).

`LanczosProcess.restart` is the thick restart of Wu and Simon (2000): when the
basis is full, chosen Ritz vectors and the next Lanczos vector replace it, the
projected matrix becomes an arrowhead followed by a tridiagonal (solved with a
dense symmetric eigensolver), and converged Ritz vectors may be locked: kept in
the basis for orthogonalization but removed from the projected matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch

from hessian_spectra.algorithms._linalg import gaussian
from hessian_spectra.operators.base import LinearOperator

Reorth = Literal["full", "none"]

#: Lanczos steps (= products) of `ritz_extremes` by default.
BOUND_STEPS = 10
#: A Gram-Schmidt pass that keeps more than this share of a vector's norm needs no repeat.
_TWICE_IS_ENOUGH = 0.5**0.5


def tridiagonal_eigh(
    alpha: np.ndarray, beta: np.ndarray, eigvals_only: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal (alpha, beta).

    `beta` holds the m-1 off-diagonal entries. Uses LAPACK's tridiagonal solver
    (SciPy `eigh_tridiagonal`), never a general eigensolver.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.size == 1:
        return alpha.copy(), (None if eigvals_only else np.ones((1, 1)))
    if eigvals_only:
        return scipy.linalg.eigh_tridiagonal(alpha, beta, eigvals_only=True), None
    w, S = scipy.linalg.eigh_tridiagonal(alpha, beta)
    return w, S


@dataclass
class LanczosDecomposition:
    """What `lanczos` returns: H Q = Q T + beta_m q_{m+1} e_m^T.

    Attributes:
        alpha: (m,) diagonal of T, float64.
        beta: (m,) off-diagonals; beta[:-1] are T's off-diagonal entries and
            beta[-1] = beta_m is the norm of the residual after the last step.
            A zero entry marks a breakdown (restart with a random vector).
        basis: (n, m) orthonormal Lanczos vectors, or None when not stored.
        next_vector: q_{m+1} (unit norm), or None when not stored.
        num_matvecs: products used.
        breakdowns: the steps at which an invariant subspace was found.
        orthogonality_loss: max |Q^T Q - I| (NaN when the basis is not stored).
    """

    alpha: np.ndarray
    beta: np.ndarray
    basis: torch.Tensor | None
    next_vector: torch.Tensor | None
    num_matvecs: int
    breakdowns: list[int] = field(default_factory=list)
    orthogonality_loss: float = float("nan")

    @property
    def num_steps(self) -> int:
        return int(self.alpha.size)

    def ritz(self, eigvals_only: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Ritz values (ascending) and the eigenvectors S of T."""
        return tridiagonal_eigh(self.alpha, self.beta[:-1], eigvals_only)


class LanczosProcess:
    """One Lanczos run advanced a step (one product) at a time.

    `eigsh` drives it step by step to test convergence at no product cost;
    `lanczos` runs it for a fixed number of steps.

    All of the run's state lives here (basis, coefficients, locked pairs,
    product count; the generator belongs to the caller): `state_dict` and
    `load_state_dict` checkpoint and resume the run. The basis buffer ``Q`` is
    allocated once, (n, max_steps + 1), laid out as
    [locked vectors | active basis | next vector].

    The basis may live on another device than the operator (``basis_device``,
    e.g. the CPU while the operator runs on a GPU) and in a lower precision
    (``basis_dtype``, e.g. float32 under a float64 operator): the recurrence and
    the last two vectors stay in the operator's dtype and device, the stored
    vectors are rounded to ``basis_dtype`` and upcast in chunks when used. The
    basis is then orthonormal only to the basis precision (its
    `orthogonality_loss` is about that dtype's eps), which bounds the accuracy
    of the Ritz pairs to about eps(basis_dtype) * ||H||.

    Args:
        op: the symmetric operator.
        v0: (n,) starting vector (normalized here; must be non-zero).
        max_steps: the most basis vectors held at once, locked ones included
            (sizes the basis); without restarts, the most steps.
        reorth: "full" (classical Gram-Schmidt against the whole basis, twice when
            needed) or "none".
        generator: random source for restart vectors after a breakdown.
        store_basis: keep the basis (needed for "full" and for Ritz vectors).
        basis_device: where the basis is kept (default: the operator's device).
        basis_dtype: the basis's floating dtype (default: the operator's).
    """

    # columns of the basis upcast at once when it is kept in another dtype
    _CHUNK_ELEMENTS = 2**22

    def __init__(
        self,
        op: LinearOperator,
        v0: torch.Tensor,
        max_steps: int,
        *,
        reorth: Reorth = "full",
        generator: torch.Generator | None = None,
        store_basis: bool = True,
        basis_device: torch.device | str | None = None,
        basis_dtype: torch.dtype | None = None,
    ) -> None:
        if reorth not in ("full", "none"):
            raise ValueError(f"reorth must be 'full' or 'none', got {reorth!r}")
        if reorth == "full" and not store_basis:
            raise ValueError("full reorthogonalization needs the basis: set store_basis=True")
        n = op.shape[0]
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        max_steps = min(int(max_steps), n)
        if not isinstance(v0, torch.Tensor) or v0.shape != (n,):
            shape = tuple(v0.shape) if isinstance(v0, torch.Tensor) else type(v0).__name__
            raise ValueError(f"v0 must be a tensor of shape ({n},), got {shape}")
        v0 = v0.to(dtype=op.dtype, device=op.device)
        norm = float(torch.linalg.vector_norm(v0.double()))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("v0 must be a finite, non-zero vector")
        self.op = op
        self.reorth = reorth
        self.max_steps = max_steps
        self.generator = generator
        self.store_basis = store_basis
        self._eps = torch.finfo(op.dtype).eps
        self.alpha: list[float] = []
        self.beta: list[float] = []
        self.breakdowns: list[int] = []
        self.num_matvecs = 0
        self._anorm = 0.0
        # Thick restart state: locked Ritz pairs (at the front of Q, outside the
        # projected matrix) and the couplings of the kept Ritz vectors to the
        # vector that follows them (the arrowhead), None before any restart.
        self.num_locked = 0
        self.locked_values = np.empty(0)
        self.locked_residuals = np.empty(0)
        self.restarts = 0
        self._arrow: np.ndarray | None = None
        # called right before the step updates the state (after its product):
        # a checkpoint marks the state unsavable until the step is recorded
        self.on_update: Callable[[], None] | None = None
        self.basis_device = torch.device(basis_device) if basis_device is not None else op.device
        self.basis_dtype = basis_dtype if basis_dtype is not None else op.dtype
        if not self.basis_dtype.is_floating_point:
            raise ValueError(f"basis_dtype must be a floating dtype, got {self.basis_dtype}")
        self._same_layout = self.basis_dtype == op.dtype and self.basis_device == op.device
        q = v0 / norm
        if store_basis:
            self.Q = torch.empty(
                (n, max_steps + 1), dtype=self.basis_dtype, device=self.basis_device
            )
            self.Q[:, 0] = q
        self._q = q
        self._q_prev: torch.Tensor | None = None

    @property
    def num_steps(self) -> int:
        """Columns of the active basis (the steps taken, when never restarted)."""
        return len(self.alpha)

    @property
    def done(self) -> bool:
        """Whether the basis buffer is full (restart or stop)."""
        return self.num_locked + self.num_steps >= self.max_steps

    @property
    def restarted(self) -> bool:
        """Whether the projected matrix is no longer tridiagonal (after a thick restart)."""
        return self._arrow is not None

    @property
    def basis_bytes(self) -> int:
        """Bytes held by the basis buffer (0 when the basis is not stored)."""
        if not self.store_basis:
            return 0
        return int(self.Q.numel() * self.Q.element_size())

    def _row_chunks(self, cols: int) -> list[slice]:
        n = self.op.shape[0]
        rows = max(1, self._CHUNK_ELEMENTS // max(1, cols))
        return [slice(r, min(n, r + rows)) for r in range(0, n, rows)]

    def _project(self, w: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Q[:, lo:hi]^T w for (n,) or (n, c) w, in the operator's dtype and device."""
        Qj = self.Q[:, lo:hi]
        if self._same_layout:
            return Qj.T @ w
        wb = w.to(self.basis_device)
        if self.basis_dtype == self.op.dtype:
            return (Qj.T @ wb).to(self.op.device)
        out = None
        for r in self._row_chunks(hi - lo):
            part = Qj[r].to(self.op.dtype).T @ wb[r]
            out = part if out is None else out + part
        assert out is not None
        return out.to(self.op.device)

    def _combine(self, c: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Q[:, lo:hi] @ c for (k,) or (k, c) coefficients, in the operator's dtype and device."""
        Qj = self.Q[:, lo:hi]
        if self._same_layout:
            return Qj @ c
        cb = c.to(device=self.basis_device, dtype=self.op.dtype)
        if self.basis_dtype == self.op.dtype:
            return (Qj @ cb).to(self.op.device)
        out = torch.empty(
            (Qj.shape[0], *cb.shape[1:]), dtype=self.op.dtype, device=self.basis_device
        )
        for r in self._row_chunks(hi - lo):
            out[r] = Qj[r].to(self.op.dtype) @ cb
        return out.to(self.op.device)

    def combine(self, S: np.ndarray | torch.Tensor, *, locked: bool = False) -> torch.Tensor:
        """Basis @ S (the Ritz vectors of coefficients S), in the operator's dtype and device.

        Args:
            S: (m, c) coefficients over the active basis (or over the locked
                vectors with ``locked=True``).
        """
        if not self.store_basis:
            raise RuntimeError("this process does not store its basis (store_basis=False)")
        o = self.num_locked
        lo, hi = (0, o) if locked else (o, o + self.num_steps)
        St = torch.as_tensor(S, dtype=self.op.dtype, device=self.op.device)
        return self._combine(St, lo, hi)

    def _orthogonalize(self, w: torch.Tensor, upto: int) -> torch.Tensor:
        """Classical Gram-Schmidt against Q[:, :upto]; a second pass only when needed.

        The second pass ("twice is enough") runs when the first removed more
        than 1 - 1/sqrt(2) of w's norm (the criterion of Daniel, Gragg,
        Kaufman and Stewart 1976), the only case in which one pass can leave
        w measurably non-orthogonal. Each pass reads the whole basis, the
        cost of a Lanczos step besides its product, and most steps need one.
        """
        before = float(torch.linalg.vector_norm(w))
        for second in (False, True):
            if self._same_layout:
                Qj = self.Q[:, :upto]
                w = w - Qj @ (Qj.T @ w)
            else:
                w = w - self._combine(self._project(w, 0, upto), 0, upto)
            if second or float(torch.linalg.vector_norm(w)) > before * _TWICE_IS_ENOUGH:
                break
        return w

    def _random_orthogonal(self, upto: int) -> torch.Tensor:
        n = self.op.shape[0]
        r = torch.randn(n, generator=self.generator, dtype=torch.float64).to(
            dtype=self.op.dtype, device=self.op.device
        )
        if self.store_basis:
            r = self._orthogonalize(r, upto)
        else:
            r = r - self._q * torch.dot(self._q, r)
        return r / torch.linalg.vector_norm(r)

    def step(self) -> None:
        """Take one Lanczos step (one operator product)."""
        if self.done:
            raise RuntimeError(f"Lanczos process already took its {self.max_steps} steps")
        j = self.num_steps
        o = self.num_locked
        q = self._q
        w = self.op.matvec(q)
        if self.on_update is not None:
            self.on_update()
        self.num_matvecs += 1
        a = float(torch.dot(q.double(), w.double()))
        w = w - a * q
        if self._arrow is not None and j == self._arrow.size:
            # first step after a thick restart: q is coupled to every kept Ritz vector
            arrow = torch.as_tensor(self._arrow, dtype=w.dtype, device=w.device)
            w = w - self._combine(arrow, o, o + j)
        elif self._q_prev is not None:
            w = w - self.beta[-1] * self._q_prev
        if self.reorth == "full":
            w = self._orthogonalize(w, o + j + 1)
        b = float(torch.linalg.vector_norm(w.double()))
        prev_b = self.beta[-1] if self.beta else 0.0
        self._anorm = max(self._anorm, (a * a + b * b + prev_b * prev_b) ** 0.5)
        self.alpha.append(a)
        breakdown = b <= 10 * self._eps * max(self._anorm, 1e-300) * max(j + 1, 1) ** 0.5
        if breakdown and o + j + 1 < self.op.shape[0]:
            self.breakdowns.append(j)
            self.beta.append(0.0)
            q_next = self._random_orthogonal(o + j + 1)
        else:
            self.beta.append(b)
            q_next = w / b if b > 0 else w
        self._q_prev = q
        self._q = q_next
        if self.store_basis:
            self.Q[:, o + j + 1] = q_next

    @property
    def basis(self) -> torch.Tensor:
        """The (n, m) active Lanczos vectors (all of them, when never restarted)."""
        if not self.store_basis:
            raise RuntimeError("this process does not store its basis (store_basis=False)")
        o = self.num_locked
        return self.Q[:, o : o + self.num_steps]

    @property
    def locked_basis(self) -> torch.Tensor:
        """The (n, l) locked Ritz vectors (empty when nothing was locked)."""
        return self.Q[:, : self.num_locked]

    @property
    def next_vector(self) -> torch.Tensor:
        """q_{m+1}: the unit vector the next step would multiply."""
        return self._q

    def tridiagonal(self) -> tuple[np.ndarray, np.ndarray]:
        """(alpha (m,), off-diagonal (m-1,)) of T, float64."""
        if self.restarted:
            raise RuntimeError(
                "after a thick restart the projected matrix is an arrowhead, not tridiagonal: "
                "use projected_matrix()"
            )
        return np.array(self.alpha), np.array(self.beta[:-1])

    def projected_matrix(self) -> np.ndarray:
        """The dense (m, m) projection of the operator on the active basis, float64."""
        m = self.num_steps
        T = np.diag(np.asarray(self.alpha, dtype=np.float64))
        if m > 1:
            off = np.asarray(self.beta[: m - 1], dtype=np.float64)
            idx = np.arange(m - 1)
            T[idx, idx + 1] = off
            T[idx + 1, idx] = off
        if self._arrow is not None and m > self._arrow.size:
            l = self._arrow.size
            T[:l, l] = self._arrow
            T[l, :l] = self._arrow
        return T

    def _coupling(self) -> np.ndarray:
        """c with H Q_active = Q_active T + q_next c^T (up to locked-pair residuals)."""
        m = self.num_steps
        if self._arrow is not None and m == self._arrow.size:
            return self._arrow.copy()
        c = np.zeros(m)
        if m:
            c[-1] = self.beta[-1]
        return c

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), eigenvectors S of T, and residual norms beta_m |S[m-1, i]|.

        The residual norms are those of the Ritz pairs, exact in exact arithmetic
        (and accurate with full reorthogonalization), computed at no product cost.
        Locked pairs are not included (see `locked_values`). After a thick restart
        the projected matrix is dense and solved by `scipy.linalg.eigh`.
        """
        m = self.num_steps
        if m == 0:
            return np.empty(0), np.empty((0, 0)), np.empty(0)
        if not self.restarted:
            a, b = self.tridiagonal()
            theta, S = tridiagonal_eigh(a, b)
            assert S is not None
            res = abs(self.beta[-1]) * np.abs(S[-1, :])
            return theta, S, res
        theta, S = scipy.linalg.eigh(self.projected_matrix())
        res = np.abs(S.T @ self._coupling())
        return theta, S, res

    def restart(
        self, keep: np.ndarray | list[int], lock: np.ndarray | list[bool] | None = None
    ) -> None:
        """Thick restart: keep the Ritz vectors `keep` and the next vector; lock some of them.

        Args:
            keep: indices into the ascending Ritz values of `ritz()` to keep.
            lock: for each kept index, whether to lock it: a locked Ritz vector
                stays in the basis (new vectors are orthogonalized against it)
                but leaves the projected matrix; its value and residual estimate
                are frozen in `locked_values` and `locked_residuals`. Lock only
                converged pairs: dropping the coupling perturbs the projected
                problem by the locked pair's residual.
        """
        if self.reorth != "full" or not self.store_basis:
            raise RuntimeError("a thick restart needs reorth='full' and the stored basis")
        keep_idx = np.asarray(keep, dtype=np.int64).reshape(-1)
        lock_mask = (
            np.zeros(keep_idx.size, dtype=bool)
            if lock is None
            else np.asarray(lock, dtype=bool).reshape(-1)
        )
        m, o = self.num_steps, self.num_locked
        if lock_mask.size != keep_idx.size:
            raise ValueError(f"lock has {lock_mask.size} entries for {keep_idx.size} kept indices")
        if keep_idx.size and (keep_idx.min() < 0 or keep_idx.max() >= m):
            raise ValueError(f"keep holds indices outside 0..{m - 1}")
        if np.unique(keep_idx).size != keep_idx.size:
            raise ValueError("keep holds repeated indices")
        if o + keep_idx.size >= self.max_steps:
            raise ValueError(
                f"keeping {keep_idx.size} vectors beside {o} locked ones leaves no room in a "
                f"basis of {self.max_steps}: keep fewer"
            )
        if self.on_update is not None:
            self.on_update()
        theta, S, _ = self.ritz()
        Sk = S[:, keep_idx]
        coup = Sk.T @ self._coupling()
        Y = self.combine(Sk).to(device=self.basis_device, dtype=self.basis_dtype)
        q_next = self._q.clone()
        nl = int(lock_mask.sum())
        la = keep_idx.size - nl
        self.Q[:, o : o + nl] = Y[:, torch.as_tensor(lock_mask, device=Y.device)]
        self.Q[:, o + nl : o + nl + la] = Y[:, torch.as_tensor(~lock_mask, device=Y.device)]
        self.Q[:, o + nl + la] = q_next
        self.locked_values = np.concatenate([self.locked_values, theta[keep_idx[lock_mask]]])
        self.locked_residuals = np.concatenate([self.locked_residuals, np.abs(coup[lock_mask])])
        self.num_locked = o + nl
        self.alpha = [float(x) for x in theta[keep_idx[~lock_mask]]]
        self.beta = [0.0] * la
        self._arrow = coup[~lock_mask].copy() if la else None
        self._q = q_next
        self._q_prev = None
        self.restarts += 1

    def state_dict(self) -> dict[str, Any]:
        """The whole run as tensors, numbers and lists (for a checkpoint).

        The basis buffer is stored as it is (no copy is made, so no extra memory);
        columns past the next vector hold no data.
        """
        return {
            "n": self.op.shape[0],
            "max_steps": self.max_steps,
            "reorth": self.reorth,
            "Q": self.Q if self.store_basis else None,
            "q": self._q,
            "q_prev": self._q_prev,
            "alpha": list(self.alpha),
            "beta": list(self.beta),
            "breakdowns": list(self.breakdowns),
            "num_matvecs": self.num_matvecs,
            "anorm": self._anorm,
            "num_locked": self.num_locked,
            "locked_values": torch.from_numpy(np.array(self.locked_values, dtype=np.float64)),
            "locked_residuals": torch.from_numpy(np.array(self.locked_residuals, dtype=np.float64)),
            "restarts": self.restarts,
            "arrow": None if self._arrow is None else torch.from_numpy(self._arrow.copy()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the run saved by `state_dict` (same operator size and max_steps)."""
        n = self.op.shape[0]
        if int(state["n"]) != n or int(state["max_steps"]) != self.max_steps:
            raise ValueError(
                f"the saved Lanczos run has n={state['n']}, max_steps={state['max_steps']}; "
                f"this one n={n}, max_steps={self.max_steps}"
            )
        if state["reorth"] != self.reorth:
            raise ValueError(f"the saved Lanczos run used reorth={state['reorth']!r}")
        if self.store_basis:
            if state["Q"] is None:
                raise ValueError("the saved Lanczos run has no basis")
            self.Q.copy_(state["Q"])
        dev, dt = self.op.device, self.op.dtype
        self._q = state["q"].to(device=dev, dtype=dt)
        qp = state["q_prev"]
        self._q_prev = None if qp is None else qp.to(device=dev, dtype=dt)
        self.alpha = [float(x) for x in state["alpha"]]
        self.beta = [float(x) for x in state["beta"]]
        self.breakdowns = [int(x) for x in state["breakdowns"]]
        self.num_matvecs = int(state["num_matvecs"])
        self._anorm = float(state["anorm"])
        self.num_locked = int(state["num_locked"])
        self.locked_values = state["locked_values"].numpy().copy()
        self.locked_residuals = state["locked_residuals"].numpy().copy()
        self.restarts = int(state["restarts"])
        arrow = state["arrow"]
        self._arrow = None if arrow is None else arrow.numpy().copy()

    def orthogonality_loss(self) -> float:
        """max |Q^T Q - I| of the stored basis, locked vectors included (float64)."""
        if not self.store_basis or self.num_locked + self.num_steps == 0:
            return float("nan")
        m = self.num_locked + self.num_steps
        G = torch.zeros((m, m), dtype=torch.float64, device=self.basis_device)
        for rows in self._row_chunks(m):  # float64 a chunk of rows at a time, not a basis copy
            Qr = self.Q[rows, :m].double()
            G += Qr.T @ Qr
        G.diagonal().sub_(1.0)
        return float(G.abs().max())

    def decomposition(self) -> LanczosDecomposition:
        """The run as a `LanczosDecomposition` (only before any thick restart)."""
        if self.restarted or self.num_locked:
            raise RuntimeError(
                "a restarted process has no tridiagonal decomposition; read its Ritz pairs "
                "with ritz() and locked_values"
            )
        return LanczosDecomposition(
            alpha=np.array(self.alpha),
            beta=np.array(self.beta),
            basis=(
                self.basis.to(device=self.op.device, dtype=self.op.dtype, copy=True)
                if self.store_basis
                else None
            ),
            next_vector=self._q.clone(),
            num_matvecs=self.num_matvecs,
            breakdowns=list(self.breakdowns),
            orthogonality_loss=self.orthogonality_loss(),
        )


def lanczos(
    op: LinearOperator,
    v0: torch.Tensor,
    num_steps: int,
    reorth: Reorth = "full",
    *,
    generator: torch.Generator | None = None,
    store_basis: bool = True,
    callback: Callable[[LanczosProcess], bool | None] | None = None,
) -> LanczosDecomposition:
    """Run `num_steps` Lanczos steps from `v0`.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> op = hs.DenseOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
        >>> dec = hs.lanczos(op, torch.ones(100, dtype=torch.float64), 10)
        >>> Q = dec.basis  # orthonormal, and Q^T H Q is the tridiagonal matrix
        >>> bool(torch.allclose(Q.T @ Q, torch.eye(10, dtype=torch.float64), atol=1e-12))
        True

    Args:
        op: a symmetric `LinearOperator`.
        v0: (n,) non-zero starting vector.
        num_steps: steps (= operator products); at most n.
        reorth: "full" (default; classical Gram-Schmidt, twice when needed) or "none" (the
            plain three-term recurrence, which produces ghost eigenvalues).
        generator: random source for restart vectors after a breakdown.
        store_basis: keep the basis (always for "full"); "none" may drop it
            to save memory when only the tridiagonal matrix is needed.
        callback: called with the process after each step; returning True stops early.

    Returns:
        A `LanczosDecomposition` (tridiagonal coefficients, basis, diagnostics).
    """
    proc = LanczosProcess(
        op, v0, num_steps, reorth=reorth, generator=generator, store_basis=store_basis
    )
    while not proc.done:
        proc.step()
        if callback is not None and callback(proc):
            break
    return proc.decomposition()


def _short_run(op: LinearOperator, generator: torch.Generator, steps: int) -> LanczosDecomposition:
    """`steps` Lanczos steps (at most n) from a Gaussian start drawn from `generator`."""
    v0 = gaussian(op, 1, generator)[:, 0]
    return lanczos(op, v0, max(1, min(steps, op.shape[0])), generator=generator)


def ritz_extremes(
    op: LinearOperator, generator: torch.Generator, steps: int = BOUND_STEPS
) -> tuple[float, float, float]:
    """Smallest and largest Ritz values of a short Lanczos run, and its last beta.

    Costs `steps` products. The extreme Ritz values lie inside the spectrum and
    approach its ends fastest; the last beta bounds every Ritz pair's residual.
    """
    dec = _short_run(op, generator, steps)
    theta, _ = dec.ritz(eigvals_only=True)
    return float(theta.min()), float(theta.max()), abs(float(dec.beta[-1]))


def lowest_eigenvalue_estimate(
    op: LinearOperator, generator: torch.Generator, steps: int
) -> tuple[float, float]:
    """The smallest Ritz value of a short Lanczos run and a pessimistic estimate
    of the smallest eigenvalue.

    The Ritz value is a Rayleigh quotient, so a negative one proves the
    operator indefinite. The estimate is the Ritz value less its residual norm
    ``beta_m |s_m1|``: an eigenvalue lies within that residual of it
    (Krylov-Bogoliubov), though the smallest may lie further down, where the
    short run has not reached. Costs `steps` products (the run of
    `ritz_extremes`, with the eigenvectors of T for the residual).
    """
    dec = _short_run(op, generator, steps)
    theta, S = dec.ritz()
    assert S is not None
    res = abs(float(dec.beta[-1])) * abs(float(S[-1, 0]))
    return float(theta[0]), float(theta[0]) - res
