"""The operator contract: a symmetric n x n linear map acting on flat tensors.

A subclass writes only `_matmat` (an (n, b) block in, an (n, b) block out).
Shape and dtype checks, the product counter, `matvec`, `@` and `to_scipy` are
derived here once, and so are two checks of every operator's products that
cost no extra product:

- finiteness: a product holding NaN or inf raises `NonFiniteProductError`
  naming the product (one ``isfinite`` per block);
- symmetry: the first two independent vectors multiplied, u and v, are used
  once to compare ``u^T (A v)`` with ``v^T (A u)``; a difference beyond
  rounding raises `AsymmetricOperatorError` (the algorithms need a symmetric
  operator).

Both can be switched off per class or instance (``check_finite = False``,
``check_symmetry = False``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import torch


class NonFiniteProductError(FloatingPointError):
    """A product of the operator came out NaN or inf (an `ArithmeticError`).

    The message names the product (its number among the operator's products),
    the columns of the block that went bad and what to check.
    """


class AsymmetricOperatorError(ValueError):
    """The operator's products are not those of a symmetric matrix.

    Raised when ``u^T (A v)`` and ``v^T (A u)`` of the first two independent
    vectors multiplied differ beyond rounding; the message gives the measured
    relative asymmetry.
    """


def symmetry_tolerance(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """The relative asymmetry rounding can explain: ``min(0.5, 10 sqrt(eps))``.

    ``eps`` is the dtype's, or TensorFloat-32's (2^-10) for float32 on a CUDA
    device where PyTorch may use it (cuDNN convolutions do by default). Rounding
    gives a few eps; a wrong (non-symmetric) operator gives a sizeable fraction
    of 1, so the margin is wide on both sides.
    """
    eps = float(torch.finfo(dtype).eps)
    if dtype == torch.float32 and torch.device(device).type == "cuda":
        eps = max(eps, 2.0**-10)
    return min(0.5, 10.0 * eps**0.5)


class LinearOperator:
    """A symmetric linear operator known only through its products.

    Attributes:
        shape: (n, n).
        dtype: the dtype of vectors it accepts and returns.
        device: the device of vectors it accepts and returns.
        num_matvecs: columns multiplied so far (a block of b columns counts b).
        is_distributed: whether each product is a reduction across the ranks of a
            process group (every rank must then call it with the same vectors).
        check_finite: raise `NonFiniteProductError` when a product holds NaN or
            inf (default True; a class or instance attribute).
        check_symmetry: compare ``u^T (A v)`` with ``v^T (A u)`` on the first
            two independent vectors multiplied and raise `AsymmetricOperatorError`
            beyond rounding (default True; no extra product). Switch it off
            (``op.check_symmetry = False``) only for an operator known to be
            symmetric whose products carry more rounding than its dtype's.
        precision_dtype: the dtype whose machine epsilon is the rounding unit
            of the products (default: `dtype`; coarser when products are
            computed in lower precision than the vectors, e.g. bfloat16
            products returned in float32). Precision floors and the symmetry
            check use it.
        positive_semidefinite: whether the operator is known to be PSD by
            construction (a GGN of a convex loss, a Fisher; default False).
            Methods that need a PSD operator then skip their checks: the
            Nystrom sketch looks for no shift.
    """

    is_distributed: bool = False
    positive_semidefinite: bool = False
    check_finite: bool = True
    check_symmetry: bool = True
    # the first vector multiplied, its product and its product number, kept until
    # a second independent vector is multiplied (then the symmetry check is done)
    _symmetry_probe: tuple[torch.Tensor, torch.Tensor, int] | None = None
    _symmetry_checked: bool = False
    # set by operators whose products are computed in a coarser dtype than `dtype`
    _precision_dtype: torch.dtype | None = None

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        if n < 1:
            raise ValueError(f"an operator needs at least one row, got n={n}")
        self.shape: tuple[int, int] = (int(n), int(n))
        self.dtype = dtype
        self.device = torch.device(device)
        self.num_matvecs = 0

    @property
    def precision_dtype(self) -> torch.dtype:
        """The dtype whose machine epsilon is the products' rounding unit (default `dtype`)."""
        return self.dtype if self._precision_dtype is None else self._precision_dtype

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
        """H @ V for an (n, b) block V; counts b products.

        Raises:
            NonFiniteProductError: a column of the product is NaN or inf.
            AsymmetricOperatorError: the first independent vectors show the
                operator is not symmetric.
        """
        self._check(V, 2)
        if V.shape[1] == 0:
            return V.clone()
        out = self._matmat(V)
        first = self.num_matvecs + 1
        self.num_matvecs += int(V.shape[1])
        if self.check_finite and not bool(torch.isfinite(out).all()):
            raise self._non_finite(V, out, first)
        if self.check_symmetry and not self._symmetry_checked:
            self._test_symmetry(V, out, first)
        return out

    def _non_finite(self, V: torch.Tensor, out: torch.Tensor, first: int) -> NonFiniteProductError:
        """The error for a block whose product holds NaN or inf."""
        b = V.shape[1]
        bad = torch.nonzero(~torch.isfinite(out).all(0)).flatten().tolist()
        shown = ", ".join(str(first + j) for j in bad[:5]) + (", ..." if len(bad) > 5 else "")
        where = (
            f"product {first + bad[0]}"
            if b == 1
            else f"the block of products {first}-{first + b - 1}: product(s) {shown}"
        )
        if not bool(torch.isfinite(V).all()):
            return NonFiniteProductError(
                f"{type(self).__name__}: {where} came out NaN or inf because the vectors "
                "multiplied already held NaN or inf: an earlier step overflowed; scale the "
                "operator down or work in float64"
            )
        return NonFiniteProductError(
            f"{type(self).__name__}: {where} came out NaN or inf ({len(bad)} of {b} "
            f"column(s); {first - 1} finite product(s) before). The operator is not finite at "
            "these vectors: check the model's parameters, loss and data for NaN or inf (a "
            "diverged training run, log(0), a division by zero), and that its dtype has the "
            "range its values need (float16 overflows above 65504: use float32 or float64)"
        )

    def _test_symmetry(self, V: torch.Tensor, out: torch.Tensor, first: int) -> None:
        """Compare u^T (A v) with v^T (A u) on the first two independent vectors seen.

        Uses the products already taken (no extra product): the first vector and
        its product are kept until an independent second one is multiplied.
        """
        probe = self._symmetry_probe
        for j in range(V.shape[1]):
            if probe is None:
                if bool((V[:, j] != 0).any()):
                    probe = (V[:, j], out[:, j], first + j)
                continue
            x1, y1, i1 = probe[0].double(), probe[1].double(), probe[2]
            x, y = V[:, j].double(), out[:, j].double()
            nx, n1 = float(torch.linalg.vector_norm(x)), float(torch.linalg.vector_norm(x1))
            if abs(float(torch.dot(x1, x))) >= 0.99 * n1 * nx:
                continue  # (nearly) the same direction, or zero: nothing to compare
            self._symmetry_probe = None
            self._symmetry_checked = True
            self._compare(x1, y1, i1, x, y, first + j)
            return
        if probe is not None and probe is not self._symmetry_probe:
            probe = (probe[0].clone(), probe[1].clone(), probe[2])  # kept past this block
        self._symmetry_probe = probe

    def _compare(
        self, u: torch.Tensor, Au: torch.Tensor, i: int, v: torch.Tensor, Av: torch.Tensor, j: int
    ) -> None:
        """Raise `AsymmetricOperatorError` when u^T (A v) and v^T (A u) differ beyond rounding.

        The difference is measured against |u^T A v| + |v^T A u|, or, when both
        are small, against (||u|| ||A v|| + ||v|| ||A u||) / sqrt(n): the size of
        such a bilinear form for vectors in general position.
        """
        a, c = float(torch.dot(u, Av)), float(torch.dot(v, Au))
        vec = torch.linalg.vector_norm
        scale = float(vec(u) * vec(Av) + vec(v) * vec(Au))
        denom = max(abs(a) + abs(c), scale / self.shape[0] ** 0.5)
        if denom == 0.0:
            return
        asym = abs(a - c) / denom
        tol = symmetry_tolerance(self.precision_dtype, self.device)
        if not asym <= tol:
            raise AsymmetricOperatorError(
                f"{type(self).__name__} is not symmetric: products {i} and {j} give "
                f"u^T (A v) = {a:.6g} but v^T (A u) = {c:.6g}, a relative asymmetry of "
                f"{asym:.3g} where rounding in {self.precision_dtype} explains at most "
                f"{tol:.2g}. The algorithms (eigsh, trace, density, sketch) need a symmetric "
                "operator: multiply by its symmetric part (A + A^T) / 2 instead, or, if it is "
                "symmetric and only its rounding is larger, set op.check_symmetry = False"
            )

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

    check_symmetry = False  # the wrapped operator checks its own products

    def __init__(self, op: LinearOperator, shift: float, scale: float = 1.0) -> None:
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op = op
        self.shift = float(shift)
        self.scale = float(scale)
        self._precision_dtype = op.precision_dtype

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
