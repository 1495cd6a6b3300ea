"""Every block strategy agrees with double backward to rounding (float64, a CNN and an MLP)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from hessian_spectra.operators.hessian import HessianOperator
from hessian_spectra.operators.products import BLOCK_MODES, auto_mode
from tests.helpers import bn_cnn

CE = nn.CrossEntropyLoss()
MODES = (*BLOCK_MODES, "auto")


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.LayerNorm(6), nn.Linear(6, 3)).double()


make_cnn = bn_cnn  # non-trivial eval-mode BatchNorm statistics (saved by the graph)


PROBLEMS = {"mlp": (make_mlp, (5,)), "cnn": (make_cnn, (2, 4, 4))}


def data(shape: tuple[int, ...], n: int = 20):
    g = torch.Generator().manual_seed(7)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row by row, one backward per row of the gradient (float64)."""
    params = list(model.parameters())
    g = torch.cat(
        [t.reshape(-1) for t in torch.autograd.grad(CE(model(x), y), params, create_graph=True)]
    )
    rows = [
        torch.cat([r.reshape(-1) for r in torch.autograd.grad(g[i], params, retain_graph=True)])
        for i in range(g.numel())
    ]
    return torch.stack(rows).detach()


@functools.cache
def reference(problem: str) -> torch.Tensor:
    make, shape = PROBLEMS[problem]
    return dense_hessian(make(), *data(shape))


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("keep_graph", [True, False])
def test_every_mode_agrees_with_double_backward(problem, mode, keep_graph):
    make, shape = PROBLEMS[problem]
    model = make()
    x, y = data(shape)
    H = reference(problem)
    V = torch.randn((H.shape[0], 5), generator=torch.Generator().manual_seed(2), dtype=H.dtype)
    op = HessianOperator(model, CE, (x, y), hvp_mode=mode, keep_graph=keep_graph)
    scale = float(H.abs().max())
    for cols in (V, V[:, :1], V):  # a block, one column, and the block again (kept graph)
        torch.testing.assert_close(op.matmat(cols), H @ cols, rtol=1e-12, atol=1e-12 * scale)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_over_several_batches(mode):
    model = make_mlp()
    x, y = data((5,), n=30)
    batches = [(x[:10], y[:10]), (x[10:25], y[10:25]), (x[25:], y[25:])]
    H = dense_hessian(model, x, y)
    V = torch.randn((H.shape[0], 4), generator=torch.Generator().manual_seed(4), dtype=H.dtype)
    op = HessianOperator(model, CE, batches, hvp_mode=mode)
    torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-12, atol=1e-12 * float(H.abs().max()))


def test_batched_backward_fills_zero_blocks_of_parameters_the_gradient_ignores():
    """A parameter whose gradient is constant has a zero Hessian row block."""

    class Affine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3).double()
            self.shift = nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    def loss_fn(model: nn.Module, batch):
        x, y = batch
        return CE(model(x), y) + model.shift  # linear in shift

    torch.manual_seed(0)
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))
    model = Affine()
    ref = HessianOperator(model, loss_fn=loss_fn, data=(x, y), keep_graph=False)
    op = HessianOperator(model, loss_fn=loss_fn, data=(x, y), hvp_mode="batched_backward")
    V = torch.randn((op.shape[0], 3), dtype=torch.float64)
    out = op.matmat(V)
    torch.testing.assert_close(out, ref.matmat(V), rtol=1e-13, atol=1e-15)
    assert op.param_names[0] == "shift"  # own parameters come before submodules'
    assert torch.equal(out[0], torch.zeros(3, dtype=torch.float64))


def test_auto_rule():
    assert auto_mode(torch.device("cpu"), 8) == "double_backward"
    assert auto_mode(torch.device("cuda"), 1) == "double_backward"
    assert auto_mode(torch.device("cuda"), 8) == "batched_backward"


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="hvp_mode"):
        HessianOperator(make_mlp(), CE, data((5,)), hvp_mode="fastest")
