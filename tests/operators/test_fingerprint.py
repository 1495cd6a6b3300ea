"""A checkpoint resumes only on the same operator: weights, data, loss and parameter selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hessian_spectra as hs
from hessian_spectra.checkpoint import CheckpointError
from hessian_spectra.operators.hessian import HessianOperator

CE = nn.CrossEntropyLoss()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _data(seed=1, n=40):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def _interrupted(op, path):
    """An eigsh run stopped part-way, its state saved in `path`."""

    def stop(record):
        if record["matvecs"] >= 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hs.eigsh(op, 3, tol=1e-10, seed=0, checkpoint=path, checkpoint_every=1, callback=stop)
    assert path.exists()


def test_resume_with_other_data_is_refused_naming_the_data(tmp_path):
    model, (x, y) = _model(), _data()
    path = tmp_path / "run.ckpt"
    _interrupted(HessianOperator(model, CE, (x, y)), path)
    x2, y2 = _data(seed=2)
    for other in ((x2, y2), (x[:-1], y[:-1]), (x, (y + 1) % 3)):  # other, fewer, relabelled
        with pytest.raises(CheckpointError, match=r"different computation \(data: saved"):
            hs.eigsh(
                HessianOperator(model, CE, other),
                3,
                tol=1e-10,
                seed=0,
                checkpoint=path,
                resume=True,
            )
    # the same data, batched and shuffled differently, are the same data: it resumes
    loader = DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True)
    res = hs.eigsh(
        HessianOperator(model, CE, loader), 3, tol=1e-10, seed=0, checkpoint=path, resume=True
    )
    assert res.converged.all() and not path.exists()


def test_resume_with_another_loss_or_selection_is_refused(tmp_path):
    model, (x, y) = _model(), _data()
    path = tmp_path / "run.ckpt"
    _interrupted(HessianOperator(model, CE, (x, y)), path)
    others = {
        "loss": HessianOperator(model, nn.CrossEntropyLoss(label_smoothing=0.1), (x, y)),
        "loss_fn": HessianOperator(
            model, data=(x, y), loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
        ),
    }
    for op in others.values():
        with pytest.raises(CheckpointError, match=r"loss: saved \"criterion CrossEntropyLoss\("):
            hs.eigsh(op, 3, tol=1e-10, seed=0, checkpoint=path, resume=True)
    # as many parameters, other ones: the selection's names differ
    torch.manual_seed(3)
    square = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)).double()
    data = (x, y.clamp(max=3))
    _interrupted(HessianOperator(square, CE, data, params=["0.weight"]), tmp_path / "sel.ckpt")
    with pytest.raises(CheckpointError, match="param_names: saved"):
        hs.eigsh(
            HessianOperator(square, CE, data, params=["2.weight"]),
            3,
            tol=1e-10,
            seed=0,
            checkpoint=tmp_path / "sel.ckpt",
            resume=True,
        )


def test_fingerprint_names_the_loss_settings_and_is_stable():
    model, (x, y) = _model(), _data()
    fp = HessianOperator(model, nn.CrossEntropyLoss(ignore_index=1), (x, y)).fingerprint()
    assert "ignore_index=1" in fp["loss"] and "reduction='mean'" in fp["loss"]
    weighted = HessianOperator(
        model, nn.CrossEntropyLoss(weight=torch.ones(3, dtype=torch.float64)), (x, y)
    ).fingerprint()
    assert "tensors" in weighted["loss"] and weighted["loss"] != fp["loss"]
    again = HessianOperator(
        model, nn.CrossEntropyLoss(ignore_index=1), [(x[:9], y[:9]), (x[9:], y[9:])]
    )
    assert again.fingerprint() == fp  # the same samples in other batches
