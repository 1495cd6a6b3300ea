"""The operator contract: a symmetric n x n linear map acting on flat tensors.

A subclass writes only `_matmat` (an (n, b) block in, an (n, b) block out).
Shape and dtype checks, the product counter, `matvec`, `@` and `to_scipy` are
derived here once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import torch


class LinearOperator:
    """A symmetric linear operator known only through its products.

    Attributes:
        shape: (n, n).
        dtype: the dtype of vectors it accepts and returns.
        device: the device of vectors it accepts and returns.
        num_matvecs: columns multiplied so far (a block of b columns counts b).
        is_distributed: whether each product is a reduction across the ranks of a
            process group (every rank must then call it with the same vectors).
    """

    is_distributed: bool = False

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        if n < 1:
            raise ValueError(f"an operator needs at least one row, got n={n}")
        self.shape: tuple[int, int] = (int(n), int(n))
        self.dtype = dtype
        self.device = torch.device(device)
        self.num_matvecs = 0

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Multiply an (n, b) block; the only method a subclass writes."""
        raise NotImplementedError

    def _check(self, X: torch.Tensor, ndim: int) -> None:
        if not isinstance(X, torch.Tensor):
            raise TypeError(
                f"expected a torch.Tensor, got {type(X).__name__}; "
                "convert with torch.as_tensor(x, dtype=op.dtype, device=op.device)"
            )
        n = self.shape[0]
        if X.ndim != ndim or X.shape[0] != n:
            want = f"({n},)" if ndim == 1 else f"({n}, b)"
            raise ValueError(f"expected a tensor of shape {want}, got {tuple(X.shape)}")
        if X.dtype != self.dtype:
            raise TypeError(
                f"operator works in {self.dtype} but got a {X.dtype} tensor; "
                f"convert with x.to({self.dtype})"
            )
        if X.device.type != self.device.type:
            raise ValueError(
                f"operator lives on {self.device} but got a tensor on {X.device}; "
                f"move it with x.to('{self.device}')"
            )

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H @ V for an (n, b) block V; counts b products."""
        self._check(V, 2)
        if V.shape[1] == 0:
            return V.clone()
        out = self._matmat(V)
        self.num_matvecs += int(V.shape[1])
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H @ v for one vector of shape (n,)."""
        self._check(v, 1)
        return self.matmat(v[:, None])[:, 0]

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x) if isinstance(x, torch.Tensor) and x.ndim == 1 else self.matmat(x)

    def to_scipy(self) -> spla.LinearOperator:
        """A `scipy.sparse.linalg.LinearOperator` over this operator (NumPy float64 in and out).

        Products go through `matmat`, so `num_matvecs` keeps counting.
        """
        n = self.shape[0]

        def mm(X: np.ndarray) -> np.ndarray:
            X2 = np.asarray(X).reshape(n, -1)
            V = torch.as_tensor(np.ascontiguousarray(X2), dtype=self.dtype, device=self.device)
            return self.matmat(V).detach().cpu().numpy().astype(np.float64)

        def mv(x: np.ndarray) -> np.ndarray:
            return mm(np.asarray(x).reshape(n, 1))[:, 0]

        return spla.LinearOperator(
            (n, n), matvec=mv, rmatvec=mv, matmat=mm, rmatmat=mm, dtype=np.float64
        )

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this operator in a checkpoint: its type, size and dtype.

        Subclasses add a digest of what defines the matrix (a dense matrix's
        entries, a model's parameter values), so that a saved run is not
        continued on a different operator.
        """
        return {"operator": type(self).__name__, "n": self.shape[0], "dtype": str(self.dtype)}

    def __repr__(self) -> str:
        n = self.shape[0]
        return f"{type(self).__name__}(n={n}, dtype={self.dtype}, device={self.device})"


def digest(tensors: torch.Tensor | Sequence[torch.Tensor]) -> str:
    """A SHA-256 of a tensor's (or a sequence of tensors') values, dtypes and shapes.

    What operator fingerprints and checkpoints use to tell matrices, parameters
    and starting vectors apart; a lone tensor hashes as the sequence of it alone.
    """
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class DenseOperator(LinearOperator):
    """An operator over an explicit symmetric matrix (tests, synthetic experiments).

    Args:
        matrix: a symmetric (n, n) torch tensor or NumPy array.
        dtype: the dtype to work in (default: the matrix's, float64 for NumPy input).
        device: where to keep it.
        check_symmetric: refuse a matrix whose asymmetry exceeds a few rounding errors.
    """

    def __init__(
        self,
        matrix: torch.Tensor | np.ndarray,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        check_symmetric: bool = True,
    ) -> None:
        A = torch.as_tensor(matrix)
        if dtype is None:
            dtype = A.dtype if A.is_floating_point() else torch.float64
        A = A.to(dtype=dtype, device=device if device is not None else A.device)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {tuple(A.shape)}")
        if check_symmetric:
            scale = float(A.abs().max()) if A.numel() else 0.0
            asym = float((A - A.T).abs().max()) if A.numel() else 0.0
            eps = torch.finfo(dtype).eps
            if asym > 100 * eps * max(scale, 1e-300) * max(1, A.shape[0]) ** 0.5:
                raise ValueError(
                    f"matrix is not symmetric (max |A - A^T| = {asym:.3g}); "
                    "pass (A + A.T) / 2, or check_symmetric=False if you know better"
                )
        super().__init__(A.shape[0], dtype, A.device)
        self.matrix = A

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.matrix @ V

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "matrix": digest([self.matrix])}


class ShiftedOperator(LinearOperator):
    """``scale * (op + shift * I)``: spectral shifts for power iteration and Nystrom."""

    def __init__(self, op: LinearOperator, shift: float, scale: float = 1.0) -> None:
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op = op
        self.shift = float(shift)
        self.scale = float(scale)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        out = self.op.matmat(V)
        if self.shift != 0.0:
            out = out + self.shift * V
        if self.scale != 1.0:
            out = self.scale * out
        return out


def as_operator(op: Any) -> LinearOperator:
    """Accept a LinearOperator, or a dense symmetric matrix (wrapped in DenseOperator)."""
    if isinstance(op, LinearOperator):
        return op
    if isinstance(op, (torch.Tensor, np.ndarray)):
        return DenseOperator(op)
    raise TypeError(
        f"expected a hessian_spectra LinearOperator (e.g. HessianOperator) or a dense "
        f"symmetric matrix, got {type(op).__name__}"
    )
