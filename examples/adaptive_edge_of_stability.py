"""The edge of stability for gradient descent (2 / lr) and for Adam (38 / lr, preconditioned).

Full-batch gradient descent with step size lr drives the top Hessian
eigenvalue up until it reaches 2 / lr, where it hovers while the loss keeps
falling (Cohen et al. 2021). Full-batch Adam does the same, but with the
*preconditioned* sharpness, the top eigenvalue of ``P^-1/2 H P^-1/2`` with
Adam's ``P = sqrt(v_hat) + eps``: it settles at ``(2 + 2 beta1) / ((1 - beta1) lr)``,
38 / lr for beta1 = 0.9, while the raw sharpness stays far below 2 / lr
(Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability").

This script trains a small tanh network on 512 digits with the squared error
on one-hot targets (their setting, scaled down), once with gradient descent
and once with Adam, and watches both sharpnesses with ``hs.SpectrumMonitor``
given the optimizer: each update records the raw top eigenvalue, for Adam the
preconditioned one (``hs.PreconditionedOperator`` from the optimizer's state),
and the optimizer's threshold; both eigensolves are warm-started from the
previous update's eigenvectors, a few Hessian-vector products each.

Run:
    python examples/adaptive_edge_of_stability.py        # about 2 minutes of CPU time
    python examples/adaptive_edge_of_stability.py --out docs/figures

Writes ``edge_of_stability_gd_adam.png`` and one monitor JSON per optimizer into ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

import hessian_spectra as hs
from hessian_spectra.data import digits
from hessian_spectra.figures import new_figure, save_figure, styled
from hessian_spectra.results import MonitorKeys as Key


def half_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0.5 * squared error summed over classes, averaged over samples (Cohen et al.)."""
    return 0.5 * ((outputs - targets) ** 2).sum(dim=1).mean()


def network(inputs: int, width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(inputs, width),
        nn.Tanh(),
        nn.Linear(width, width),
        nn.Tanh(),
        nn.Linear(width, 10),
    )


