"""HessianOperator(check_deterministic=True): a probe multiplied twice must agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

from hessian_spectra.operators.hessian import HessianOperator

CE = nn.CrossEntropyLoss()


def _model(dtype=torch.float64, dropout=False):
    torch.manual_seed(0)
    layers = [nn.Linear(4, 8), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(0.3))
    layers.append(nn.Linear(8, 3))
    return nn.Sequential(*layers).to(dtype)


def _data(dtype=torch.float64, n=48):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_shuffled_loader_passes(dtype):
    """A shuffled loader changes the batches and the summation order, not the Hessian."""
    x, y = _data(dtype)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    op = HessianOperator(_model(dtype).eval(), CE, loader, check_deterministic=True)
    assert op.num_matvecs == 0
    # and the passes really differ in order: the same product to rounding only
    v = torch.randn(op.shape[0], dtype=dtype, generator=torch.Generator().manual_seed(2))
    a, b = op.matvec(v), op.matvec(v)
    assert not torch.equal(a, b)
    tol = 100 * torch.finfo(dtype).eps
    assert float(torch.linalg.vector_norm(a - b)) <= tol * float(torch.linalg.vector_norm(a))


def test_dropout_in_train_mode_is_named():
    x, y = _data()
    model = _model(dropout=True).train()
    with pytest.raises(RuntimeError, match=r"Dropout in train mode \(2\)"):
        HessianOperator(model, CE, (x, y), allow_train_mode=True, check_deterministic=True)
    # the same model in eval mode is a fixed matrix
    HessianOperator(model.eval(), CE, (x, y), check_deterministic=True)


class Augmented(Dataset):
    """Random horizontal flips and noise on every read, as a training transform does."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.gen = torch.Generator().manual_seed(3)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = 0.05 * torch.randn(self.x.shape[1:], generator=self.gen, dtype=self.x.dtype)
        flip = bool(torch.rand((), generator=self.gen) < 0.5)
        xi = self.x[i].flip(0) if flip else self.x[i]
        return xi + noise, self.y[i]


def test_random_augmentation_is_named():
    x, y = _data()
    loader = DataLoader(Augmented(x, y), batch_size=16, shuffle=True)
    with pytest.raises(RuntimeError, match="random data augmentation"):
        HessianOperator(_model().eval(), CE, loader, check_deterministic=True)


class Stream:
    """A re-iterable that draws new samples on every pass (a data stream)."""

    def __init__(self):
        self.gen = torch.Generator().manual_seed(4)

    def __iter__(self):
        for _ in range(3):
            x = torch.randn(8, 4, generator=self.gen, dtype=torch.float64)
            yield x, torch.randint(0, 3, (8,), generator=self.gen)


@pytest.mark.parametrize("kind", ["stream", "random subset"])
def test_different_samples_each_pass_are_named(kind):
    x, y = _data()
    if kind == "stream":
        data = Stream()
    else:
        ds = TensorDataset(x, y)
        data = DataLoader(ds, batch_size=8, sampler=RandomSampler(ds, num_samples=24))
    with pytest.raises(RuntimeError, match="the data yield different samples on each pass"):
        HessianOperator(_model().eval(), CE, data, check_deterministic=True)


class Noisy(nn.Module):
    """Noise drawn in forward, outside any Dropout module."""

    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


def test_random_forward_without_dropout_is_named():
    x, y = _data()
    model = nn.Sequential(_model().eval(), Noisy())
    with pytest.raises(RuntimeError, match="the model or the loss is random"):
        HessianOperator(model, CE, (x, y), check_deterministic=True)
