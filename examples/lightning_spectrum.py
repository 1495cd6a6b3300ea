"""The Hessian's spectrum while Lightning trains the digits CNN, and what watching it costs.

A `SpectrumCallback` from ``hessian_spectra.integrations.lightning`` measures,
on a fixed probe batch of 512 digits, the top-3 Hessian eigenvalues
(warm-started), the trace with its standard error and, since the optimizer is
Adam, the preconditioned sharpness beside the raw one with Adam's threshold
38 / lr. With no spacing given, the measurements are spaced by the default
budget, ``max_overhead=0.05``: at most 5 % of the training's wall time. The
values go to the trainer's TensorBoard logger (``hessian/lambda_1``, ...,
``hessian/trace``) and the series to a JSON file.

The script trains twice, with and without the callback, from the same seed,
and prints the overhead both ways: the callback's own accounting (seconds
measuring / seconds elapsed) and the difference in wall time. Needs the
``lightning`` and ``tensorboard`` extras.

Run:
    python examples/lightning_spectrum.py --epochs 40      # a few minutes on 2 CPU cores
    tensorboard --logdir lightning-spectrum                 # the hessian/ scalars
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hessian_spectra.data import digits
from hessian_spectra.integrations.lightning import SpectrumCallback
from hessian_spectra.models import digits_cnn
from hessian_spectra.results import MonitorKeys as Key


class DigitsModule(pl.LightningModule):
    """The digits CNN with cross-entropy and Adam."""

    def __init__(self, lr: float, seed: int) -> None:
        super().__init__()
        self.net = digits_cnn(seed=seed)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fit(args: argparse.Namespace, callbacks: list, name: str) -> float:
    """Train once; the wall seconds of ``trainer.fit``."""
    pl.seed_everything(args.seed, verbose=False)
    x, y = digits()
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=pl.loggers.TensorBoardLogger(str(args.out), name=name, version=0),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=10,
    )
    t0 = time.perf_counter()
    trainer.fit(DigitsModule(args.lr, args.seed), loader)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--every-n-steps", type=int, default=None, help="default: the 5 %% budget")
    p.add_argument("--max-overhead", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="skip the run without the callback")
    p.add_argument("--out", type=Path, default=Path("lightning-spectrum"))
    args = p.parse_args()

    x, y = digits()
    probe = (x[:512], y[:512])  # a fixed probe batch: the same Hessian at every measurement
    cb = SpectrumCallback(
        probe,
        nn.CrossEntropyLoss(),
        every_n_steps=args.every_n_steps,
        k=3,
        max_overhead=args.max_overhead,
    )
    plain = float("nan") if args.no_baseline else fit(args, [], "plain")
    watched = fit(args, [cb], "watched")
    res = cb.result()
    res.to_json(args.out / "spectrum.json")
    recs = res.records
    warm = [r[Key.EIG_MATVECS] for r in recs if r[Key.WARM]]
    print(  # noqa: T201
        f"{len(recs)} measurements at steps {[r[Key.STEP] for r in recs]}; "
        f"skipped {res.settings['skipped']} by the budget\n"
        f"top eigenvalue {recs[0][Key.EIGENVALUES][0]:.4g} -> {recs[-1][Key.EIGENVALUES][0]:.4g}; "
        f"preconditioned {recs[-1].get(Key.PRECONDITIONED_EIGENVALUES, [float('nan')])[0]:.4g} "
        f"against 38 / lr = {recs[-1][Key.THRESHOLD]:.4g}\n"
        f"HVPs per top-3 eigensolve: cold {recs[0][Key.EIG_MATVECS]}, warm "
        f"{min(warm, default=0)}-{max(warm, default=0)}\n"
        f"overhead: {res.settings['overhead']:.1%} by the callback's clock "
        f"({res.settings['seconds_measuring']:.1f} s of {res.settings['seconds_elapsed']:.1f} s); "
        f"wall time {watched:.1f} s with, {plain:.1f} s without ({watched / plain - 1:+.1%})"
    )


if __name__ == "__main__":
    main()
