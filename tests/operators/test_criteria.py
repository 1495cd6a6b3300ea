"""The loss rule: every batch's loss is a mean, weighted by the number of terms it averages."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import hessian_spectra as hs
from hessian_spectra.operators.criteria import criterion_weight
from hessian_spectra.operators.hessian import HessianOperator
from hessian_spectra.operators.model import ModelLoss


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _data(n=36, ignored=12):
    """n samples; `ignored` of them (most in the first batch) labelled ignore_index=-100."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    y[:ignored] = -100  # a third of the labels ignored, all in the first batch's share
    return x, y


def _dense_full_data_hessian(model, criterion, x, y):
    """The dense Hessian of criterion over ALL the data at once (torch's own mean)."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    sizes = [p.numel() for p in params]

    def loss_of(flat):
        parts = torch.split(flat, sizes)
        state = {n: t.view_as(p) for n, t, p in zip(names, parts, params, strict=True)}
        return criterion(functional_call(model, state, (x,)), y)

    flat = torch.cat([p.reshape(-1) for p in params])
    H = torch.autograd.functional.hessian(loss_of, flat)
    assert torch.allclose(H, H.T, atol=1e-12)
    return H


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_a_criterion_that_does_not_average_is_refused(reduction):
    model, (x, y) = _model(), _data(ignored=0)
    with pytest.raises(ValueError, match=rf"reduction={reduction!r}.*reduction='mean'"):
        HessianOperator(model, nn.CrossEntropyLoss(reduction=reduction), (x, y))
    with pytest.raises(ValueError, match="loss_fn returning"):
        ModelLoss(model, nn.MSELoss(reduction=reduction), (x, y))
    # a mean and KL divergence's batch mean pass
    HessianOperator(model, nn.CrossEntropyLoss(reduction="mean"), (x, y))


CRITERIA = {
    "ignore_index": nn.CrossEntropyLoss(),
    "class weights": nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.25]).double()),
    "label smoothing": nn.CrossEntropyLoss(label_smoothing=0.1),
    "weights and smoothing": nn.CrossEntropyLoss(
        weight=torch.tensor([0.5, 2.0, 1.25]).double(), label_smoothing=0.2
    ),
    "other ignore_index": nn.CrossEntropyLoss(ignore_index=2),
    "nll weighted": nn.NLLLoss(weight=torch.tensor([3.0, 1.0, 0.25]).double()),
    "functional": F.cross_entropy,
}


@pytest.mark.parametrize("name", list(CRITERIA))
def test_ignored_targets_are_not_counted(name):
    """Two unequal batches, a third of the labels ignored: the full-data Hessian exactly."""
    criterion = CRITERIA[name]
    model, (x, y) = _model(), _data()
    if getattr(criterion, "ignore_index", -100) != -100:
        y = torch.where(y == -100, criterion.ignore_index, y)  # class 2 is the one ignored
    if isinstance(criterion, nn.NLLLoss):
        model.append(nn.LogSoftmax(1))
    batches = [(x[:14], y[:14]), (x[14:], y[14:])]  # 14 + 22 samples, 12 ignored in the first
    H = _dense_full_data_hessian(model, criterion, x, y)
    op = HessianOperator(model, criterion, batches)
    dense = op.matmat(torch.eye(op.shape[0], dtype=torch.float64))
    assert torch.allclose(dense, H, rtol=1e-10, atol=1e-12), float((dense - H).abs().max())
    top = hs.eigsh(op, 1, tol=1e-10, seed=0).eigenvalues[0]
    assert top == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-8)


def test_criterion_weight_follows_torch_definition():
    y = torch.tensor([0, 2, -100, 1, 2, -100])
    assert criterion_weight(nn.CrossEntropyLoss(), y) == 4.0
    assert criterion_weight(F.nll_loss, y) == 4.0
    w = torch.tensor([1.0, 10.0, 100.0])
    assert criterion_weight(nn.CrossEntropyLoss(weight=w), y) == 1 + 100 + 10 + 100
    assert criterion_weight(nn.NLLLoss(ignore_index=2), torch.tensor([2, 2, 0])) == 1.0
    # segmentation targets: every element counts
    assert criterion_weight(nn.CrossEntropyLoss(), torch.zeros(2, 5, 3, dtype=torch.long)) == 30
    # class probabilities and other criteria: the batch's samples (None here)
    assert criterion_weight(nn.CrossEntropyLoss(), torch.rand(4, 3)) is None
    assert criterion_weight(nn.MSELoss(), torch.rand(4, 3)) is None


def test_a_batch_with_only_ignored_targets_is_named():
    model, (x, y) = _model(), _data(ignored=0)
    y = y.clone()
    y[:8] = -100
    op = HessianOperator(model, nn.CrossEntropyLoss(), [(x[:8], y[:8]), (x[8:], y[8:])])
    with pytest.raises(ValueError, match="no target other than ignore_index=-100"):
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))
