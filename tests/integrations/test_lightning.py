"""The Lightning callback: TensorBoard scalars read back, and a run identical to one without it."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch", reason="the [lightning] extra is not installed")
pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")

from hessian_spectra.integrations.lightning import SpectrumCallback  # noqa: E402
from hessian_spectra.integrations.tensorboard import read_histograms, read_scalars  # noqa: E402
from hessian_spectra.results import MonitorKeys as Key  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self, optimizer: str = "adam"):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 3))
        self.kind = optimizer

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        if self.kind == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-2)
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g)
    return x, y


def fit(tmp_path, callbacks, optimizer="adam", epochs=2):
    pl.seed_everything(0, verbose=False)
    np.random.seed(0)
    random.seed(0)
    model = Tiny(optimizer)
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="run", version=0)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, loader)
    state = {
        "params": [p.detach().clone() for p in model.parameters()],
        "optimizer": trainer.optimizers[0].state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
        "training": [m.training for m in model.modules()],
    }
    return trainer, model, logger, state


def test_scalars_histograms_and_result_through_the_trainer_logger(tmp_path):
    x, y = data()
    cb = SpectrumCallback(
        (x[:32], y[:32]), nn.CrossEntropyLoss(), every_n_steps=2, k=2, density=8, max_overhead=None
    )
    trainer, model, logger, _ = fit(tmp_path, [cb])
    scalars = read_scalars(logger.log_dir)
    steps = [2, 4, 6, 8]  # 8 optimizer steps: 4 batches x 2 epochs
    for tag in ("hessian/lambda_1", "hessian/lambda_2", "hessian/trace", "hessian/threshold"):
        assert [s for s, _ in scalars[tag]] == steps, tag
    assert [s for s, _ in scalars["hessian/preconditioned_lambda_1"]] == steps
    assert scalars["hessian/threshold"][0][1] == pytest.approx(3800.0)  # 38 / lr, Adam
    assert "train_loss" in scalars and "hessian/overhead" in scalars
    hist = read_histograms(logger.log_dir)["hessian/density"]
    assert [s for s, _, _ in hist] == steps
    assert sum(hist[0][2]) == pytest.approx(sum(p.numel() for p in model.parameters()))
    res = cb.result()
    assert [r[Key.STEP] for r in res.records] == steps
    values = [r[Key.EIGENVALUES][0] for r in res.records]
    np.testing.assert_allclose([v for _, v in scalars["hessian/lambda_1"]], values, rtol=1e-6)
    assert res.settings["max_overhead"] is None and res.settings["overhead"] > 0


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_run_is_the_same_with_and_without_the_callback(tmp_path, optimizer):
    """Parameters, optimizer state, RNG streams and modes: bit for bit (Dropout draws masks)."""
    x, y = data()
    cb = SpectrumCallback(
        [(x[:16], y[:16]), (x[16:40], y[16:40])],
        nn.CrossEntropyLoss(),
        every_n_steps=1,
        k=2,
        max_overhead=None,
    )
    _, _, _, with_cb = fit(tmp_path / "a", [cb], optimizer)
    _, _, _, without = fit(tmp_path / "b", [], optimizer)
    assert len(cb.result().records) == 8
    for a, b in zip(with_cb["params"], without["params"], strict=True):
        assert torch.equal(a, b)
    for key, st in with_cb["optimizer"]["state"].items():
        for name, value in st.items():
            assert torch.equal(
                torch.as_tensor(value), torch.as_tensor(without["optimizer"]["state"][key][name])
            )
    assert torch.equal(with_cb["torch_rng"], without["torch_rng"])
    assert np.array_equal(with_cb["numpy_rng"], without["numpy_rng"])
    assert with_cb["python_rng"] == without["python_rng"]
    assert with_cb["training"] == without["training"]


def test_a_loss_that_draws_random_numbers_leaves_every_stream_as_it_was(tmp_path):
    """The measurement's own draws (here three per HVP pass) are undone: the runs still agree."""

    def noisy_loss(module, batch):
        noise = torch.rand(()) + float(np.random.rand()) + random.random()
        return nn.functional.cross_entropy(module(batch[0]), batch[1]) + 0.0 * noise

    x, y = data()
    cb = SpectrumCallback(
        (x[:16], y[:16]), loss_fn=noisy_loss, every_n_steps=2, k=1, trace=False, max_overhead=None
    )
    _, _, _, with_cb = fit(tmp_path / "a", [cb])
    _, _, _, without = fit(tmp_path / "b", [])
    assert len(cb.result().records) == 4
    for a, b in zip(with_cb["params"], without["params"], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(with_cb["torch_rng"], without["torch_rng"])
    assert np.array_equal(with_cb["numpy_rng"], without["numpy_rng"])
    assert with_cb["python_rng"] == without["python_rng"]


def test_every_n_epochs_and_the_budget_alone(tmp_path):
    x, y = data()
    probe = (x[:32], y[:32])
    by_epoch = SpectrumCallback(
        probe, nn.CrossEntropyLoss(), every_n_epochs=1, k=1, trace=False, max_overhead=None
    )
    fit(tmp_path / "e", [by_epoch], epochs=3)
    assert [r[Key.STEP] for r in by_epoch.result().records] == [4, 8, 12]
    assert [r["epoch"] for r in by_epoch.result().records] == [0, 1, 2]
    budget = SpectrumCallback(
        probe, loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
    )
    fit(tmp_path / "b", [budget], epochs=3)
    recs = budget.result().records
    assert 1 <= len(recs) < 12  # measurements spaced by the 5 % budget, not at every step
    assert budget.result().settings["skipped"] >= 1


def test_arguments_are_checked():
    x, y = data()
    with pytest.raises(ValueError, match="at most one of every_n_steps and every_n_epochs"):
        SpectrumCallback((x, y), nn.CrossEntropyLoss(), every_n_steps=1, every_n_epochs=1)
    with pytest.raises(ValueError, match="give max_overhead"):
        SpectrumCallback((x, y), nn.CrossEntropyLoss(), max_overhead=None)
    with pytest.raises(ValueError, match="pass data"):
        SpectrumCallback(None, nn.CrossEntropyLoss())
