"""A lone batch's gradient graph is kept between products, and only while nothing changed."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from hessian_spectra.operators.ggn import GGNOperator
from hessian_spectra.operators.hessian import HessianOperator
from tests.helpers import bn_cnn

CE = nn.CrossEntropyLoss()


make_cnn = bn_cnn  # non-trivial eval-mode BatchNorm statistics (saved by the graph)


def make_data(n: int = 24):
    g = torch.Generator().manual_seed(7)
    x = torch.randn((n, 2, 4, 4), generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


class Forwards:
    """Counts the model's forward passes."""

    def __init__(self, model: nn.Module) -> None:
        self.count = 0
        model.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.count += 1


def fresh(model: nn.Module, data, V: torch.Tensor) -> torch.Tensor:
    return HessianOperator(model, CE, data, keep_graph=False).matmat(V)


def block(n: int, b: int = 3) -> torch.Tensor:
    return torch.randn((n, b), generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def test_lone_batch_reuses_the_graph_and_agrees_with_rebuilt_products():
    model, data = make_cnn(), make_data()
    forwards = Forwards(model)
    op = HessianOperator(model, CE, data)
    assert op.keep_graph and op.settings["keep_graph"] is True
    V = block(op.shape[0])
    first = op.matmat(V)
    assert forwards.count == 2  # the determinism check built a second graph
    again = op.matmat(V)
    op.matvec(V[:, 0])
    assert forwards.count == 2  # no forward pass: the kept graph served both
    assert op.graph_bytes > 0
    expected = fresh(model, data, V)
    assert torch.equal(first, again)
    torch.testing.assert_close(first, expected, rtol=1e-13, atol=1e-15)


def test_keep_graph_false_rebuilds_every_product_and_holds_nothing():
    model, data = make_cnn(), make_data()
    forwards = Forwards(model)
    op = HessianOperator(model, CE, data, keep_graph=False, check_deterministic=False)
    V = block(op.shape[0])
    op.matmat(V)
    op.matmat(V)
    assert forwards.count == 2
    assert op.graph_bytes == 0 and op.keep_graph is False


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=0.05, foreach=True),
        # a fused step changes the values without touching the version counters
        lambda p: torch.optim.Adam(p, lr=0.05, fused=True),
    ],
    ids=["sgd", "adam_foreach", "adam_fused"],
)
def test_an_optimizer_step_invalidates_the_graph(make_optimizer):
    model, (x, y) = make_cnn(), make_data()
    op = HessianOperator(model, CE, (x, y))
    V = block(op.shape[0])
    before = op.matmat(V)
    opt = make_optimizer(model.parameters())
    model.zero_grad()
    CE(model(x), y).backward()
    opt.step()
    after = op.matmat(V)
    expected = fresh(model, (x, y), V)
    torch.testing.assert_close(after, expected, rtol=1e-13, atol=1e-15)
    assert float((after - before).norm()) > 1e-3 * float(before.norm())


def test_in_place_edits_of_parameters_buffers_and_data_are_detected():
    model, (x, y) = make_cnn(), make_data()
    op = HessianOperator(model, CE, (x, y))
    V = block(op.shape[0])
    op.matmat(V)
    edits = [
        lambda: model[0].weight.mul_(1.5),  # under no_grad: bumps the version
        lambda: model[4].weight.data.add_(0.3),  # through .data: only the values change
        lambda: model[1].running_var.mul_(2.0),  # a buffer the graph saved
        lambda: x.mul_(0.5),  # the batch itself (the operator holds the same tensor)
    ]
    for edit in edits:
        with torch.no_grad():
            edit()
        torch.testing.assert_close(op.matmat(V), fresh(model, (x, y), V), rtol=1e-13, atol=1e-15)


def test_a_change_of_mode_is_detected():
    model, data = make_cnn(), make_data()
    op = HessianOperator(model, CE, data, allow_train_mode=True, check_deterministic=False)
    V = block(op.shape[0])
    op.matmat(V)
    model.train()
    trained = op.matmat(V)
    expected = HessianOperator(
        model, CE, data, keep_graph=False, allow_train_mode=True, check_deterministic=False
    ).matmat(V)
    torch.testing.assert_close(trained, expected, rtol=1e-13, atol=1e-15)


def test_train_mode_batchnorm_keeps_its_statistics_and_agrees():
    model, data = make_cnn(), make_data()
    model.train()
    stats = [b.clone() for b in model.buffers()]
    op = HessianOperator(model, CE, data, allow_train_mode=True, check_deterministic=False)
    ref = HessianOperator(
        model, CE, data, allow_train_mode=True, check_deterministic=False, keep_graph=False
    )
    V = block(op.shape[0])
    for _ in range(2):
        torch.testing.assert_close(op.matmat(V), ref.matmat(V), rtol=1e-13, atol=1e-15)
    for b, s in zip(model.buffers(), stats, strict=True):
        assert torch.equal(b, s)


def test_free_graph_and_del_release_the_graph():
    model, data = make_cnn(), make_data()
    forwards = Forwards(model)
    op = HessianOperator(model, CE, data, check_deterministic=False)
    V = block(op.shape[0])
    op.matmat(V)
    op.free_graph()
    assert op.graph_bytes == 0
    op.matmat(V)
    assert forwards.count == 2
    graph = op._graphs.graph
    assert graph is not None
    alive = weakref.ref(graph.grads[0])
    del graph, op
    gc.collect()
    assert alive() is None


def test_the_determinism_check_rebuilds_the_graph():
    """With a kept graph the repeat would agree trivially: it must run the forward again."""

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(5, 3).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.lin(x + 0.1 * torch.randn_like(x)))

    torch.manual_seed(0)
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    op = HessianOperator(Noisy(), CE, (x, y))
    with pytest.raises(RuntimeError, match="not a fixed matrix"):
        op.matmat(block(op.shape[0]))
    with pytest.raises(RuntimeError, match="not a fixed matrix"):
        HessianOperator(Noisy(), CE, (x, y), check_deterministic=True)


def test_several_batches_keep_no_graph():
    model, (x, y) = make_cnn(), make_data()
    forwards = Forwards(model)
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    op = HessianOperator(model, CE, batches, check_deterministic=False)
    assert op.keep_graph is False
    V = block(op.shape[0])
    op.matmat(V)
    op.matmat(V)
    assert forwards.count == 4
    assert op.graph_bytes == 0


def test_curvature_subclasses_keep_no_graph():
    model, data = make_cnn(), make_data()
    ggn = GGNOperator(model, CE, data)
    assert ggn.keep_graph is False and ggn.graph_bytes == 0


def test_keep_graph_is_checked():
    model, data = make_cnn(), make_data()
    with pytest.raises(ValueError, match="keep_graph"):
        HessianOperator(model, CE, data, keep_graph="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("keep_graph", [True, False])
def test_products_leave_other_graphs_over_the_model_usable(keep_graph):
    """Buffers a pass left alone are not written back, so a graph that saved them still works."""
    model, (x, y) = make_cnn(), make_data()
    params = list(model.parameters())
    grads = torch.autograd.grad(CE(model(x), y), params, create_graph=True)  # saves BN stats
    op = HessianOperator(model, CE, (x, y), keep_graph=keep_graph)
    V = block(op.shape[0], 1)
    ours = op.matmat(V)
    theirs = torch.autograd.grad(grads, params, grad_outputs=list(op.unflatten(V[:, 0]).values()))
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in theirs]), ours[:, 0])
