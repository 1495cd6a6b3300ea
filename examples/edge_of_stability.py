"""The edge of stability: full-batch gradient descent drives the sharpness to 2 / learning rate.

Cohen, Kaur, Li, Kolter and Talwalkar (2021) observed that under full-batch
gradient descent with step size eta the top Hessian eigenvalue (the
"sharpness") rises until it reaches the stability threshold 2 / eta of the
quadratic model, and then hovers there while the loss keeps falling, not
monotonically. This script reproduces that on the digits CNN with the mean
squared error on one-hot targets (their main setting), watching the sharpness
with `hs.SpectrumMonitor` every few steps. Each update is warm-started from
the previous eigenvector, so it costs a few Hessian-vector products; with
``--compare-cold`` the monitor also runs the cold starts it replaces and
reports the HVPs saved.

Run:
    python examples/edge_of_stability.py                 # about a minute on 2 CPU cores
    python examples/edge_of_stability.py --lrs 0.05 0.1 0.2 --steps 2000 --compare-cold

Writes ``edge_of_stability.png`` (sharpness against 2/lr, and the loss) and one
monitor JSON per learning rate into ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

import hessian_spectra as hs
from hessian_spectra.data import digits
from hessian_spectra.figures import new_figure, save_figure, styled
from hessian_spectra.models import digits_cnn
from hessian_spectra.results import MonitorKeys


def half_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0.5 * squared error summed over classes, averaged over samples (Cohen et al. 2021)."""
    return 0.5 * ((outputs - targets) ** 2).sum(dim=1).mean()


def run(
    lr: float, steps: int, every: int, x: torch.Tensor, t: torch.Tensor, args: argparse.Namespace
) -> tuple[hs.SpectrumMonitor, list[float]]:
    """Full-batch gradient descent at one learning rate, monitored.

    Returns:
        The monitor and the loss at every step.
    """
    model = digits_cnn(seed=args.seed)
    monitor = hs.SpectrumMonitor(
        model,
        half_mse,
        (x, t),
        k=1,
        every=every,
        tol=1e-3,
        trace=False,
        compare_cold=args.compare_cold,
        seed=args.seed,
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for step in range(steps + 1):
        loss = half_mse(model(x), t)
        losses.append(loss.item())
        monitor(step, lr=lr, loss=loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return monitor, losses


@styled
def figure(
    monitors: dict[float, hs.SpectrumMonitor], losses: dict[float, list[float]], title: str
) -> Figure:
    """Sharpness against 2/lr (top) and the training loss (bottom), one colour per lr."""
    fig, (ax1, ax2) = new_figure(7.5, 6.0, nrows=2, sharex=True)
    for j, (lr, mon) in enumerate(monitors.items()):
        steps = [r[MonitorKeys.STEP] for r in mon.records]
        ax1.plot(
            steps,
            [r[MonitorKeys.EIGENVALUES][0] for r in mon.records],
            color=f"C{j}",
            marker="o",
            ms=2.5,
            label=f"λ1, learning rate {lr:g}",
        )
        ax1.axhline(2.0 / lr, color=f"C{j}", ls="--", lw=1.0, label=f"2 / {lr:g}")
        ax2.plot(losses[lr], color=f"C{j}", lw=1.0, label=f"lr {lr:g}")
    ax1.set_ylabel("top Hessian eigenvalue λ1 (sharpness)")
    ax1.set_title("Sharpness rises to 2 / learning rate and hovers there")
    ax1.legend(frameon=False, fontsize=8, ncol=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("gradient descent step")
    ax2.set_ylabel("training loss (½ squared error)")
    ax2.set_title("Training loss: still falls, not monotonically")
    ax2.legend(frameon=False, fontsize=8)
    fig.suptitle(title)
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.2], help="learning rates")
    p.add_argument("--steps", type=int, default=1000, help="gradient descent steps per run")
    p.add_argument("--every", type=int, default=25, help="monitor every N steps")
    p.add_argument("--samples", type=int, default=512, help="digits used (a fixed subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization and probes")
    p.add_argument("--compare-cold", action="store_true", help="measure the HVPs saved")
    p.add_argument("--out", type=Path, default=Path("edge-of-stability"), help="output folder")
    args = p.parse_args()

    x, y = digits()
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: args.samples]
    x, targets = x[idx], nn.functional.one_hot(y[idx], 10).float()
    args.out.mkdir(parents=True, exist_ok=True)
    monitors, losses = {}, {}
    for lr in args.lrs:
        t0 = time.perf_counter()
        mon, losses[lr] = run(lr, args.steps, args.every, x, targets, args)
        monitors[lr] = mon
        mon.to_json(args.out / f"monitor_lr{lr:g}.json")
        tail = [r[MonitorKeys.EIGENVALUES][0] for r in mon.records[len(mon.records) // 2 :]]
        saved = mon.hvps_saved
        print(  # noqa: T201
            f"lr {lr:g}: 2/lr = {2 / lr:.4g}, sharpness over the second half "
            f"{min(tail):.4g} to {max(tail):.4g}; {len(mon.records)} updates, "
            f"{mon.num_matvecs} HVPs"
            + (f" ({saved} saved by warm starts)" if saved is not None else "")
            + f", {time.perf_counter() - t0:.1f} s"
        )
    fig = figure(
        monitors,
        losses,
        f"Edge of stability: full-batch GD on the digits CNN ({args.samples} samples, MSE)",
    )
    path = save_figure(fig, args.out / "edge_of_stability.png")
    print(f"Wrote {path}")  # noqa: T201


if __name__ == "__main__":
    main()
