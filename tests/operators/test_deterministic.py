"""HessianOperator(check_deterministic=True): a probe multiplied twice must agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

import hessian_spectra as hs
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
        data = Stream()  # no length: capped to its 3 batches per pass
    else:
        ds = TensorDataset(x, y)
        data = DataLoader(ds, batch_size=8, sampler=RandomSampler(ds, num_samples=24))
    cap = 3 if kind == "stream" else None
    with pytest.raises(RuntimeError, match="the data yield different samples on each pass"):
        HessianOperator(_model().eval(), CE, data, check_deterministic=True, max_batches=cap)


class Noisy(nn.Module):
    """Noise drawn in forward, outside any Dropout module."""

    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


def test_random_forward_without_dropout_is_named():
    x, y = _data()
    model = nn.Sequential(_model().eval(), Noisy())
    with pytest.raises(RuntimeError, match="the model or the loss is random"):
        HessianOperator(model, CE, (x, y), check_deterministic=True)


# ----------------------------------------------------------- the default check: the first product


def _v(op, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(op.shape[0], generator=g, dtype=op.dtype)


def test_noise_in_forward_is_caught_by_default_at_the_first_product():
    x, y = _data()
    model = nn.Sequential(_model().eval(), Noisy())
    op = HessianOperator(model, CE, (x, y))  # no option: the default check
    with pytest.raises(RuntimeError, match="not a fixed matrix.*the model or the loss is random"):
        op.matvec(_v(op))
    with pytest.raises(RuntimeError, match="check_deterministic=False"):
        hs.eigsh(HessianOperator(model, CE, (x, y)), 2, seed=0)
    # switched off, the products are taken as they come
    op = HessianOperator(model, CE, (x, y), check_deterministic=False)
    op.matvec(_v(op))
    assert op.check_matvecs == 0


class FunctionalDropout(nn.Module):
    """F.dropout in forward, no Dropout module: the train-mode check cannot see it."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.lin1(x))
        return self.lin2(nn.functional.dropout(h, 0.2, training=self.training))


def test_functional_dropout_in_train_mode_is_caught():
    x, y = _data()
    torch.manual_seed(0)
    model = FunctionalDropout().double().train()
    op = HessianOperator(model, CE, (x, y))
    with pytest.raises(RuntimeError, match=r"functional dropout \(F\.dropout"):
        op.matvec(_v(op))
    HessianOperator(model.eval(), CE, (x, y)).matvec(_v(op))  # eval mode: a fixed matrix


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 5, num_layers=2, dropout=0.2, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def test_lstm_with_dropout_in_train_mode_is_refused_or_caught():
    torch.manual_seed(0)
    model = Recurrent().double().train()
    x = torch.randn(12, 3, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    with pytest.raises(RuntimeError, match=r"rnn \(LSTM\).*model\.eval\(\)"):
        HessianOperator(model, CE, (x, y))
    op = HessianOperator(model, CE, (x, y), allow_train_mode=True)
    with pytest.raises(RuntimeError, match=r"an RNN built with dropout>0 in train mode \(rnn\)"):
        op.matvec(_v(op))
    HessianOperator(model.eval(), CE, (x, y)).matvec(_v(op))


class Counting(nn.Module):
    """A forward that updates a buffer its output depends on (a running average, a counter)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return self.lin(x) * (1 + 0.1 * self.calls)


def test_buffers_a_forward_changes_are_restored_after_every_product():
    x, y = _data()
    model = Counting().double()
    op = HessianOperator(model, CE, [(x[:20], y[:20]), (x[20:], y[20:])])
    v = _v(op)
    first = op.matvec(v)  # passes the default check: each product starts from the same buffer
    assert torch.equal(op.matvec(v), first)
    assert float(model.calls) == 0.0  # the model is left as it was
    assert op.num_matvecs == 2 and op.check_matvecs == 1


def test_the_default_check_costs_one_uncounted_product_and_no_random_numbers():
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)
    states = []
    for check in ("first", False):
        op = HessianOperator(_model().eval(), CE, loader, check_deterministic=check)
        assert op.check_deterministic == check
        torch.manual_seed(5)
        op.matmat(torch.ones(op.shape[0], 3, dtype=torch.float64))
        assert op.num_matvecs == 3  # the check's product is not counted ...
        assert op.check_matvecs == (1 if check else 0)  # ... but reported here
        states.append(torch.get_rng_state())
        op.matvec(_v(op))
        assert op.check_matvecs == (1 if check else 0)  # once in the operator's life
    assert torch.equal(states[0], states[1])  # the shuffles that follow are the same
    assert HessianOperator(_model().eval(), CE, (x, y)).check_deterministic == "first"
    with pytest.raises(ValueError, match="'first', True or False"):
        HessianOperator(_model().eval(), CE, (x, y), check_deterministic="always")
