"""SketchySGD with its defaults against SGD, Adam, AdaHessian and SophiaH with tuned step sizes.

Six problems: ridge regression on scikit-learn's diabetes data and logistic
regression on its breast-cancer data, each with raw and with standardized
features (raw, the features span four orders of magnitude: ill-conditioned);
the digits CNN (`hessian_spectra.problems`) on 1,437 training digits; and a
tiny character-level transformer language model on Python's own standard
library source files. Every optimizer but SketchySGD gets a learning-rate grid
(seed 0 picks the best final training loss; the grid and every grid result go
to the JSON), then runs with that rate on the other seeds. SketchySGD runs
with its defaults (rank 10, lr "auto", one refresh per epoch as in the paper;
the language model's "epoch" is longer than the run, so it keeps the
library's default of one refresh per 100 steps).

The cost axis is gradient-equivalents: each step's gradient counts 1, and
every Hessian-vector product (HVP) and every gradient graph built for HVPs
(``create_graph=True``) counts at its cost measured on that problem, in
gradients. AdaHessian takes one Hutchinson HVP per step, SophiaH one every 10
steps, SketchySGD ``rank`` per refresh plus its step-size estimates.

Also measured: how much the step-size eigenvalue L (the largest eigenvalue of
the preconditioned Hessian) varies across mini-batches, at SketchySGD's final
preconditioner on each problem.

Writes ``benchmarks/results/optimizers.json`` and ``optimizers.png``. Needs the
``bench`` extra (``pytorch-optimizer``). ``--quick`` runs a smaller version.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import CACHE, RESULTS, _jsonable, write_json
from sklearn.datasets import load_breast_cancer, load_diabetes
from torch import nn

import hessian_spectra as hs
from hessian_spectra.figures import new_figure, save_figure
from hessian_spectra.optim.sketchy import top_eigenvalue
from hessian_spectra.problems import build_model, load_data

try:
    from pytorch_optimizer import AdaHessian, SophiaH
except ImportError:  # the bench extra is missing
    AdaHessian = SophiaH = None

SEEDS = (0, 1, 2)
OPTIMIZERS = ("sketchy-sgd", "sgd", "adam", "adahessian", "sophiah")
ADAPTIVE_GRID = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
SGD_MOMENTUM = 0.9
RIDGE_MU = 1e-3  # the L2 term (mu / 2) ||w||^2 of ridge and logistic regression


# ------------------------------------------------------------------ problems


@dataclass
class Problem:
    name: str
    kind: str  # "convex" or "net"
    make_model: Callable[[int], nn.Module]
    loss: Callable[[nn.Module, Any], torch.Tensor]  # mini-batch objective
    train_batch: Callable[[torch.Generator], Any]
    evaluate: Callable[[nn.Module], float]  # the objective the curves show
    steps: int
    steps_per_epoch: int
    eval_every: int
    f_star: float | None = None
    full_batch: Any = None  # the whole data set as one batch (convex problems)


def _linear(d: int, dtype: torch.dtype) -> Callable[[int], nn.Module]:
    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Linear(d, 1).to(dtype)

    return make


def _l2(model: nn.Module) -> torch.Tensor:
    return 0.5 * RIDGE_MU * sum((p**2).sum() for p in model.parameters())  # type: ignore[return-value]


def _sampler(n: int, b: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randint(0, n, (b,), generator=g)


def convex_problem(name: str, logistic: bool, standardize: bool, epochs: int) -> Problem:
    if logistic:
        X, y = load_breast_cancer(return_X_y=True)
    else:
        X, y = load_diabetes(return_X_y=True, scaled=False)
        y = (y - y.mean()) / y.std()
    if standardize:
        X = (X - X.mean(0)) / X.std(0)
    Xt = torch.as_tensor(X, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    n, d = Xt.shape
    b = 32

    def loss(model: nn.Module, idx: Any) -> torch.Tensor:
        out = model(Xt[idx])[:, 0]
        if logistic:
            data = nn.functional.binary_cross_entropy_with_logits(out, yt[idx])
        else:
            data = 0.5 * ((out - yt[idx]) ** 2).mean()
        return data + _l2(model)

    everything = torch.arange(n)

    def evaluate(model: nn.Module) -> float:
        with torch.no_grad():
            return float(loss(model, everything))

    f_star = _convex_minimum(loss, X, np.asarray(y, dtype=float), logistic)
    spe = math.ceil(n / b)
    return Problem(
        name, "convex", _linear(d, torch.float64), loss, _sampler(n, b), evaluate,
        steps=epochs * spe, steps_per_epoch=spe, eval_every=max(1, spe // 2), f_star=f_star,
        full_batch=everything,
    )  # fmt: skip


def _convex_minimum(
    loss: Callable[[nn.Module, Any], torch.Tensor], X: np.ndarray, y: np.ndarray, logistic: bool
) -> float:
    """The exact minimum of the float64 objective: a linear solve (ridge) or Newton with
    backtracking (logistic), on [X, 1] with every coefficient in the L2 term."""
    n, d = X.shape
    X1 = np.hstack([X, np.ones((n, 1))])

    def f(t: np.ndarray) -> float:
        z = X1 @ t
        return float(np.mean(np.logaddexp(0, z) - y * z) + 0.5 * RIDGE_MU * t @ t)

    if not logistic:
        theta = np.linalg.solve(X1.T @ X1 / n + RIDGE_MU * np.eye(d + 1), X1.T @ y / n)
    else:
        theta = np.zeros(d + 1)
        for _ in range(200):
            p = 1 / (1 + np.exp(-(X1 @ theta)))
            g = X1.T @ (p - y) / n + RIDGE_MU * theta
            H = (X1.T * (p * (1 - p))) @ X1 / n + RIDGE_MU * np.eye(d + 1)
            step = np.linalg.solve(H, g)
            t, f0 = 1.0, f(theta)
            while f(theta - t * step) > f0 - 0.25 * t * (g @ step) and t > 1e-12:
                t *= 0.5
            theta = theta - t * step
            if g @ step < 1e-28:
                break
    model = nn.Linear(d, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(theta[:d])[None])
        model.bias.copy_(torch.as_tensor(theta[d:]))
        return float(loss(model, torch.arange(n)))


def cnn_problem(epochs: int) -> Problem:
    data = load_data("digits", dtype=torch.float32)
    x, y = data.batches[0]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1437], perm[1437:]
    xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    criterion = nn.CrossEntropyLoss()
    b = 64

    def loss(model: nn.Module, idx: Any) -> torch.Tensor:
        return criterion(model(xtr[idx]), ytr[idx])

    def evaluate(model: nn.Module) -> float:
        with torch.no_grad():
            return float(criterion(model(xtr), ytr))

    spe = math.ceil(len(xtr) / b)
    prob = Problem(
        "digits-cnn", "net", lambda s: build_model("digits-cnn", s), loss, _sampler(len(xtr), b),
        evaluate, steps=epochs * spe, steps_per_epoch=spe, eval_every=max(1, spe // 2),
    )  # fmt: skip
    prob.test = (xte, yte)  # type: ignore[attr-defined]
    return prob


class _Block(nn.Module):
    """Pre-norm causal self-attention and MLP in plain matmuls (double backward works)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
        shape = (B, T, self.heads, D // self.heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // self.heads)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 128, d: int = 32, ctx: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.Sequential(*[_Block(d, 4) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.ln(self.blocks(self.tok(idx) + self.pos(pos))))


def python_source_text(chars: int) -> str:
    """The first `chars` characters of the standard library's .py files (sorted), ASCII."""
    lib = Path(math.__file__).parent if hasattr(math, "__file__") else None
    lib = Path(argparse.__file__).parent if lib is None or lib.name == "lib-dynload" else lib
    out, total = [], 0
    for path in sorted(lib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        out.append(text)
        total += len(text)
        if total >= chars:
            break
    text = "".join(out)[:chars]
    return "".join(c if ord(c) < 128 else "?" for c in text)


def lm_problem(steps: int, chars: int = 400_000, ctx: int = 32, b: int = 16) -> Problem:
    text = python_source_text(chars)
    data = torch.tensor([ord(c) for c in text], dtype=torch.int64)
    split = int(0.9 * len(data))
    train, held = data[:split], data[split:]
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(held) - ctx - 1, (64,), generator=g)
    held_x = torch.stack([held[s : s + ctx] for s in starts])
    held_y = torch.stack([held[s + 1 : s + ctx + 1] for s in starts])
    criterion = nn.CrossEntropyLoss()

    def batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.randint(0, len(train) - ctx - 1, (b,), generator=gen)
        return (
            torch.stack([train[i : i + ctx] for i in s]),
            torch.stack([train[i + 1 : i + ctx + 1] for i in s]),
        )

    def loss(model: nn.Module, xy: Any) -> torch.Tensor:
        x, y = xy
        return criterion(model(x).reshape(-1, 128), y.reshape(-1))

    def evaluate(model: nn.Module) -> float:
        with torch.no_grad():
            return float(loss(model, (held_x, held_y)))

    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return TinyLM(ctx=ctx)

    prob = Problem(
        "tiny-lm", "net", make, loss, batch, evaluate, steps=steps,
        steps_per_epoch=100, eval_every=max(1, steps // 12),
    )  # fmt: skip
    prob.text_chars = len(text)  # type: ignore[attr-defined]
    return prob


# ------------------------------------------------------------------ costs


def measure_costs(prob: Problem, repeats: int = 15) -> dict[str, float]:
    """Seconds of a gradient, of a gradient with a graph for HVPs, and of one HVP on that graph.

    The three are timed in turn within each repeat and the ratios are medians of
    the per-repeat ratios, so that a load that changes during the measurement
    (a shared machine) cancels out of them.
    """
    model = prob.make_model(0)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(123)
    batch = prob.train_batch(g)

    def grad(create: bool, hvps: int) -> None:
        loss = prob.loss(model, batch)
        gs = torch.autograd.grad(loss, params, create_graph=create)
        for _ in range(hvps):
            vs = [torch.randn_like(p) for p in params]
            torch.autograd.grad(gs, params, grad_outputs=vs, retain_graph=True)

    def timed(fn: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    grad(True, 10)  # warm-up
    rows = []
    for _ in range(repeats):
        t_grad = timed(lambda: grad(False, 0))
        t_graph = timed(lambda: grad(True, 0))
        t_hvps = timed(lambda: grad(True, 10))
        rows.append((t_grad, t_graph, max(t_hvps - t_graph, 0.0) / 10))
    a = np.asarray(rows)
    return {
        "grad_seconds": float(np.median(a[:, 0])),
        "graph_seconds": float(np.median(a[:, 1])),
        "hvp_seconds": float(np.median(a[:, 2])),
        "graph_extra_in_gradients": float(np.median(np.maximum(a[:, 1] / a[:, 0] - 1.0, 0.0))),
        "hvp_in_gradients": float(np.median(a[:, 2] / a[:, 0])),
        "repeats": repeats,
    }


def lambda_max_at_init(prob: Problem) -> float:
    """The Hessian's largest eigenvalue at seed 0's initialization, the centre of SGD's grid.

    Of the full objective for the convex problems, of one mini-batch for the networks.
    """
    model = prob.make_model(0)
    batch = prob.full_batch
    if batch is None:
        batch = prob.train_batch(torch.Generator().manual_seed(7))
    op = hs.HessianOperator(model, data=batch, loss_fn=prob.loss)
    return float(hs.eigsh(op, k=1, tol=1e-3, seed=0).eigenvalues[0])


# ------------------------------------------------------------------ runs


def make_optimizer(name: str, params: list[torch.Tensor], lr: float | None, prob: Problem):
    if name == "sketchy-sgd":
        every = prob.steps_per_epoch if prob.name != "tiny-lm" else None
        return hs.optim.SketchySGD(params, update_every=every, seed=0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adahessian":
        return AdaHessian(params, lr=lr)
    if name == "sophiah":
        return SophiaH(params, lr=lr)
    raise ValueError(name)


def run(prob: Problem, name: str, lr: float | None, seed: int, costs: dict[str, float]) -> dict:
    torch.manual_seed(seed)
    model = prob.make_model(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(name, params, lr, prob)
    if name == "sketchy-sgd":
        opt.seed = 1000 * seed + 17
    gen = torch.Generator().manual_seed(10_000 + seed)
    graphs = hvps = 0
    curve: list[dict[str, float]] = []
    t_train = 0.0
    diverged = False

    def point(step: int) -> None:
        ge = step + graphs * costs["graph_extra_in_gradients"] + hvps * costs["hvp_in_gradients"]
        value = prob.evaluate(model)
        curve.append({"step": step, "grad_equiv": ge, "seconds": t_train, "hvps": hvps,
                      "loss": value})  # fmt: skip

    point(0)
    for t in range(prob.steps):
        batch = prob.train_batch(gen)
        t0 = time.perf_counter()
        if name == "sketchy-sgd":
            loss = opt.step(lambda batch=batch: prob.loss(model, batch))
            graphs, hvps = opt.num_graphs, opt.num_matvecs
        else:
            hessian_step = name == "adahessian" or (name == "sophiah" and t % 10 == 0)
            opt.zero_grad(set_to_none=True)
            loss = prob.loss(model, batch)
            loss.backward(create_graph=hessian_step)
            opt.step()
            if hessian_step:
                graphs += 1
                hvps += 1
                opt.zero_grad(set_to_none=True)  # drop the graph held by .grad
        t_train += time.perf_counter() - t0
        finite = all(bool(torch.isfinite(p).all()) for p in params)
        if not math.isfinite(float(loss.detach())) or not finite:
            diverged = True
            break
        if (t + 1) % prob.eval_every == 0 or t + 1 == prob.steps:
            point(t + 1)
            if not math.isfinite(curve[-1]["loss"]) or curve[-1]["loss"] > 1e6 * (
                abs(curve[0]["loss"]) + 1
            ):
                diverged = True
                break
    final = curve[-1]["loss"] if not diverged else math.inf
    out: dict[str, Any] = {
        "lr": lr,
        "seed": seed,
        "diverged": diverged,
        "final_loss": final,
        "steps": curve[-1]["step"],
        "hvps": hvps,
        "graphs": graphs,
        "train_seconds": t_train,
        "curve": curve,
    }
    if prob.f_star is not None:
        out["final_suboptimality"] = final - prob.f_star
    if hasattr(prob, "test") and not diverged:
        xte, yte = prob.test
        with torch.no_grad():
            out["test_accuracy"] = float((model(xte).argmax(1) == yte).float().mean())
    if name == "sketchy-sgd":
        out["history"] = opt.history
        out["model_state"] = model  # used for the variation measurement, dropped before JSON
        out["optimizer"] = opt
    return out


def l_variation(prob: Problem, res: dict, batches: int = 10) -> dict[str, Any]:
    """L of the final preconditioner on `batches` fresh mini-batches: how much it varies."""
    model, opt = res.pop("model_state"), res.pop("optimizer")
    pre = opt.preconditioner
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(999)
    values = []
    top = None
    for _ in range(batches):
        batch = prob.train_batch(g)
        op = hs.HessianOperator(model, data=batch, loss_fn=prob.loss, params=params)
        upper, _, _, top = top_eigenvalue(pre.preconditioned(op), top, 5, g)
        values.append(upper)
    v = np.asarray(values)
    ratios = [r["ratio"] for r in res["history"] if r["kind"] == "check"]
    return {
        "values": v.tolist(),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "max_over_median": float(v.max() / np.median(v)),
        "coefficient_of_variation": float(v.std() / v.mean()),
        "L_used_at_end": opt.lambda_max,
        "fresh_over_sketch_ratios_during_training": ratios,
    }


def summarize(runs: list[dict]) -> dict[str, Any]:
    finals = [r["final_loss"] for r in runs]
    key = "final_suboptimality" if "final_suboptimality" in runs[0] else "final_loss"
    vals = np.asarray([r.get(key, math.inf) for r in runs], dtype=float)
    out = {
        "metric": key,
        "median": float(np.median(vals)),
        "min": float(vals.min()),
        "max": float(vals.max()),
        "diverged_seeds": int(sum(r["diverged"] for r in runs)),
        "final_losses": finals,
        "hvps": [r["hvps"] for r in runs],
        "train_seconds": [r["train_seconds"] for r in runs],
        "grad_equiv": [r["curve"][-1]["grad_equiv"] for r in runs],
    }
    if "test_accuracy" in runs[0]:
        out["test_accuracy"] = [r.get("test_accuracy") for r in runs]
    return out


def bench_problem(prob: Problem, seeds: tuple[int, ...], log: Callable[[str], None]) -> dict:
    costs = measure_costs(prob)
    lam = lambda_max_at_init(prob)
    sgd_grid = [2.0 / lam * 10 ** (-k / 2) for k in range(7)]
    log(f"{prob.name}: costs {costs}, lambda_max at init {lam:.4g}")
    out: dict[str, Any] = {
        "steps": prob.steps, "steps_per_epoch": prob.steps_per_epoch, "costs": costs,
        "lambda_max_at_init": lam, "f_star": prob.f_star, "optimizers": {},
        "num_parameters": sum(p.numel() for p in prob.make_model(0).parameters()),
    }  # fmt: skip
    for name in OPTIMIZERS:
        t0 = time.perf_counter()
        entry: dict[str, Any] = {}
        if name == "sketchy-sgd":
            runs = [run(prob, name, None, s, costs) for s in seeds]
            entry["settings"] = "defaults (rank 10, lr auto, lr_scale 0.5, one refresh per epoch)"
            entry["lambda_variation"] = l_variation(prob, runs[0])
            for r in runs[1:]:
                r.pop("model_state", None)
                r.pop("optimizer", None)
        else:
            grid = sgd_grid if name == "sgd" else ADAPTIVE_GRID
            tried = [run(prob, name, lr, seeds[0], costs) for lr in grid]
            best = min(tried, key=lambda r: (r["final_loss"], r["lr"]))
            entry["grid"] = grid
            entry["grid_final_losses"] = [r["final_loss"] for r in tried]
            entry["best_lr"] = best["lr"]
            entry["best_at_grid_edge"] = best["lr"] in (grid[0], grid[-1])
            runs = [best] + [run(prob, name, best["lr"], s, costs) for s in seeds[1:]]
        entry["runs"] = runs
        entry["summary"] = summarize(runs)
        entry["bench_seconds"] = time.perf_counter() - t0
        out["optimizers"][name] = entry
        s = entry["summary"]
        log(f"  {name:12s} lr {entry.get('best_lr', 'auto')!s:>10} median {s['metric']} "
            f"{s['median']:.4g} (diverged {s['diverged_seeds']}) HVPs {s['hvps'][0]} "
            f"[{entry['bench_seconds']:.0f} s]")  # fmt: skip
    return out


# ------------------------------------------------------------------ figure

COLORS = {"sketchy-sgd": "C3", "sgd": "C0", "adam": "C1", "adahessian": "C2", "sophiah": "C4"}


def figure(results: dict, path: Path) -> Path:
    names = list(results["problems"])
    fig, axes = new_figure(12.0, 6.6, nrows=2, ncols=3)
    for ax, pname in zip(np.ravel(axes), names, strict=False):
        pr = results["problems"][pname]
        f_star = pr["f_star"]
        for oname, entry in pr["optimizers"].items():
            curves = [r["curve"] for r in entry["runs"]]
            m = min(len(c) for c in curves)
            x = np.median([[p["grad_equiv"] for p in c[:m]] for c in curves], axis=0)
            ys = np.asarray([[p["loss"] for p in c[:m]] for c in curves], dtype=float)
            if f_star is not None:
                ys = np.maximum(ys - f_star, 1e-16)
            label = oname + ("" if oname == "sketchy-sgd" else f" (lr {entry['best_lr']:.2g})")
            ax.plot(x, np.median(ys, 0), color=COLORS[oname], label=label, lw=1.4)
            ax.fill_between(x, ys.min(0), ys.max(0), color=COLORS[oname], alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_title(pname, fontsize=9)
        ax.set_xlabel("gradient-equivalents")
        ax.set_ylabel("f - f*" if f_star is not None else "loss")
        ax.legend(fontsize=6)
    return save_figure(fig, path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, one seed")
    parser.add_argument("--only", nargs="*", help="problem names to run")
    parser.add_argument(
        "--part",
        help="write the problems run to benchmarks/cache/optimizers_part_PART.json (to run "
        "several processes side by side); --merge then joins the parts",
    )
    parser.add_argument("--merge", action="store_true", help="join the parts into the JSON")
    parser.add_argument(
        "--costs",
        action="store_true",
        help="only measure the HVP and graph costs (at a quiet moment) for --merge to use",
    )
    args = parser.parse_args(argv)
    name = "optimizers_quick" if args.quick else "optimizers"
    if args.merge:
        return merge(name)
    if AdaHessian is None:
        print("pytorch-optimizer is missing: pip install -e '.[bench]'")
        return 1
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")
    seeds = SEEDS[:1] if args.quick else SEEDS
    q = 4 if args.quick else 1
    makers: dict[str, Callable[[], Problem]] = {
        "ridge-diabetes-raw": lambda: convex_problem("ridge-diabetes-raw", False, False, 30 // q),
        "ridge-diabetes-std": lambda: convex_problem("ridge-diabetes-std", False, True, 30 // q),
        "logistic-cancer-raw": lambda: convex_problem("logistic-cancer-raw", True, False, 30 // q),
        "logistic-cancer-std": lambda: convex_problem("logistic-cancer-std", True, True, 30 // q),
        "digits-cnn": lambda: cnn_problem(8 // q),
        "tiny-lm": lambda: lm_problem(120 // q),
    }
    chosen = args.only or list(makers)
    if args.costs:
        torch.set_num_threads(1)
        costs = {p: measure_costs(makers[p](), repeats=31) for p in chosen}
        CACHE.mkdir(parents=True, exist_ok=True)
        (CACHE / f"{name}_costs.json").write_text(json.dumps(costs, indent=1))
        print(json.dumps(costs, indent=1))
        return 0
    t0 = time.perf_counter()
    results: dict[str, Any] = {"seeds": list(seeds), "sgd_momentum": SGD_MOMENTUM,
                               "ridge_mu": RIDGE_MU, "adaptive_grid": ADAPTIVE_GRID,
                               "problems": {}}  # fmt: skip

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    for pname in chosen:
        prob = makers[pname]()
        results["problems"][pname] = bench_problem(prob, seeds, log)
        results["problems"][pname]["bench_seconds"] = time.perf_counter() - t0
        if hasattr(prob, "text_chars"):
            results["problems"][pname]["text_chars"] = prob.text_chars
    results["total_seconds"] = time.perf_counter() - t0
    if args.part:
        CACHE.mkdir(parents=True, exist_ok=True)
        part = CACHE / f"{name}_part_{args.part}.json"
        part.write_text(json.dumps(results, default=_jsonable))
        log(f"wrote {part}")
        return 0
    path = write_json(name, results)
    fig = figure(results, RESULTS / f"{name}.png")
    log(f"wrote {path} and {fig}")
    return 0


ORDER = ("ridge-diabetes-raw", "ridge-diabetes-std", "logistic-cancer-raw",
         "logistic-cancer-std", "digits-cnn", "tiny-lm")  # fmt: skip


def merge(name: str) -> int:
    """Join the parts (each some problems) into benchmarks/results/<name>.json and its figure."""
    parts = sorted(CACHE.glob(f"{name}_part_*.json"))
    if not parts:
        print(f"no parts {name}_part_*.json in {CACHE}")
        return 1
    results: dict[str, Any] = {}
    problems: dict[str, Any] = {}
    for part in parts:
        data = json.loads(part.read_text())
        problems.update(data.pop("problems"))
        data["total_seconds"] = max(data["total_seconds"], results.get("total_seconds", 0.0))
        results.update(data)
    results["problems"] = {k: problems[k] for k in sorted(problems, key=_order)}
    results["parts_run_side_by_side"] = len(parts)
    results["torch_threads_during_runs"] = 1  # main() runs every part in one thread
    costs_file = CACHE / f"{name}_costs.json"
    if costs_file.exists():  # costs measured apart, at a quieter moment: redo the cost axis
        for pname, costs in json.loads(costs_file.read_text()).items():
            if pname in results["problems"]:
                recost(results["problems"][pname], costs)
    path = write_json(name, results)
    fig = figure(results, RESULTS / f"{name}.png")
    print(f"wrote {path} and {fig}")
    return 0


def recost(pr: dict[str, Any], costs: dict[str, float]) -> None:
    """Recompute every curve's gradient-equivalents with `costs` (the run's own kept aside)."""
    pr["costs_during_run"] = pr["costs"]
    pr["costs"] = costs
    pr["costs_measured_apart"] = True
    for oname, entry in pr["optimizers"].items():
        for r in entry["runs"]:
            done = [h["step"] for h in r.get("history", []) if h["kind"] in ("refresh", "check")]
            for point in r["curve"]:
                step, hvps = point["step"], point["hvps"]
                graphs = {"adahessian": step, "sophiah": hvps, "sketchy-sgd": None}.get(oname, 0)
                if graphs is None:
                    graphs = sum(1 for s in done if s < step)
                point["grad_equiv"] = (
                    step
                    + graphs * costs["graph_extra_in_gradients"]
                    + hvps * costs["hvp_in_gradients"]
                )
        entry["summary"]["grad_equiv"] = [r["curve"][-1]["grad_equiv"] for r in entry["runs"]]


def _order(name: str) -> int:
    return ORDER.index(name) if name in ORDER else len(ORDER)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
