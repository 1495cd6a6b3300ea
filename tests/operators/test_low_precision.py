"""Products in bfloat16: of a float32 model (product_dtype=) and of a model stored in bfloat16.

Bounds from bfloat16's machine epsilon (eps = 2^-7): a product passes through
a few dozen roundings of operands to bfloat16 (the forward, the gradient and
the second backward of two layers), each off by at most eps/2 relatively,
summed in float32; their errors add up to a few eps of the product's norm.
We allow 4 eps, and require more than 10 float32 epsilons (the products are
really computed in bfloat16).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hessian_spectra as hs
from hessian_spectra.operators.hessian import HessianOperator

CE = nn.CrossEntropyLoss()
EPS_BF16 = float(torch.finfo(torch.bfloat16).eps)
EPS_F32 = float(torch.finfo(torch.float32).eps)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 24), nn.Tanh(), nn.Linear(24, 3))


def make_data():
    g = torch.Generator().manual_seed(5)
    return torch.randn((64, 10), generator=g), torch.randint(0, 3, (64,), generator=g)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def block(n: int) -> torch.Tensor:
    return torch.randn((n, 4), generator=torch.Generator().manual_seed(1))


def test_bfloat16_products_of_a_float32_model():
    model, data = make_model(), make_data()
    f32 = HessianOperator(model, CE, data)
    bf = HessianOperator(model, CE, data, product_dtype=torch.bfloat16)
    assert bf.dtype == torch.float32 and bf.product_dtype == torch.bfloat16
    assert bf.precision_dtype == torch.bfloat16 and f32.precision_dtype == torch.float32
    assert bf.settings["product_dtype"] == "bfloat16"
    V = block(f32.shape[0])
    exact, low = f32.matmat(V), bf.matmat(V)
    assert low.dtype == torch.float32
    assert 10 * EPS_F32 < rel(low, exact) <= 4 * EPS_BF16
    for j in range(V.shape[1]):
        assert rel(low[:, j], exact[:, j]) <= 4 * EPS_BF16
    # the same over several batches (summed in float64)
    x, y = data
    split = HessianOperator(
        model, CE, [(x[:32], y[:32]), (x[32:], y[32:])], product_dtype="bfloat16"
    )
    assert rel(split.matmat(V), exact) <= 4 * EPS_BF16


def test_a_model_stored_in_bfloat16_gives_a_float32_operator():
    model, data = make_model(), make_data()
    exact = HessianOperator(model, CE, data).matmat(
        block(sum(p.numel() for p in model.parameters()))
    )
    low_model = make_model().bfloat16()
    op = HessianOperator(low_model, CE, data)
    assert op.dtype == torch.float32
    assert op.product_dtype == torch.bfloat16 and op.precision_dtype == torch.bfloat16
    out = op.matmat(block(op.shape[0]))
    assert out.dtype == torch.float32
    # the weights themselves are rounded to bfloat16 too: the same few eps
    assert rel(out, exact) <= 4 * EPS_BF16
    v = op.unflatten(out[:, 0])
    assert all(t.dtype == torch.float32 for t in v.values())


@pytest.mark.parametrize("stored", [False, True], ids=["product_dtype", "bf16_model"])
def test_eigsh_flags_bfloat16_products_as_precision_limited(stored):
    model, data = make_model(), make_data()
    exact = hs.eigsh(HessianOperator(model, CE, data), k=3, seed=0, tol=1e-6)
    op = (
        HessianOperator(make_model().bfloat16(), CE, data)
        if stored
        else HessianOperator(model, CE, data, product_dtype=torch.bfloat16)
    )
    low = hs.eigsh(op, k=3, seed=0, tol=1e-12)
    top = float(np.abs(low.eigenvalues).max())
    assert bool(np.all(low.precision_limited))
    # no residual claimed below the products' rounding level, 10 eps(bf16) max|theta|
    assert float(np.min(low.residuals)) >= 0.99 * 10 * EPS_BF16 * top
    err = np.abs(np.asarray(low.eigenvalues) - np.asarray(exact.eigenvalues))
    assert float(err.max()) <= 4 * EPS_BF16 * top


def test_product_dtype_is_checked():
    model, data = make_model(), make_data()
    with pytest.raises(ValueError, match="CUDA"):
        HessianOperator(model, CE, data, product_dtype="tf32")
    with pytest.raises(ValueError, match="float32 model"):
        HessianOperator(model.double(), CE, data, product_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="stored in"):
        HessianOperator(make_model().bfloat16(), CE, data, product_dtype=torch.float16)
    with pytest.raises(ValueError, match="product_dtype must be"):
        HessianOperator(make_model(), CE, data, product_dtype=torch.int8)


def test_the_symmetry_check_allows_for_the_products_rounding():
    op = HessianOperator(make_model(), CE, make_data(), product_dtype=torch.bfloat16)
    shifted = hs.operators.ShiftedOperator(op, 1.0) if hasattr(hs, "operators") else None
    assert op.precision_dtype == torch.bfloat16
    if shifted is not None:
        assert shifted.precision_dtype == torch.bfloat16
    V = block(op.shape[0])
    op.matmat(V)  # compares u^T(Av) with v^T(Au) at bfloat16's tolerance: no error
    assert op._symmetry_checked
