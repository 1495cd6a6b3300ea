"""The ``train`` command: train a built-in model, optionally monitoring its spectrum.

The digits CNN trains full batch with Adam; the ResNets with SGD, momentum
0.9, weight decay 5e-4 and the learning rate divided by 10 at half and three
quarters of the epochs (the study's recipe). Every ``--monitor-every`` epochs a
`SpectrumMonitor` measures the top eigenvalues and the trace on a fixed
subset. ``--optimizer sketchy-sgd`` trains with `hs.optim.SketchySGD` (a
Nystrom sketch of the mini-batch Hessian refreshed once per epoch, its own step
size unless ``--lr`` is given). Writes ``model.pt``, ``training.json``,
``training.png`` (loss, largest eigenvalue and step size per epoch) and, when
monitored, ``monitor.json`` and ``monitor.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from hessian_spectra._atomic import atomic_open, write_text
from hessian_spectra._progress import progress_bar
from hessian_spectra.analysis.monitor import SpectrumMonitor
from hessian_spectra.cli.errors import EXIT_INTERRUPTED, PROG, CLIError
from hessian_spectra.cli.output import note, say, table
from hessian_spectra.cli.setup import device, prepare_out
from hessian_spectra.figures import new_figure, save_figure
from hessian_spectra.optim import SketchySGD
from hessian_spectra.problems import (
    BUILTIN_MODELS,
    build_model,
    canonical_model_name,
    default_data,
    load_data,
    load_state_dict,
)


@dataclass(frozen=True)
class TrainOptions:
    """The ``train`` command's options; None picks the model's recipe default."""

    model: str = "digits-cnn"
    data: str | None = None
    checkpoint: str | None = None
    samples: int | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    decay: Sequence[float] | None = None
    monitor_every: int = 0
    monitor_samples: int = 512
    monitor_layers: bool = False
    compare_cold: bool = False
    k: int = 3
    device: str = "cpu"
    seed: int = 0
    out: str | None = None


@dataclass(frozen=True)
class _Recipe:
    epochs: int
    lr: float
    batch_size: int
    optimizer: str
    milestones: list[int]


def _recipe(o: TrainOptions, full_batch: bool, num_samples: int) -> _Recipe:
    """Epochs, lr, batch size, optimizer and lr milestones: the options, or the defaults."""
    epochs = o.epochs if o.epochs is not None else (200 if full_batch else 160)
    lr = o.lr if o.lr is not None else (1e-2 if full_batch else 0.1)
    bs = o.batch_size if o.batch_size is not None else (num_samples if full_batch else 128)
    if epochs < 1 or lr <= 0 or bs < 1:
        raise CLIError("--epochs, --lr and --batch-size must be positive")
    optimizer = o.optimizer or ("adam" if full_batch else "sgd")
    milestones = (
        []
        if (full_batch and o.decay is None) or (optimizer == "sketchy-sgd" and o.lr is None)
        else [int(f * epochs) for f in (o.decay or (0.5, 0.75))]
    )
    return _Recipe(epochs, lr, bs, optimizer, milestones)


def _optimizer(
    model: nn.Module, o: TrainOptions, r: _Recipe, full_batch: bool, steps_per_epoch: int
) -> torch.optim.Optimizer:
    if r.optimizer == "sketchy-sgd":  # one refresh per epoch, as in the paper
        return SketchySGD(
            model.parameters(),
            lr="auto" if o.lr is None else o.lr,
            update_every=steps_per_epoch,
            weight_decay=o.weight_decay or 0.0,
            seed=o.seed,
        )
    if r.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=r.lr, weight_decay=o.weight_decay or 0.0)
    wd = o.weight_decay if o.weight_decay is not None else (0.0 if full_batch else 5e-4)
    return torch.optim.SGD(model.parameters(), lr=r.lr, momentum=o.momentum, weight_decay=wd)


def _monitor(
    model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, o: TrainOptions
) -> SpectrumMonitor | None:
    """A spectrum monitor on a fixed subset (seed 0), or None when not asked for."""
    if not o.monitor_every:
        return None
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x), generator=gen)[: min(o.monitor_samples, len(x))]
    return SpectrumMonitor(
        model,
        criterion,
        (x[idx], y[idx]),
        k=o.k,
        every=o.monitor_every,
        trace=True,
        layers=o.monitor_layers,
        seed=o.seed,
        compare_cold=o.compare_cold,
    )


def _epoch(
    model: nn.Module,
    criterion: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    bs: int,
    gen: torch.Generator,
    epoch: int,
) -> tuple[float, float]:
    """One epoch over shuffled minibatches (in order when full batch): (mean loss, accuracy)."""
    model.train()
    perm = torch.randperm(len(x), generator=gen).to(x.device) if bs < len(x) else None
    total, correct, seen = 0.0, 0, 0
    for i in range(0, len(x), bs):
        sel: Any = perm[i : i + bs] if perm is not None else slice(None)
        xb, yb = x[sel], y[sel]
        opt.zero_grad(set_to_none=True)
        if isinstance(opt, SketchySGD):  # it differentiates the closure's loss itself
            out: dict[str, torch.Tensor] = {}

            def closure(
                xb: torch.Tensor = xb, yb: torch.Tensor = yb, out: dict = out
            ) -> torch.Tensor:
                out["logits"] = model(xb)
                return criterion(out["logits"], yb)

            loss = opt.step(closure)
            logits = out["logits"].detach()
            if not torch.isfinite(loss):
                raise CLIError(f"the loss became {loss.item()} at epoch {epoch}; pass --lr")
        else:
            logits = model(xb)
            loss = criterion(logits, yb)
            if not torch.isfinite(loss):
                raise CLIError(f"the loss became {loss.item()} at epoch {epoch}; lower --lr")
            loss.backward()
            opt.step()
        total += float(loss.detach()) * len(xb)
        correct += int((logits.argmax(1) == yb).sum())
        seen += len(xb)
    return total / seen, correct / seen


def train(o: TrainOptions) -> int:
    """Train a built-in model as `o` says; returns the exit status."""
    t0 = time.perf_counter()
    dev = device(o.device)
    out_dir = prepare_out(o.out or f"{PROG}-train")
    name = canonical_model_name(o.model)
    if name not in BUILTIN_MODELS:
        raise CLIError(
            f"train knows the built-in models ({', '.join(BUILTIN_MODELS)}), not {o.model!r}; "
            "train your own model with your own loop and hs.SpectrumMonitor"
        )
    full_batch = BUILTIN_MODELS[name].data == "digits"  # the digits CNN trains full batch
    data_spec = o.data or default_data(name)
    if data_spec is None:
        raise CLIError(f"--data is required for {name}: e.g. --data cifar10:/path/to/cifar")
    model = build_model(name, o.seed).to(dev)
    if o.checkpoint:
        load_state_dict(model, o.checkpoint, name)
    data = load_data(data_spec, samples=o.samples, device=dev, dtype=torch.float32)
    x, y = (
        data.batches[0]
        if len(data.batches) == 1
        else (torch.cat([b[0] for b in data.batches]), torch.cat([b[1] for b in data.batches]))
    )
    criterion = nn.CrossEntropyLoss()
    try:
        with torch.no_grad():
            criterion(model.eval()(x[:2]), y[:2])
    except Exception as exc:
        raise CLIError(
            f"model {name} does not fit data {data_spec}: {str(exc).splitlines()[0]}"
        ) from exc
    plan = _recipe(o, full_batch, len(x))
    opt = _optimizer(model, o, plan, full_batch, -(-len(x) // plan.batch_size))
    plain_gd = plan.optimizer == "sgd" and o.momentum == 0
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=plan.milestones, gamma=0.1)
    monitor = _monitor(model, criterion, x, y, o)
    gen = torch.Generator().manual_seed(o.seed)
    log: list[dict[str, Any]] = []
    ckpt = out_dir / "model.pt"
    auto = isinstance(opt, SketchySGD) and o.lr is None
    say(
        f"Training {name} on {data.description}: {plan.epochs} epochs, {plan.optimizer}, "
        f"lr {'auto' if auto else format(plan.lr, 'g')}, batch {plan.batch_size}"
    )
    try:
        with progress_bar(plan.epochs, "train", enabled=True, unit="epoch") as bar:
            for epoch in range(plan.epochs):
                loss, accuracy = _epoch(model, criterion, opt, x, y, plan.batch_size, gen, epoch)
                cur_lr = opt.param_groups[0]["lr"]
                sched.step()
                rec = {"epoch": epoch + 1, "loss": loss, "accuracy": accuracy, "lr": cur_lr}
                if isinstance(opt, SketchySGD):  # its step size and preconditioned lambda_max
                    rec.update(
                        lr=opt.last_step_size,
                        lambda_max=opt.lambda_max,
                        hvps=opt.num_matvecs,
                        rejected=opt.num_rejected,
                    )
                log.append(rec)
                bar.update(1)
                bar.set_postfix_str(f"loss {loss:.4f} acc {accuracy:.3f}", refresh=False)
                if monitor is not None:
                    m = monitor(epoch + 1, lr=cur_lr, loss=loss)
                    if m is not None:
                        tqdm.write(
                            f"epoch {epoch + 1}: λ1 = {m['eigenvalues'][0]:.5g}, trace = "
                            f"{m.get('trace', float('nan')):.5g} ({m['eig_matvecs']} HVPs)"
                        )
    except KeyboardInterrupt:
        _save_model(model, ckpt)
        note(f"interrupted at epoch {len(log)}: saved the model so far to {ckpt}")
        _save_train(out_dir, log, monitor, plain_gd)
        return EXIT_INTERRUPTED
    model.eval()
    _save_model(model, ckpt)
    files = _save_train(out_dir, log, monitor, plain_gd)
    say(
        table(
            ["epoch", "loss", "accuracy", "lr"],
            [(r["epoch"], r["loss"], r["accuracy"], r["lr"]) for r in log[-min(5, len(log)) :]],
        )
    )
    if monitor is not None and monitor.records:
        saved = monitor.hvps_saved
        say(
            f"Monitor: {len(monitor.records)} updates, {monitor.num_matvecs} HVPs"
            + (f", {saved} saved by warm starts" if saved is not None else "")
        )
    say(
        f"\nWrote {ckpt} and {len(files)} more files to {out_dir.resolve()}/ "
        f"({time.perf_counter() - t0:.1f} s). Analyse it with:\n  {PROG} analyze --model "
        f"{name} --checkpoint {ckpt} --data {data_spec}"
    )
    return 0


def _save_model(model: nn.Module, path: Path) -> None:
    """Write the state_dict atomically: a kill leaves the previous model.pt, never a torn one."""
    with atomic_open(path, "wb") as fh:
        torch.save(model.state_dict(), fh)


def _save_train(
    out_dir: Path, log: list[dict[str, Any]], monitor: SpectrumMonitor | None, plain_gd: bool
) -> list[Path]:
    """Write training.json and training.png and, when monitored, monitor.json and monitor.png."""
    files = []
    p = out_dir / "training.json"
    write_text(p, json.dumps({"epochs": log}, indent=2))
    files.append(p)
    if log:
        files.append(save_figure(_training_figure(log, monitor), out_dir / "training.png"))
    if monitor is not None and monitor.records:
        files.append(monitor.to_json(out_dir / "monitor.json"))
        # 2/lr is the stability threshold of plain gradient descent only
        fig = monitor.plot(lr_key="lr" if plain_gd else None, x_label="epoch")
        files.append(save_figure(fig, out_dir / "monitor.png"))
    return files


def _training_figure(log: list[dict[str, Any]], monitor: SpectrumMonitor | None) -> Any:
    """Loss, largest eigenvalue and step size per epoch, side by side."""
    fig, (ax_loss, ax_lam, ax_lr) = new_figure(10.5, 3.2, ncols=3)
    epochs = [r["epoch"] for r in log]
    ax_loss.plot(epochs, [r["loss"] for r in log], marker=".")
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    if any("lambda_max" in r for r in log):
        lam = [r.get("lambda_max", float("nan")) for r in log]
        ax_lam.plot(epochs, lam, marker=".", label="preconditioned Hessian (SketchySGD's L)")
    if monitor is not None and monitor.records:
        ax_lam.plot(
            [r["step"] for r in monitor.records],
            [r["eigenvalues"][0] for r in monitor.records],
            marker="o",
            label="Hessian λ1 (monitor)",
        )
    if ax_lam.lines:
        ax_lam.legend(fontsize=7)
    ax_lam.set(xlabel="epoch", ylabel="largest eigenvalue", title="λ_max")
    ax_lr.plot(epochs, [r["lr"] for r in log], marker=".")
    ax_lr.set(xlabel="epoch", ylabel="step size", yscale="log", title="step size")
    return fig


def cmd_train(args: argparse.Namespace) -> int:
    """The ``train`` command."""
    return train(
        TrainOptions(
            model=args.model,
            data=args.data,
            checkpoint=args.checkpoint,
            samples=args.samples,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            decay=args.decay,
            monitor_every=args.monitor_every,
            monitor_samples=args.monitor_samples,
            monitor_layers=args.monitor_layers,
            compare_cold=args.compare_cold,
            k=args.k,
            device=args.device,
            seed=args.seed,
            out=args.out,
        )
    )
