import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from hessian_spectra.operators.base import DenseOperator, LinearOperator, ShiftedOperator


def _sym(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    return (A + A.T) / 2


def test_dense_matmat_matvec_and_count():
    A = _sym(7)
    op = DenseOperator(A)
    V = torch.randn(7, 3, dtype=torch.float64)
    assert torch.allclose(op.matmat(V), A @ V)
    assert op.num_matvecs == 3
    v = torch.randn(7, dtype=torch.float64)
    assert torch.allclose(op @ v, A @ v)
    assert torch.allclose(op @ V, A @ V)
    assert op.num_matvecs == 3 + 1 + 3


def test_numpy_input_and_to_scipy():
    A = _sym(6).numpy()
    op = DenseOperator(A)
    assert op.dtype == torch.float64
    L = op.to_scipy()
    x = np.arange(6.0)
    np.testing.assert_allclose(L @ x, A @ x, rtol=1e-13)
    X = np.random.default_rng(0).standard_normal((6, 2))
    np.testing.assert_allclose(L.matmat(X), A @ X, rtol=1e-13)
    w = spla.eigsh(L, k=2, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(w), np.sort(np.linalg.eigvalsh(A))[-2:], rtol=1e-10)
    assert op.num_matvecs > 0


def test_wrong_size_dtype_type_refused():
    op = DenseOperator(_sym(5))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        op.matvec(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(5, b\)"):
        op.matmat(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="float64"):
        op.matvec(torch.zeros(5, dtype=torch.float32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        op.matvec(np.zeros(5))  # type: ignore[arg-type]
    assert op.num_matvecs == 0


def test_nonsymmetric_refused():
    A = torch.arange(9.0, dtype=torch.float64).reshape(3, 3)
    with pytest.raises(ValueError, match="not symmetric"):
        DenseOperator(A)


def test_subclass_writes_only_matmat():
    class Diag(LinearOperator):
        def __init__(self, d: torch.Tensor) -> None:
            super().__init__(d.numel(), d.dtype, d.device)
            self.d = d

        def _matmat(self, V: torch.Tensor) -> torch.Tensor:
            return self.d[:, None] * V

    d = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    op = Diag(d)
    assert torch.equal(op @ torch.ones(3, dtype=torch.float64), d)
    assert op.num_matvecs == 1


def test_shifted_operator():
    A = _sym(4)
    op = ShiftedOperator(DenseOperator(A), shift=2.0, scale=-1.0)
    v = torch.randn(4, dtype=torch.float64)
    assert torch.allclose(op @ v, -(A @ v + 2.0 * v))
    assert op.op.num_matvecs == 1 and op.num_matvecs == 1
