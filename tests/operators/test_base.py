import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

import hessian_spectra.operators as ops
from hessian_spectra.operators.base import (
    AsymmetricOperatorError,
    DenseOperator,
    LinearOperator,
    NonFiniteProductError,
    ShiftedOperator,
    symmetry_tolerance,
)


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


# ---------------------------------------------------------------- products checked


class _NaNAfter(LinearOperator):
    """A symmetric operator whose products turn NaN from product `bad` on."""

    def __init__(self, A: torch.Tensor, bad: int) -> None:
        super().__init__(A.shape[0], A.dtype)
        self.A, self.bad = A, bad

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        out = self.A @ V
        for j in range(V.shape[1]):
            if self.num_matvecs + j + 1 >= self.bad:
                out[:, j] = float("nan")
        return out


def test_non_finite_product_names_the_product():
    op = _NaNAfter(_sym(6), bad=3)
    op.matvec(torch.ones(6, dtype=torch.float64))
    op.matvec(torch.arange(6.0, dtype=torch.float64))
    with pytest.raises(NonFiniteProductError, match=r"product 3 came out NaN or inf") as info:
        op.matvec(torch.ones(6, dtype=torch.float64))
    assert "2 finite product(s) before" in str(info.value)
    assert "check the model's parameters, loss and data" in str(info.value)
    assert isinstance(info.value, ArithmeticError)
    assert op.num_matvecs == 3  # the product was taken


def test_non_finite_block_names_its_columns():
    op = _NaNAfter(_sym(6), bad=4)
    with pytest.raises(NonFiniteProductError, match=r"products 1-5: product\(s\) 4, 5"):
        op.matmat(torch.randn(6, 5, dtype=torch.float64))


def test_non_finite_input_is_named_as_such():
    op = DenseOperator(_sym(4))
    v = torch.ones(4, dtype=torch.float64)
    v[2] = float("inf")
    with pytest.raises(NonFiniteProductError, match="already held NaN or inf"):
        op.matvec(v)


def test_finiteness_check_can_be_switched_off():
    op = _NaNAfter(_sym(4), bad=1)
    op.check_finite = False
    assert bool(torch.isnan(op.matvec(torch.ones(4, dtype=torch.float64))).all())


def _asymmetric(n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return _sym(n) + 0.5 * torch.randn(n, n, generator=g, dtype=torch.float64)


def test_asymmetric_operator_refused_on_its_second_product():
    op = DenseOperator(_asymmetric(), check_symmetric=False)
    x = torch.randn(8, dtype=torch.float64)
    op.matvec(x)
    op.matvec(2 * x)  # the same direction: nothing to compare yet
    with pytest.raises(AsymmetricOperatorError, match="relative asymmetry of") as info:
        op.matvec(torch.randn(8, dtype=torch.float64))
    msg = str(info.value)
    assert "products 1 and 3" in msg and "need a symmetric operator" in msg
    assert "check_symmetry = False" in msg
    assert isinstance(info.value, ValueError)
    assert op.num_matvecs == 3  # no product added


def test_asymmetric_operator_refused_within_one_block():
    op = DenseOperator(_asymmetric(), check_symmetric=False)
    with pytest.raises(AsymmetricOperatorError, match="products 1 and 2"):
        op.matmat(torch.randn(8, 3, dtype=torch.float64))


def test_symmetry_check_keeps_its_own_copy_of_the_first_vector():
    op = DenseOperator(_asymmetric(), check_symmetric=False)
    V = torch.randn(8, 1, dtype=torch.float64)
    op.matmat(V)
    V.zero_()  # a caller reusing its buffer cannot hide the asymmetry
    with pytest.raises(AsymmetricOperatorError):
        op.matvec(torch.randn(8, dtype=torch.float64))


def test_symmetry_check_switched_off_per_instance_or_class():
    op = DenseOperator(_asymmetric(), check_symmetric=False)
    op.check_symmetry = False
    op.matmat(torch.randn(8, 3, dtype=torch.float64))

    class Trusted(DenseOperator):
        check_symmetry = False

    Trusted(_asymmetric(), check_symmetric=False).matmat(torch.randn(8, 3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_symmetric_operators_pass_in_every_precision(dtype):
    for seed in range(20):
        op = DenseOperator(_sym(50, seed), dtype=dtype)
        g = torch.Generator().manual_seed(seed)
        op.matmat(torch.randn(50, 2, generator=g, dtype=torch.float64).to(dtype))
        assert op._symmetry_checked  # the check ran, and passed


def test_symmetry_tolerance_by_precision():
    assert symmetry_tolerance(torch.float64) < 1e-6
    assert symmetry_tolerance(torch.float32) < 1e-2
    assert symmetry_tolerance(torch.float32, "cuda") > symmetry_tolerance(torch.float32)
    assert symmetry_tolerance(torch.bfloat16) == 0.5


def test_checks_exported_from_operators():
    assert ops.NonFiniteProductError is NonFiniteProductError
    assert ops.AsymmetricOperatorError is AsymmetricOperatorError
