"""Every algorithm stops with one clear error on a non-finite or non-symmetric operator.

The checks live in `LinearOperator.matmat` and cost no product: a product that
turns NaN names itself, and the first two independent vectors multiplied show
an asymmetric operator. Real (float32) Hessian-vector products never trip the
symmetry check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hessian_spectra as hs
from hessian_spectra.operators import AsymmetricOperatorError, NonFiniteProductError
from hessian_spectra.operators.base import DenseOperator
from tests.helpers import dense_op, matrix_with_spectrum

N = 120
LAM = np.concatenate([[9.0, 7.0, 6.0], np.linspace(-1.0, 3.0, N - 3)])


class NaNAfter(DenseOperator):
    """A dense symmetric operator whose products are NaN from product `bad` on."""

    def __init__(self, bad: int) -> None:
        super().__init__(matrix_with_spectrum(LAM, seed=2))
        self.bad = bad

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        out = super()._matmat(V)
        first = self.num_matvecs + 1
        for j in range(V.shape[1]):
            if first + j >= self.bad:
                out[:, j] = float("nan")
        return out


CALLS = {
    "eigsh lanczos": lambda op: hs.eigsh(op, 3, seed=0),
    "eigsh block": lambda op: hs.eigsh(op, 3, method="block", block_size=4, seed=0),
    "eigsh power": lambda op: hs.eigsh(op, 2, method="power", seed=0),
    "eigsh rqi": lambda op: hs.eigsh(op, 2, method="rqi", seed=0),
    "refine": lambda op: hs.refine(op, [9.0], torch.ones(N, 1, dtype=torch.float64)),
    "trace hutchinson": lambda op: hs.trace(op, method="hutchinson", num_matvecs=40, seed=0),
    "trace hutch++": lambda op: hs.trace(op, method="hutch++", num_matvecs=45, seed=0),
    "trace xtrace": lambda op: hs.trace(op, method="xtrace", num_matvecs=40, seed=0),
    "density": lambda op: hs.density(op, num_steps=20, num_probes=2, seed=0),
    "sketch": lambda op: hs.sketch(op, 10, kind="rangefinder", seed=0),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_a_product_that_turns_nan_is_named(name):
    bad = 13
    with pytest.raises(NonFiniteProductError, match=r"came out NaN or inf") as info:
        CALLS[name](NaNAfter(bad))
    # the message names the product that went bad (alone, or in its block)
    assert f"product {bad} " in str(info.value) or f"product(s) {bad}" in str(info.value)


@pytest.mark.parametrize("name", list(CALLS))
def test_an_asymmetric_operator_is_refused(name):
    A = matrix_with_spectrum(LAM, seed=2)
    A = A + 0.3 * np.triu(np.random.default_rng(0).standard_normal((N, N)))
    op = DenseOperator(A, check_symmetric=False)
    with pytest.raises(AsymmetricOperatorError, match="need a symmetric operator"):
        CALLS[name](op)
    assert op.num_matvecs <= 15  # found in the first block of products


@pytest.mark.parametrize("name", list(CALLS))
def test_checks_add_no_product_and_change_no_bit(name):
    checked = dense_op(LAM, seed=2)
    unchecked = dense_op(LAM, seed=2)
    unchecked.check_symmetry = False
    unchecked.check_finite = False
    a, b = CALLS[name](checked), CALLS[name](unchecked)
    assert checked._symmetry_checked
    assert a.num_matvecs == b.num_matvecs
    for field in ("eigenvalues", "estimate", "nodes"):
        if hasattr(a, field):
            assert np.array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)))


def _cnn_operator(nan_batch: int | None = None) -> hs.HessianOperator:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.Tanh(),
        nn.Conv2d(6, 6, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 10),
    )
    data = [(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))) for _ in range(3)]
    if nan_batch is not None:
        data[nan_batch][0][0, 0, 0, 0] = float("nan")
    return hs.HessianOperator(model, nn.CrossEntropyLoss(), data)


@pytest.mark.filterwarnings("ignore::hessian_spectra.algorithms.errors.ConvergenceWarning")
def test_float32_hessian_products_pass_the_symmetry_check():
    for seed in range(3):
        op = _cnn_operator()
        assert op.dtype == torch.float32
        hs.eigsh(op, 3, seed=seed, max_matvecs=60)
        assert op._symmetry_checked
        hs.trace(_cnn_operator(), num_matvecs=20, seed=seed)
        hs.density(_cnn_operator(), num_steps=10, num_probes=2, seed=seed)
        hs.eigsh(_cnn_operator(), 2, method="power", seed=seed, max_matvecs=40)


def test_hessian_operator_keeps_its_own_message_naming_the_batch():
    with pytest.raises(FloatingPointError, match="batch 1") as info:
        hs.eigsh(_cnn_operator(nan_batch=1), 3, seed=0)
    assert not isinstance(info.value, NonFiniteProductError)
