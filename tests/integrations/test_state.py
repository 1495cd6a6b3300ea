"""training_state_kept: modes, RNG streams, gradients and grad mode are as they were after it."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from hessian_spectra.integrations._state import training_state_kept


def test_everything_a_measurement_may_touch_is_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.BatchNorm1d(4), nn.Linear(4, 1))
    model.train()
    model[2].eval()  # a frozen layer inside a train-mode model keeps its own mode
    model(torch.randn(8, 3)).sum().backward()
    grads = [p.grad for p in model.parameters()]
    values = [g.clone() for g in grads]
    model[3].bias.grad = None
    np.random.seed(1)
    random.seed(2)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    with torch.no_grad():
        with training_state_kept(model):
            model.eval()
            torch.randn(10)
            np.random.rand(5)
            random.random()
            torch.set_grad_enabled(True)
            for p in model.parameters():
                p.grad = torch.ones_like(p) if p.grad is None else p.grad.mul_(3.0)
            assert not torch.is_autocast_enabled("cpu")
        assert not torch.is_grad_enabled()  # the grad mode of the loop, not of the measurement
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]
    kept = list(model.parameters())
    for p, g, v in zip(kept[:-1], grads[:-1], values[:-1], strict=True):
        assert p.grad is g and torch.equal(p.grad, v)  # the same tensors, the same values
    assert kept[-1].grad is None


def test_autocast_is_off_inside_and_back_after():
    model = nn.Linear(2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with training_state_kept(model):
            assert not torch.is_autocast_enabled("cpu")
            assert model(torch.randn(1, 2)).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")


def test_restored_after_an_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    before = torch.get_rng_state()
    try:
        with training_state_kept(model):
            model.eval()
            torch.randn(4)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert model.training and model[1].training
    assert torch.equal(torch.get_rng_state(), before)
