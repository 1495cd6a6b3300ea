"""Per-layer traces against the dense Hessian of a small float64 network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hessian_spectra.analysis.layers import group_blocks, layer_of, layer_traces


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 7), nn.Tanh(), nn.Sequential(nn.Linear(7, 6), nn.Tanh()), nn.Linear(6, 3)
    ).double()


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    return x, y


def _dense_hessian(model: nn.Module, x, y) -> np.ndarray:
    """The loss Hessian by double backward on unit vectors (float64), checked symmetric."""
    params = [p for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.cat([gi.reshape(-1) for gi in grads])
    n = g.numel()
    H = np.empty((n, n))
    for i in range(n):
        row = torch.autograd.grad(g[i], params, retain_graph=True)
        H[i] = torch.cat([r.reshape(-1) for r in row]).numpy()
    assert np.abs(H - H.T).max() < 1e-10 * np.abs(H).max()
    return (H + H.T) / 2


@pytest.fixture(scope="module")
def problem():
    model = _model()
    x, y = _data()
    H = _dense_hessian(model, x, y)
    sizes = [p.numel() for p in model.parameters()]
    edges = np.cumsum([0, *sizes])
    diag = np.diag(H)
    # parameters in order: 0.weight, 0.bias, 2.0.weight, 2.0.bias, 3.weight, 3.bias
    true = {
        "0": diag[edges[0] : edges[2]].sum(),
        "2.0": diag[edges[2] : edges[4]].sum(),
        "3": diag[edges[4] : edges[6]].sum(),
    }
    return model, (x, y), H, true


def test_layer_names_and_grouping():
    assert layer_of("layer1.0.conv1.weight") == "layer1.0.conv1"
    assert layer_of("layer1.0.conv1.weight", depth=1) == "layer1"
    assert layer_of("layer1.0.conv1.weight", depth=2) == "layer1.0"
    assert layer_of("scale") == "scale"
    blocks = {"a.w": slice(0, 4), "b.w": slice(4, 6), "a.b": slice(6, 8)}
    grouped = group_blocks(blocks)
    assert list(grouped) == ["a", "b"]
    assert torch.equal(grouped["a"], torch.tensor([0, 1, 2, 3, 6, 7]))
    assert grouped["b"] == slice(4, 6)
    with pytest.raises(ValueError, match="depth"):
        layer_of("a.b", depth=0)


def test_layer_traces_match_dense_hessian_blocks(problem):
    # n = 145 parameters in 3 layers (weights and biases grouped by module),
    # 400 Hutchinson probes: each layer's estimate is within 4 of its standard
    # errors of the trace of its diagonal block of the dense Hessian, the
    # estimates sum to the total, and the blocks cover every parameter once.
    model, data, H, true = problem
    res = layer_traces(
        model, nn.CrossEntropyLoss(), data, method="hutchinson", num_matvecs=400, seed=0
    )
    assert res.block_estimates is not None and res.block_stderrs is not None
    assert list(res.block_estimates) == ["0", "2.0", "3"]
    assert res.block_sizes == {"0": 42, "2.0": 48, "3": 21}
    assert sum(res.block_sizes.values()) == H.shape[0]
    for name, value in true.items():
        assert abs(res.block_estimates[name] - value) <= 4 * res.block_stderrs[name], name
    assert sum(res.block_estimates.values()) == pytest.approx(res.estimate, rel=1e-10)
    assert abs(res.estimate - np.trace(H)) <= 4 * res.stderr
    assert res.num_matvecs == 400


def test_layer_traces_unbiased_over_seeds(problem):
    # n = 145, XTrace with 40 products, 40 seeds: each layer's mean estimate is
    # within 4 standard errors (std / sqrt(40)) of its true block trace.
    model, data, _, true = problem
    runs = [
        layer_traces(model, nn.CrossEntropyLoss(), data, method="xtrace", num_matvecs=40, seed=s)
        for s in range(40)
    ]
    for name, value in true.items():
        x = np.array([r.block_estimates[name] for r in runs])
        assert abs(x.mean() - value) < 4 * x.std(ddof=1) / math.sqrt(len(x)), name


def test_depth_params_and_loss_fn(problem):
    # n = 145: depth=1 merges "2.0" into "2"; params= restricts the Hessian to
    # one layer (its trace is that block's); loss_fn is the criterion's
    # equivalent and gives the same estimate for the same seed.
    model, data, H, true = problem
    crit = nn.CrossEntropyLoss()
    coarse = layer_traces(model, crit, data, num_matvecs=20, seed=1, depth=1)
    assert list(coarse.block_estimates) == ["0", "2", "3"]
    only = layer_traces(
        model, crit, data, method="hutchinson", num_matvecs=300, seed=2, params=r"^3\."
    )
    assert list(only.block_estimates) == ["3"]
    assert abs(only.estimate - true["3"]) <= 4 * only.stderr

    def loss_fn(m, batch):
        return crit(m(batch[0]), batch[1])

    a = layer_traces(model, crit, data, num_matvecs=20, seed=3)
    b = layer_traces(model, data=data, loss_fn=loss_fn, num_matvecs=20, seed=3)
    assert a.estimate == pytest.approx(b.estimate, rel=1e-12)
    assert a.block_estimates == pytest.approx(b.block_estimates, rel=1e-12)