def run(
    optimizer: str,
    lr: float,
    steps: int,
    x: torch.Tensor,
    t: torch.Tensor,
    args: argparse.Namespace,
) -> tuple[hs.SpectrumMonitor, list[float]]:
    """Full-batch training with one optimizer, monitored every ``args.every`` steps."""
    model = network(x.shape[1], args.width, args.seed)
    if optimizer == "gd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    monitor = hs.SpectrumMonitor(
        model, half_mse, (x, t), k=1, every=args.every, trace=False, optimizer=opt, seed=args.seed
    )
    losses = []
    for step in range(steps + 1):
        loss = half_mse(model(x), t)
        losses.append(loss.item())
        monitor(step, loss=loss.item(), lr=lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return monitor, losses


def series(monitor: hs.SpectrumMonitor, key: str) -> tuple[np.ndarray, np.ndarray]:
    recs = [r for r in monitor.records if r.get(key)]
    return np.asarray([r[Key.STEP] for r in recs]), np.asarray([r[key][0] for r in recs])


@styled
def figure(
    gd: tuple[hs.SpectrumMonitor, list[float], float],
    adam: tuple[hs.SpectrumMonitor, list[float], float],
    title: str,
) -> Figure:
    """GD's sharpness against 2/lr; Adam's preconditioned and raw sharpness; both losses."""
    fig, (ax1, ax2, ax3) = new_figure(14.0, 4.2, ncols=3)
    mon, _, lr = gd
    steps, raw = series(mon, Key.EIGENVALUES)
    ax1.plot(steps, raw, color="C0", marker="o", ms=2.5, label="λ1 of H")
    ax1.axhline(2.0 / lr, color="k", ls="--", lw=1.0, label=f"2 / lr = {2.0 / lr:g}")
    ax1.set_title(f"Gradient descent, lr {lr:g}: sharpness settles at 2 / lr")
    ax1.set_xlabel("step")
    ax1.set_ylabel("top Hessian eigenvalue (loss / parameter²)")
    ax1.legend(frameon=False, fontsize=8)

    mon, _, lr = adam
    steps, pre = series(mon, Key.PRECONDITIONED_EIGENVALUES)
    rsteps, raw = series(mon, Key.EIGENVALUES)
    thr, formula = mon.records[-1][Key.THRESHOLD], mon.records[-1][Key.THRESHOLD_LABEL]
    ax2.plot(steps, pre, color="C3", marker="o", ms=2.5, label="λ1 of P^-1/2 H P^-1/2")
    ax2.axhline(thr, color="C3", ls="--", lw=1.0, label=f"{formula} = {thr:.4g}")
    ax2.plot(rsteps, raw, color="C0", marker="s", ms=2.5, label="λ1 of H (raw)")
    ax2.axhline(2.0 / lr, color="C0", ls=":", lw=1.0, label=f"2 / lr = {2.0 / lr:g}")
    ax2.set_yscale("log")
    ax2.set_title(f"Adam, lr {lr:g}: the preconditioned sharpness settles at 38 / lr")
    ax2.set_xlabel("step")
    ax2.set_ylabel("top eigenvalue (log scale)")
    ax2.legend(frameon=False, fontsize=8)

    for (_, losses, lr), name, color in ((gd, "gradient descent", "C0"), (adam, "Adam", "C3")):
        ax3.plot(losses, color=color, lw=1.0, label=f"{name}, lr {lr:g}")
    ax3.set_yscale("log")
    ax3.set_xlabel("step")
    ax3.set_ylabel("training loss (½ squared error)")
    ax3.set_title("Training loss: it keeps falling, not monotonically")
    ax3.legend(frameon=False, fontsize=8)
    fig.suptitle(title)
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gd-lr", type=float, default=0.1, help="gradient descent's step size")
    p.add_argument("--adam-lr", type=float, default=2e-3, help="Adam's step size")
    p.add_argument("--gd-steps", type=int, default=2000, help="gradient descent steps")
    p.add_argument("--adam-steps", type=int, default=1500, help="Adam steps")
    p.add_argument("--every", type=int, default=25, help="monitor every N steps")
    p.add_argument("--width", type=int, default=32, help="hidden units per layer")
    p.add_argument("--samples", type=int, default=512, help="digits used (a fixed subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization and probes")
    p.add_argument("--out", type=Path, default=Path("edge-of-stability"), help="output folder")
    args = p.parse_args()

    x, y = digits()
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: args.samples]
    x = x[idx].reshape(len(idx), -1)
    targets = nn.functional.one_hot(y[idx], 10).float()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    plan = (("gd", args.gd_lr, args.gd_steps), ("adam", args.adam_lr, args.adam_steps))
    for name, lr, steps in plan:
        t0 = time.perf_counter()
        mon, losses = run(name, lr, steps, x, targets, args)
        runs[name] = (mon, losses, lr)
        mon.to_json(args.out / f"edge_of_stability_{name}.json")
        key = Key.PRECONDITIONED_EIGENVALUES if name == "adam" else Key.EIGENVALUES
        tail = series(mon, key)[1]
        tail = tail[len(tail) // 2 :]
        thr = mon.records[-1][Key.THRESHOLD]
        print(  # noqa: T201
            f"{name} lr {lr:g}: threshold {thr:.4g}, "
            f"{'preconditioned ' if name == 'adam' else ''}sharpness over the second half "
            f"{tail.min():.4g} to {tail.max():.4g}; {len(mon.records)} updates, "
            f"{mon.num_matvecs} HVPs, {time.perf_counter() - t0:.1f} s"
        )
    fig = figure(
        runs["gd"],
        runs["adam"],
        f"Edge of stability on a tanh network ({args.samples} digits, squared error, full batch)",
    )
    path = save_figure(fig, args.out / "edge_of_stability_gd_adam.png")
    print(f"Wrote {path}")  # noqa: T201


if __name__ == "__main__":
    main()
