"""hvp_mode="finite_difference": central differences of gradients, their error estimate, the
step rule, bit-exact parameters; and the errors that name an operation without a derivative."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from hessian_spectra.operators.autograd_support import (
    UnsupportedDerivativeError,
    derivatives_explained,
    missing_derivative,
    modules_using,
    twice_differentiable,
)
from hessian_spectra.operators.finite_difference import fd_step
from hessian_spectra.operators.hessian import HessianOperator

CE = nn.CrossEntropyLoss()


def _problem(gate: nn.Module | None = None, dtype=torch.float64):
    torch.manual_seed(0)
    layers = [nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)]
    if gate is not None:
        layers.insert(2, gate)
    model = nn.Sequential(*layers).to(dtype)
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(n, 4, generator=g).to(dtype), torch.randint(0, 3, (n,), generator=g))
        for n in (7, 4)
    ]
    return model, batches


def test_central_differences_match_double_backward_within_the_estimate():
    model, batches = _problem()
    exact = HessianOperator(model, CE, batches)
    fd = HessianOperator(model, CE, batches, hvp_mode="finite_difference")
    V = torch.randn(exact.shape[0], 5, generator=torch.Generator().manual_seed(2)).double()
    want, got = exact.matmat(V), fd.matmat(V)
    errors = (got - want).norm(dim=0) / want.norm(dim=0)
    assert float(errors.max()) < 1e-7
    assert float(errors.max()) <= fd.fd_error_estimate < 1e-5
    settings = fd.settings
    assert settings["hvp_mode"] == "finite_difference"
    assert settings["fd_error_estimate"] == fd.fd_error_estimate
    assert settings["fd_truncation_estimate"] > 0 and settings["fd_rounding_estimate"] > 0
    assert exact.fd_error_estimate is None


def test_float32_estimate_is_coarser_and_still_bounds_the_error():
    model, batches = _problem(dtype=torch.float32)
    fd = HessianOperator(model, CE, batches, hvp_mode="finite_difference")
    double = copy.deepcopy(model).double()
    reference = HessianOperator(double, CE, [(x.double(), y) for x, y in batches])
    V = torch.randn(fd.shape[0], 3, generator=torch.Generator().manual_seed(3))
    got = fd.matmat(V).double()
    want = reference.matmat(V.double())
    errors = (got - want).norm(dim=0) / want.norm(dim=0)
    assert float(errors.max()) <= fd.fd_error_estimate < 0.05


def test_parameters_are_restored_bit_for_bit():
    model, batches = _problem()
    before = [p.detach().clone() for p in model.parameters()]
    fd = HessianOperator(model, CE, batches, hvp_mode="finite_difference")
    V = torch.randn(fd.shape[0], 3, generator=torch.Generator().manual_seed(4)).double() * 1e3
    fd.matmat(V)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_step_rule_balances_truncation_and_rounding():
    eps = torch.finfo(torch.float64).eps
    h = fd_step(theta_norm=3.0, v_norm=2.0, eps=eps)
    assert math.isclose(h * 2.0, eps ** (1 / 3) * 4.0)  # |h v| = eps^(1/3) (1 + |theta|)


def test_error_estimate_tracks_the_largest_product_so_far():
    model, batches = _problem()
    fd = HessianOperator(model, CE, batches, hvp_mode="finite_difference")
    fd.matmat(torch.randn(fd.shape[0], 2, generator=torch.Generator().manual_seed(5)).double())
    first = fd.fd_error_estimate
    fd.matmat(torch.randn(fd.shape[0], 2, generator=torch.Generator().manual_seed(6)).double())
    assert fd.settings["fd_max_error_estimate"] >= max(first, fd.fd_error_estimate)


# ----------------------------------------------------------- missing derivatives


def test_hardsigmoid_is_named_with_its_module_and_the_fix():
    model, batches = _problem(nn.Hardsigmoid())
    v = torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    for mode, how in (("double_backward", "double backward"), ("forward_over_reverse", "forward")):
        with pytest.raises(UnsupportedDerivativeError) as caught:
            HessianOperator(model, CE, batches, hvp_mode=mode).matvec(v)
        message = str(caught.value)
        assert "aten::hardsigmoid_backward" in message and how in message
        assert "2 (Hardsigmoid)" in message and "hvp_mode='finite_difference'" in message
        assert caught.value.op == "aten::hardsigmoid_backward"
    # and the fix works
    fd = HessianOperator(model, CE, batches, hvp_mode="finite_difference")
    assert torch.isfinite(fd.matvec(v)).all()


def test_translation_leaves_other_errors_alone():
    with pytest.raises(ValueError, match="unrelated"), derivatives_explained(nn.Linear(1, 1), "x"):
        raise ValueError("unrelated")
    with pytest.raises(RuntimeError, match="^other$"), derivatives_explained(nn.Linear(1, 1), "x"):
        raise RuntimeError("other")
    fwd = NotImplementedError(
        "Trying to use forward AD with aten::foo_backward that does not support it."
    )
    assert missing_derivative(fwd) == "aten::foo_backward"
    assert missing_derivative(RuntimeError("no")) is None


def test_modules_using_finds_types_and_names():
    model = nn.Sequential(nn.Linear(2, 2), nn.ELU(), nn.MultiheadAttention(2, 1), nn.Hardsigmoid())
    assert modules_using(model, "aten::elu_backward") == ["1 (ELU)"]
    assert modules_using(model, "aten::hardsigmoid_backward") == ["3 (Hardsigmoid)"]
    found = modules_using(model, "aten::_scaled_dot_product_flash_attention_for_cpu_backward")
    assert found == ["2 (MultiheadAttention)"]


def test_attention_is_twice_differentiable_inside_the_context_only():
    attention = nn.MultiheadAttention(4, 2, batch_first=True).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64)

    def second_derivative() -> None:
        w = attention.in_proj_weight
        out = nn.functional.scaled_dot_product_attention(
            (x @ w[:4].T).unsqueeze(1), (x @ w[4:8].T).unsqueeze(1), (x @ w[8:].T).unsqueeze(1)
        )
        (g,) = torch.autograd.grad(out.pow(2).sum(), w, create_graph=True)
        torch.autograd.grad(g.sum(), w)

    with pytest.raises(RuntimeError, match="not implemented"):
        second_derivative()
    with twice_differentiable():
        second_derivative()
