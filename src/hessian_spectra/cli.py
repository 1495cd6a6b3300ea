"""The `hessian-spectra` command line (also ``python -m hessian_spectra``).

Commands: ``demo``, ``analyze``, ``eigs``, ``trace``, ``density``, ``sketch``,
``landscape``, ``train`` and ``experiment``. Every command reads the same
model and data options, prints a short table, and writes JSON (and PNG
figures) to an output folder; ``demo`` and ``analyze`` also write a
self-contained ``report.html``. This is the only module that prints.

Bad input (an unknown model or data name, a missing file, a checkpoint that does
not fit, ``--k`` too large, an output folder that is a file) ends with one line
on stderr and a non-zero exit status, never a traceback (``--traceback`` shows
it for debugging).

Long runs are resumable: ``eigs`` (Lanczos), ``trace``, ``density`` and the
same analyses of ``analyze`` save their state to ``<name>.ckpt`` in the output
folder as they go (``--save-every``); Ctrl-C (or SIGTERM) saves it and exits
with status 130, printing the command that continues the run (``--resume``).
Under ``torchrun --nproc_per_node=N`` the process group is initialized here
(gloo on CPU, nccl on GPU), each rank multiplies by its share of the data, and
only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hessian_spectra.problems import (
    BUILTIN_MODELS,
    Data,
    ProblemError,
    build_model,
    load_data,
    load_state_dict,
)

PROG = "hessian-spectra"
ANALYSES = ("eigs", "trace", "density", "sketch", "landscape", "layers")
SKETCH_KINDS = ("rademacher", "rangefinder", "nystrom")
EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """Bad input: reported as one line on stderr with a non-zero exit status."""


# =============================================================================== output
def _main_rank() -> bool:
    """Whether this process prints and writes: always, except on ranks > 0 under torchrun."""
    from hessian_spectra._distributed import is_main_process

    return is_main_process()


def _say(msg: str = "") -> None:
    if _main_rank():
        print(msg, flush=True)  # noqa: T201 - the CLI is the one place that prints


def _note(msg: str) -> None:
    if _main_rank():
        print(msg, file=sys.stderr, flush=True)  # noqa: T201


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table with right-aligned numbers."""

    def cell(x: Any) -> str:
        if isinstance(x, (bool, np.bool_)):
            return "yes" if x else "no"
        if isinstance(x, (int, np.integer)):
            return str(int(x))
        if isinstance(x, (float, np.floating)):
            v = float(x)
            return f"{v:.6g}" if math.isfinite(v) else str(v)
        return str(x)

    cells = [[cell(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


# =============================================================================== set-up
@dataclass
class Setup:
    """Everything a command needs: the model, its loss, the data, the output folder."""

    model: nn.Module
    model_name: str
    criterion: nn.Module
    data: Data
    out: Path
    seed: int
    params: str | None
    num_params: int
    settings: dict[str, Any]
    train_seconds: float = 0.0
    train_note: str = ""


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise CLIError(f"--device {name!r} is not a device name (try cpu, cuda, cuda:1)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CLIError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {name}: MPS is not available here; use --device cpu")
    return dev


def prepare_out(path: str) -> Path:
    """Create the output folder; refuse a path that is a file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give a folder to write the results into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create output folder {out}: {exc.strerror or exc}") from exc
    return out


def _selected_count(model: nn.Module, params: str | None) -> int:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is None:
        return sum(p.numel() for _, p in named)
    try:
        pattern = re.compile(params)
    except re.error as exc:
        raise CLIError(f"--params {params!r} is not a valid regex: {exc}") from exc
    chosen = [p for n, p in named if pattern.search(n)]
    if not chosen:
        sample = ", ".join(n for n, _ in named[:6])
        raise CLIError(f"--params {params!r} matches no parameter; names look like: {sample}")
    return sum(p.numel() for p in chosen)


def setup(args: argparse.Namespace, *, command: str) -> Setup:
    """Build the model, load the checkpoint and data, check they fit together."""
    seed = int(args.seed)
    dev = _device(args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    out = prepare_out(args.out or f"{PROG}-{command}")
    model = build_model(args.model, seed)
    train_seconds, train_note = 0.0, ""
    if args.checkpoint:
        load_state_dict(model, args.checkpoint, args.model)
    model = model.to(device=dev, dtype=dtype).eval()
    data = load_data(
        args.data, samples=args.samples, batch_size=args.batch_size, device=dev, dtype=dtype
    )
    criterion = {"cross-entropy": nn.CrossEntropyLoss(), "mse": nn.MSELoss()}[args.loss]
    x, y = data.example
    try:
        with torch.no_grad():
            loss = criterion(model(x), y)
        if loss.ndim != 0:
            raise ValueError(f"the loss has shape {tuple(loss.shape)}, not a scalar")
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CLIError(
            f"model {args.model} does not fit data {args.data} (inputs of shape "
            f"{tuple(x.shape[1:])}, targets {tuple(y.shape[1:]) or 'scalars'}) with the "
            f"{args.loss} loss: {msg}"
        ) from exc
    num_params = _selected_count(model, args.params)
    k = getattr(args, "k", None)
    if k is not None:
        if k < 1:
            raise CLIError(f"--k must be at least 1, got {k}")
        if k >= num_params:
            which = " matching --params" if args.params else ""
            raise CLIError(
                f"--k {k} is too large: the Hessian has {num_params} rows (parameters{which}); "
                f"use --k below {num_params}"
            )
    # the input is valid: only now spend time on training
    if args.checkpoint:
        origin = f"checkpoint {args.checkpoint}"
    elif args.model == "digits-cnn":
        from hessian_spectra.models import train_digits_cnn

        steps = int(getattr(args, "train_steps", 200))
        _note(f"no --checkpoint: training the digits CNN ({steps} full-batch Adam steps) ...")
        t0 = time.perf_counter()
        trained = train_digits_cnn(seed=seed, steps=steps)
        train_seconds = time.perf_counter() - t0
        model.load_state_dict(trained.state_dict())
        origin = f"trained here: {steps} full-batch Adam steps, lr 1e-2, seed {seed}"
        train_note = origin
    else:
        origin = f"initialization with seed {seed} (no --checkpoint)"
        _note(f"no --checkpoint: analysing {args.model} at its initialization with seed {seed}")
    settings = {
        "command": command,
        "model": args.model,
        "model origin": origin,
        "parameters analysed": num_params,
        "params regex": args.params or "all trainable",
        "data": data.description,
        "samples": data.num_samples,
        "batch size": args.batch_size or "one batch",
        "loss": args.loss,
        "device": str(dev),
        "dtype": args.dtype,
        "seed": seed,
    }
    return Setup(
        model=model,
        model_name=args.model,
        criterion=criterion,
        data=data,
        out=out,
        seed=seed,
        params=args.params,
        num_params=num_params,
        settings=settings,
        train_seconds=train_seconds,
        train_note=train_note,
    )


def _operator(s: Setup) -> Any:
    from hessian_spectra._distributed import world_size
    from hessian_spectra.operators.hessian import HessianOperator

    data = s.data.batches
    if world_size() > 1 and isinstance(data, list) and len(data) == 1:
        data = data[0]  # one batch: each rank takes a slice of its samples
    return HessianOperator(s.model, s.criterion, data, params=s.params)


# files of the runs that save their state, for the message on Ctrl-C
_STATES: list[Path] = []


def _state(s: Setup, args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Checkpoint arguments of a resumable computation: its state file in the output folder."""
    every = int(getattr(args, "save_every", 0) or 0)
    resume = bool(getattr(args, "resume", False))
    if every <= 0:
        if resume:
            raise CLIError("--resume needs the run's saved state: drop --save-every 0")
        return {}
    path = s.out / f"{name}.ckpt"
    if path.exists() and not resume:
        raise CLIError(
            f"{path} holds an interrupted {name} run: add --resume to continue it, or delete "
            "the file to start afresh"
        )
    if resume and path.exists():
        _note(f"resuming {name} from {path}")
    _STATES.append(path)
    return {"checkpoint": path, "checkpoint_every": every, "resume": resume}


# =============================================================================== analyses
@dataclass
class Outcome:
    """What a set of analyses produced: result records and written files."""

    results: dict[str, Any] = field(default_factory=dict)
    figures: list[tuple[str, Path, str]] = field(default_factory=list)  # (title, PNG, caption)
    files: list[Path] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # summary lines for the report


def _save(out: Outcome, s: Setup, name: str, result: Any) -> None:
    out.results[name] = result
    if _main_rank():
        out.files.append(result.to_json(s.out / f"{name}.json"))


def _figure(out: Outcome, s: Setup, stem: str, title: str, fig: Any, caption: str) -> None:
    if not _main_rank():
        import matplotlib.pyplot as plt

        plt.close(fig)
        return
    from hessian_spectra.plots import save_figure

    path = save_figure(fig, s.out / f"{stem}.png")
    out.files.append(path)
    out.figures.append((title, path, caption))  # the report embeds the PNG as written


def run_eigs(s: Setup, args: argparse.Namespace, out: Outcome, *, compare_power: bool) -> Any:
    """Top-k eigenpairs (and PyHessian-style power iteration beside them, when asked)."""
    from hessian_spectra import plots
    from hessian_spectra.algorithms.eigsh import eigsh

    op = _operator(s)
    method: Any = getattr(args, "method", "lanczos") or "lanczos"
    kwargs: dict[str, Any] = {}
    if getattr(args, "max_matvecs", None):
        kwargs["max_matvecs"] = args.max_matvecs
    if method == "block":
        kwargs["block_size"] = args.block_size
    if method == "lanczos":
        kwargs.update(_state(s, args, "eigs"))
    elif getattr(args, "resume", False):
        raise CLIError(f"--resume continues Lanczos runs; --method {method} saves no state")
    top = eigsh(
        op,
        args.k,
        which=getattr(args, "which", "LA"),
        method=method,
        tol=args.tol,
        seed=s.seed,
        progress=True,
        verify=bool(getattr(args, "verify", True)),
        **kwargs,
    )
    _save(out, s, "eigs", top)
    _say(
        f"\nTop-{args.k} eigenvalues ({method}, tol {args.tol:g}): {top.num_matvecs} HVPs, "
        f"{top.seconds:.2f} s"
    )
    lam = np.asarray(top.eigenvalues)
    res = np.asarray(top.residuals)
    _say(
        _table(
            ["i", "eigenvalue", "residual", "rel. residual", "converged"],
            [
                (i + 1, lam[i], res[i], res[i] / max(abs(lam[i]), 1e-300), bool(top.converged[i]))
                for i in range(lam.size)
            ],
        )
    )
    _figure(
        out,
        s,
        "eigs_convergence",
        f"Convergence of the top-{args.k} eigenvalues ({method})",
        plots.plot_convergence(top),
        "Left: Ritz values after each Hessian-vector product (red: final values). Right: the "
        "residual norm of each Ritz pair; a pair is converged below tol × |λ|.",
    )
    if compare_power:
        power = eigsh(
            _operator(s),
            args.k,
            which="LA",
            method="power",
            stop="relative_change",
            tol=1e-3,
            seed=s.seed,
            progress=True,
        )
        _save(out, s, "eigs_power", power)
        plam = np.asarray(power.eigenvalues)
        err = np.abs(plam - lam) / np.maximum(np.abs(lam), 1e-300)
        _say(
            f"Power iteration (PyHessian's rule, tol 1e-3): {power.num_matvecs} HVPs, "
            f"{power.seconds:.2f} s, max relative difference to Lanczos {err.max():.2g}"
        )
        _figure(
            out,
            s,
            "eigs_methods",
            "Lanczos vs PyHessian-style power iteration",
            plots.plot_method_comparison(
                {"Lanczos": top, "power iteration\n(PyHessian rule)": power}
            ),
            "The same top-k eigenvalues from Lanczos (full reorthogonalization, residual "
            "stopping rule) and from deflated power iteration with PyHessian's stopping rule "
            "(relative change of the Rayleigh quotient below 1e-3), and what each cost.",
        )
    return top


def run_trace(s: Setup, args: argparse.Namespace, out: Outcome) -> Any:
    from hessian_spectra.algorithms.trace import trace

    tr = trace(
        _operator(s),
        method=args.trace_method,
        # a standard-error target replaces the fixed budget
        num_matvecs=None if getattr(args, "rtol", None) else args.num_matvecs,
        rtol=getattr(args, "rtol", None),
        seed=s.seed,
        progress=True,
        **_state(s, args, "trace"),
    )
    _save(out, s, "trace", tr)
    _say(
        f"\nTrace ({tr.method}): {tr.estimate:.6g} ± {tr.stderr:.2g} (1 standard error), "
        f"{tr.num_matvecs} HVPs, {tr.seconds:.2f} s"
    )
    return tr


def _layer_label(model: nn.Module, layer: str, size: int) -> str:
    """``"conv1 Conv2d (456)"``: a layer's name, module type and parameter count."""
    try:
        kind = type(model.get_submodule(layer)).__name__
    except AttributeError:
        kind = "parameters"
    return f"{layer or '(top level)'} {kind} ({size:,})"


def run_layers(s: Setup, args: argparse.Namespace, out: Outcome) -> Any:
    """The trace and every layer's share of it, from one estimate."""
    from hessian_spectra import plots
    from hessian_spectra.analysis.layers import group_blocks, layer_traces

    tr = layer_traces(
        s.model,
        s.criterion,
        s.data.batches,
        method=args.trace_method,
        num_matvecs=args.num_matvecs,
        seed=s.seed,
        params=s.params,
        progress=True,
    )
    _save(out, s, "layers", tr)
    est = dict(tr.block_estimates or {})
    err = dict(tr.block_stderrs or {})
    sizes = {
        layer: (idx.stop - idx.start) if isinstance(idx, slice) else int(idx.numel())
        for layer, idx in group_blocks(_operator(s).blocks).items()
    }
    labels = {n: _layer_label(s.model, n, sizes.get(n, 0)) for n in est}
    if est:
        top_layer = max(est, key=lambda n: est[n])
        out.answers["layers"] = (
            f"trace = {tr.estimate:.5g} ± {tr.stderr:.2g} (1 standard error); largest layer: "
            f"{labels[top_layer]}, {100 * est[top_layer] / tr.estimate:.0f}% of the trace"
        )
    _say(
        f"\nTrace ({tr.method}): {tr.estimate:.6g} ± {tr.stderr:.2g} (1 standard error), "
        f"{tr.num_matvecs} HVPs, {tr.seconds:.2f} s; per layer, from the same probes:"
    )
    _say(
        _table(
            ["layer (parameters)", "trace", "std. error", "share"],
            [
                (labels[n], est[n], err.get(n, float("nan")), f"{100 * est[n] / tr.estimate:.1f}%")
                for n in est
            ],
        )
    )
    fig = plots.plot_layer_traces(
        {labels[n]: (est[n], err.get(n, float("nan"))) for n in est},
        title=f"Per-layer Hessian traces (total {tr.estimate:.4g} ± {tr.stderr:.2g}, "
        f"{tr.method}, {tr.num_matvecs} HVPs)",
    )
    _figure(
        out,
        s,
        "layers",
        "Per-layer Hessian traces",
        fig,
        "The trace of each layer's diagonal Hessian block, all from the same probes (their sum "
        "is the total trace), with ±1 standard error; parameter counts in brackets. Layers "
        "that keep a high trace are the sharp ones.",
    )
    return tr


def run_density(s: Setup, args: argparse.Namespace, out: Outcome, top: Any) -> Any:
    from hessian_spectra import plots
    from hessian_spectra.algorithms.density import density

    den = density(
        _operator(s),
        num_steps=args.num_steps,
        num_probes=args.num_probes,
        seed=s.seed,
        progress=True,
        **_state(s, args, "density"),
    )
    _save(out, s, "density", den)
    nodes = np.asarray(den.nodes)
    lmax = float(np.max(np.abs(nodes)))
    neg = float(den.cdf(-1e-3 * lmax))
    above = float(den.count_above(0.01 * lmax))
    out.answers["density"] = (
        f"spectrum in [{nodes.min():.4g}, {nodes.max():.4g}]; about {above:.0f} of {den.n:,} "
        f"eigenvalues above 1% of max|λ|; {100 * neg:.2f}% below -0.1% of max|λ|"
    )
    _say(
        f"\nDensity (SLQ, {args.num_steps} steps × {args.num_probes} probes, {den.num_matvecs} "
        f"HVPs): spectrum in [{nodes.min():.4g}, {nodes.max():.4g}]; {100 * neg:.2f}% of "
        f"eigenvalues below -0.1% of max|λ|; about {above:.0f} of {den.n} above 1% of max|λ|"
    )
    _figure(
        out,
        s,
        "density",
        "Spectral density",
        plots.plot_density(den, eigenvalues=None if top is None else top.eigenvalues),
        "Stochastic Lanczos quadrature: each quadrature node broadened by a Gaussian of its "
        "local spacing. Left: density on a log scale; right: the cumulative fraction of "
        "eigenvalues (red lines: top-k from Lanczos).",
    )
    return den


def run_sketch(s: Setup, args: argparse.Namespace, out: Outcome, top: Any) -> dict[str, Any]:
    from hessian_spectra import plots
    from hessian_spectra.algorithms.sketch import sketch

    kinds: tuple[Any, ...] = SKETCH_KINDS if args.kind == "all" else (args.kind,)
    if args.size >= s.num_params:
        raise CLIError(f"--size {args.size} must be below the parameter count {s.num_params}")
    results = {}
    for kind in kinds:
        sk = sketch(
            _operator(s),
            args.size,
            kind=kind,
            power_steps=args.power_steps if kind != "rademacher" else 0,
            seed=s.seed,
            progress=True,
        )
        _save(out, s, f"sketch_{kind}", sk)
        results[kind] = sk
    k = min(args.k, args.size)
    _say(f"\nSketches of size {args.size} (top-{k} eigenvalues):")
    rows = []
    ref = None if top is None else np.asarray(top.eigenvalues)[:k]
    if ref is not None:
        rows.append(("Lanczos (reference)", top.num_matvecs, *[f"{v:.5g}" for v in ref[:5]]))
    for kind, sk in results.items():
        lam = np.asarray(sk.eigenvalues)[:k]
        cells = [f"{v:.5g}" for v in lam[:5]]
        if ref is not None:
            err = np.abs(lam - ref[: lam.size]) / np.abs(ref[: lam.size])
            cells.append(f"{100 * err.max():.1f}%")
        rows.append((kind, sk.num_matvecs, *cells))
    header = ["sketch", "HVPs", *[f"λ{i + 1}" for i in range(min(k, 5))]]
    if ref is not None:
        header.append(f"max err top-{k}")
        rows[0] = (*rows[0], "")
    _say(_table(header, rows))
    if ref is not None:
        _figure(
            out,
            s,
            "sketch",
            "Sketches vs Lanczos",
            plots.plot_sketch(results, top, k=k),
            f"Top-{k} eigenvalues of each size-{args.size} sketch against Lanczos (left) and "
            "their relative error (right). The study's Rademacher sketch SᵀHS is trace-"
            "preserving but not eigenvalue-preserving; the range finder never over-estimates.",
        )
    return results


def _auto_span(top: Any) -> float:
    """A span where the quadratic model along v1 rises by about one loss unit."""
    lam1 = float(np.max(np.abs(np.asarray(top.eigenvalues)))) if top is not None else 1.0
    return float(math.sqrt(2.0 / max(lam1, 1e-12)))


def run_landscape(s: Setup, args: argparse.Namespace, out: Outcome, top: Any) -> Any:
    """A landscape along the top eigenvectors (plus 1-D curves along v1, v2 and a random
    unit direction), or along random filter-normalized or gradient directions."""
    from hessian_spectra import plots
    from hessian_spectra.analysis.landscape import (
        loss_landscape,
        random_directions,
        select_parameters,
    )

    directions = getattr(args, "directions", "eigen")
    dims = int(getattr(args, "dims", 2))
    batches = s.data.batches
    dirs: list[dict[str, torch.Tensor]] = []
    curv = np.zeros(0)
    if directions == "eigen":
        if top is None or len(top.eigenvalues) < dims:
            from hessian_spectra.algorithms.eigsh import eigsh

            top = eigsh(_operator(s), max(dims, 2), tol=1e-4, seed=s.seed, progress=True)
            _save(out, s, "eigs", top)
        op = _operator(s)
        dirs = [op.unflatten(top.eigenvectors[:, i]) for i in range(dims)]
        curv = np.asarray(top.eigenvalues, dtype=np.float64)[:dims]
    span = float(args.span) if args.span else _auto_span(top)
    if span <= 0:
        raise CLIError(f"--span must be positive, got {span}")
    land = loss_landscape(
        s.model,
        s.criterion,
        batches,
        dirs if dirs else directions,
        span=span,
        steps=args.steps,
        dims=None if dirs else dims,
        params=s.params,
        seed=s.seed,
        slopes=True,
        progress=True,
    )
    if dirs:
        land = dataclasses.replace(land, kind="eigen", curvatures=curv)
    stem = f"landscape_{directions}_{dims}d"
    _save(out, s, stem, land)
    losses = np.asarray(land.losses)
    _say(
        f"\nLoss landscape along {directions} directions ({'×'.join(map(str, losses.shape))} "
        f"grid, span ±{span:.3g}): loss {land.origin_loss:.4g} at the parameters, "
        f"{losses.min():.4g} to {losses.max():.4g} on the grid, {land.seconds:.2f} s"
    )
    what = {
        "eigen": "the top Hessian eigenvectors",
        "random": "random filter-normalized directions (Li et al. 2018)",
        "gradient": "the gradient",
    }[directions]
    _figure(
        out,
        s,
        stem,
        f"Loss landscape along {what}",
        plots.plot_landscape(land),
        "The loss on a grid through the parameters (★); eigenvector coordinates are distances "
        "in parameter space, so the curvature along each axis at ★ is its eigenvalue."
        if dirs
        else "The loss on a grid through the parameters (★).",
    )
    if dirs and getattr(args, "curves", True):
        names = [n for n, _ in select_parameters(s.model, s.params)]
        (rnd,) = random_directions(s.model, 1, seed=s.seed, params=names, filter_normalize=False)
        steps1 = max(int(args.steps), 2) * 2 - 1
        curves: dict[str, Any] = {}
        for i, d in enumerate(dirs[:2]):
            c = loss_landscape(
                s.model,
                s.criterion,
                batches,
                d,
                span=span,
                steps=steps1,
                params=s.params,
                slopes=True,
            )
            curves[f"v{i + 1} (λ{i + 1} = {curv[i]:.3g})"] = dataclasses.replace(
                c, kind="eigen", curvatures=curv[i : i + 1]
            )
        curves["random unit direction"] = loss_landscape(
            s.model,
            s.criterion,
            batches,
            rnd,
            span=span,
            steps=steps1,
            params=s.params,
            slopes=True,
        )
        for name, c in curves.items():
            out.results[f"landscape_1d_{name.split(' ')[0]}"] = c
        _figure(
            out,
            s,
            "landscape_1d",
            "Loss along single directions",
            plots.plot_landscapes_1d(curves),
            "The loss along the top eigenvectors and along a random unit direction, each "
            "eigenvector with its quadratic model L0 + gα + λα²/2 (dashed): the sharpest "
            "direction rises fastest, while a random direction barely sees the curvature.",
        )
    return land


# =============================================================================== report
def write_report(s: Setup, out: Outcome, title: str, subtitle: str) -> Path:
    if not _main_rank():
        return s.out / "report.html"
    from hessian_spectra.report import Report

    rep = Report(title, subtitle=subtitle, settings=s.settings)
    if s.train_seconds:
        rep.add_row("Training", "Adam, full batch", s.train_note, None, s.train_seconds)
    names = {
        "eigs": "Top-k eigenvalues",
        "eigs_power": "Top-k eigenvalues (power, PyHessian rule)",
        "trace": "Trace",
        "layers": "Per-layer traces",
        "density": "Spectral density",
    }
    shared_trace = out.results.get("trace") is not None and out.results.get(
        "trace"
    ) is out.results.get("layers")
    for key, res in out.results.items():
        if key.startswith("landscape_1d") or (key == "trace" and shared_trace):
            continue
        label = names.get(key)
        if label is None and key.startswith("sketch_"):
            label = f"Sketch ({key[len('sketch_') :]})"
        if label is None and key.startswith("landscape"):
            label = "Loss landscape"
        if key == "layers":
            name = "Trace and per-layer traces" if shared_trace else "Per-layer traces"
            rep.add_result(name, res, answer=out.answers.get(key))
        elif key == "eigs_power":
            lam = np.asarray(res.eigenvalues)
            rel = np.asarray(res.residuals) / np.maximum(np.abs(lam), 1e-300)
            answer = (
                f"λ1 = {lam[0]:.5g}, λ{lam.size} = {lam[-1]:.5g}; stopped by its own rule with "
                f"relative residuals up to {rel.max():.2g}"
            )
            rep.add_result(label or key, res, answer=answer)
        elif key == "density":
            rep.add_result(label or key, res, answer=out.answers.get(key), method="SLQ")
        else:
            rep.add_result(label or key, res, answer=out.answers.get(key))
    if "eigs" in out.results:
        rep.add_eigenpairs(
            "Top-k eigenpairs (Lanczos)",
            out.results["eigs"],
            caption="Residuals are ‖Hv − λv‖ of each returned pair.",
        )
    for title_, png, caption in out.figures:
        rep.add_figure(title_, png, caption)
        if png.stem == "eigs_methods" and "eigs_power" in out.results:
            rep.add_eigenpairs(
                "Top-k eigenpairs (power iteration, PyHessian's stopping rule)",
                out.results["eigs_power"],
                caption="Power iteration stops when the Rayleigh quotient changes by less "
                "than 1e-3 relatively; its residuals show how far that is from converged.",
            )
    path = rep.write(s.out / "report.html")
    out.files.append(path)
    return path


def _analyses(s: Setup, args: argparse.Namespace, what: Sequence[str], *, power: bool) -> Outcome:
    out = Outcome()
    top = None
    if "eigs" in what or "landscape" in what or "sketch" in what:
        top = run_eigs(s, args, out, compare_power=power)
    if "layers" in what:
        # one estimate serves both: the per-layer traces sum to the total
        tr = run_layers(s, args, out)
        if "trace" in what:
            out.results["trace"] = tr
    elif "trace" in what:
        run_trace(s, args, out)
    if "density" in what:
        run_density(s, args, out, top)
    if "sketch" in what:
        run_sketch(s, args, out, top)
    if "landscape" in what:
        run_landscape(s, args, out, top)
    if "eigs" not in what and "eigs" in out.results:
        # computed only to serve other analyses; keep it in the files but say so
        _note("(top eigenvalues were computed for the sketch/landscape analyses)")
    return out


def _finish(s: Setup, out: Outcome, t0: float) -> None:
    unique = {id(r): r for r in out.results.values()}.values()
    hvps = sum(int(getattr(r, "num_matvecs", 0)) for r in unique)
    _say(
        f"\nWrote {len(out.files)} file{'s' if len(out.files) != 1 else ''} to "
        f"{s.out.resolve()}/ ({hvps} HVPs, {time.perf_counter() - t0:.1f} s)"
    )


# =============================================================================== commands
def cmd_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    args.model, args.checkpoint, args.data, args.loss = (
        "digits-cnn",
        None,
        "digits",
        "cross-entropy",
    )
    args.params, args.batch_size, args.device = None, None, "cpu"
    args.trace_method, args.kind, args.power_steps = "xtrace", "all", 0
    args.directions, args.dims, args.span, args.curves = "eigen", 2, None, True
    s = setup(args, command="demo")
    what = ANALYSES
    out = _analyses(s, args, what, power=True)
    path = write_report(
        s,
        out,
        "Hessian spectrum of the digits CNN",
        f"hessian-spectra demo: a 2,650-parameter CNN trained on scikit-learn's digits, "
        f"analysed on {s.data.num_samples:,} samples with Hessian-vector products only.",
    )
    _finish(s, out, t0)
    _say(f"Open the report: {path.resolve()}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    what = _parse_what(args.what)
    args.directions, args.dims, args.curves = "eigen", 2, True
    s = setup(args, command="analyze")
    out = _analyses(s, args, what, power=args.compare_power)
    path = write_report(
        s,
        out,
        f"Hessian spectrum of {args.model}",
        f"{s.data.description}; {s.num_params:,} parameters analysed; analyses: " + ", ".join(what),
    )
    _finish(s, out, t0)
    _say(f"Open the report: {path.resolve()}")
    return 0


def _parse_what(text: str) -> list[str]:
    items = [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in items if w not in ANALYSES]
    if bad or not items:
        raise CLIError(
            f"--what {text!r}: unknown analysis {', '.join(bad) or '(none)'}; "
            f"choose from {','.join(ANALYSES)}"
        )
    return items


def cmd_eigs(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    s = setup(args, command="eigs")
    out = Outcome()
    run_eigs(s, args, out, compare_power=args.compare_power)
    _finish(s, out, t0)
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    s = setup(args, command="trace")
    out = Outcome()
    if args.layers:
        run_layers(s, args, out)
    else:
        run_trace(s, args, out)
    _finish(s, out, t0)
    return 0


def cmd_density(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    s = setup(args, command="density")
    out = Outcome()
    run_density(s, args, out, None)
    _finish(s, out, t0)
    return 0


def cmd_sketch(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    s = setup(args, command="sketch")
    out = Outcome()
    top = None
    if args.compare:
        from hessian_spectra.algorithms.eigsh import eigsh

        top = eigsh(_operator(s), min(args.k, args.size), tol=1e-4, seed=s.seed, progress=True)
        _save(out, s, "eigs", top)
    run_sketch(s, args, out, top)
    _finish(s, out, t0)
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    args.curves = args.directions == "eigen"
    s = setup(args, command="landscape")
    out = Outcome()
    run_landscape(s, args, out, None)
    _finish(s, out, t0)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    dev = _device(args.device)
    out_dir = prepare_out(args.out or f"{PROG}-train")
    if args.model not in (
        "digits-cnn",
        "resnet20",
        "resnet20-no-bn",
        "resnet20-no-residual",
        "resnet32",
    ):
        raise CLIError(
            f"train knows the built-in models ({', '.join(BUILTIN_MODELS)}), not {args.model!r}; "
            "train your own model with your own loop and hs.SpectrumMonitor"
        )
    is_digits = args.model == "digits-cnn"
    data_spec = args.data or ("digits" if is_digits else None)
    if data_spec is None:
        raise CLIError(f"--data is required for {args.model}: e.g. --data cifar10:/path/to/cifar")
    model = build_model(args.model, args.seed).to(dev)
    if args.checkpoint:
        load_state_dict(model, args.checkpoint, args.model)
    data = load_data(
        data_spec, samples=args.samples, batch_size=None, device=dev, dtype=torch.float32
    )
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
            f"model {args.model} does not fit data {data_spec}: {str(exc).splitlines()[0]}"
        ) from exc
    epochs = args.epochs if args.epochs is not None else (200 if is_digits else 160)
    lr = args.lr if args.lr is not None else (1e-2 if is_digits else 0.1)
    bs = args.batch_size if args.batch_size is not None else (len(x) if is_digits else 128)
    optimizer_name = args.optimizer or ("adam" if is_digits else "sgd")
    if epochs < 1 or lr <= 0 or bs < 1:
        raise CLIError("--epochs, --lr and --batch-size must be positive")
    if optimizer_name == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=lr, weight_decay=args.weight_decay or 0.0
        )
    else:
        wd = args.weight_decay if args.weight_decay is not None else (0.0 if is_digits else 5e-4)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, weight_decay=wd)
    milestones = (
        []
        if is_digits and args.decay is None
        else [int(f * epochs) for f in (args.decay or (0.5, 0.75))]
    )
    plain_gd = optimizer_name == "sgd" and args.momentum == 0
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    monitor = None
    if args.monitor_every:
        from hessian_spectra.analysis.monitor import SpectrumMonitor

        gen = torch.Generator().manual_seed(0)
        msub = min(args.monitor_samples, len(x))
        idx = torch.randperm(len(x), generator=gen)[:msub]
        monitor = SpectrumMonitor(
            model,
            criterion,
            (x[idx], y[idx]),
            k=args.k,
            every=args.monitor_every,
            trace=True,
            layers=args.monitor_layers,
            seed=args.seed,
            compare_cold=args.compare_cold,
        )
    gen = torch.Generator().manual_seed(args.seed)
    log = []
    ckpt = out_dir / "model.pt"
    _say(
        f"Training {args.model} on {data.description}: {epochs} epochs, {optimizer_name}, "
        f"lr {lr:g}, batch {bs}"
    )
    from tqdm.auto import tqdm

    from hessian_spectra._progress import progress_bar

    try:
        with progress_bar(epochs, "train", enabled=True, unit="epoch") as bar:
            for epoch in range(epochs):
                model.train()
                perm = torch.randperm(len(x), generator=gen).to(dev) if bs < len(x) else None
                total, correct, seen = 0.0, 0, 0
                for i in range(0, len(x), bs):
                    sel = perm[i : i + bs] if perm is not None else slice(None)
                    xb, yb = x[sel], y[sel]
                    opt.zero_grad(set_to_none=True)
                    logits = model(xb)
                    loss = criterion(logits, yb)
                    if not torch.isfinite(loss):
                        raise CLIError(
                            f"the loss became {loss.item()} at epoch {epoch}; lower --lr"
                        )
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(xb)
                    correct += int((logits.argmax(1) == yb).sum())
                    seen += len(xb)
                cur_lr = opt.param_groups[0]["lr"]
                sched.step()
                rec = {
                    "epoch": epoch + 1,
                    "loss": total / seen,
                    "accuracy": correct / seen,
                    "lr": cur_lr,
                }
                log.append(rec)
                bar.update(1)
                bar.set_postfix_str(
                    f"loss {rec['loss']:.4f} acc {rec['accuracy']:.3f}", refresh=False
                )
                if monitor is not None:
                    r = monitor(epoch + 1, lr=cur_lr, loss=rec["loss"])
                    if r is not None:
                        tqdm.write(
                            f"epoch {epoch + 1}: λ1 = {r['eigenvalues'][0]:.5g}, trace = "
                            f"{r.get('trace', float('nan')):.5g} ({r['eig_matvecs']} HVPs)"
                        )
    except KeyboardInterrupt:
        torch.save(model.state_dict(), ckpt)
        _note(f"interrupted at epoch {len(log)}: saved the model so far to {ckpt}")
        _save_train(out_dir, log, monitor, plain_gd)
        return EXIT_INTERRUPTED
    model.eval()
    torch.save(model.state_dict(), ckpt)
    files = _save_train(out_dir, log, monitor, plain_gd)
    _say(
        _table(
            ["epoch", "loss", "accuracy", "lr"],
            [(r["epoch"], r["loss"], r["accuracy"], r["lr"]) for r in log[-min(5, len(log)) :]],
        )
    )
    if monitor is not None and monitor.records:
        _say(
            f"Monitor: {len(monitor.records)} updates, {monitor.num_matvecs} HVPs"
            + (
                f", {monitor.hvps_saved} saved by warm starts"
                if monitor.hvps_saved is not None
                else ""
            )
        )
    _say(
        f"\nWrote {ckpt} and {len(files)} more files to {out_dir.resolve()}/ "
        f"({time.perf_counter() - t0:.1f} s). Analyse it with:\n  {PROG} analyze --model "
        f"{args.model} --checkpoint {ckpt} --data {data_spec}"
    )
    return 0


def _save_train(
    out_dir: Path, log: list[dict[str, Any]], monitor: Any, plain_gd: bool = False
) -> list[Path]:
    files = []
    p = out_dir / "training.json"
    p.write_text(json.dumps({"epochs": log}, indent=2))
    files.append(p)
    if monitor is not None and monitor.records:
        files.append(monitor.to_json(out_dir / "monitor.json"))
        from hessian_spectra.plots import save_figure

        # 2/lr is the stability threshold of plain gradient descent only
        fig = monitor.plot(lr_key="lr" if plain_gd else None, x_label="epoch")
        files.append(save_figure(fig, out_dir / "monitor.png"))
    return files


# =============================================================================== parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks; show defaults that say something."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or "default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: {default})"


def _inputs(p: argparse.ArgumentParser, *, k: bool = True) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model",
        default="digits-cnn",
        help="a built-in model (" + ", ".join(BUILTIN_MODELS) + ") or package.module:factory "
        "(a function returning an nn.Module), e.g. --model mypkg.nets:build",
    )
    g.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a state_dict written by torch.save(model.state_dict(), FILE), e.g. --checkpoint "
        "runs/model.pt. Without it digits-cnn is trained here (about 5 s) and other models are "
        "analysed at their seeded initialization",
    )
    g.add_argument(
        "--data",
        default="digits",
        help="digits, cifar10:PATH (the python-format CIFAR-10 batches in PATH), cifar10-test:PATH,"
        " or package.module:factory returning (inputs, targets), a Dataset or a DataLoader; "
        "e.g. --data cifar10:~/data/cifar-10-batches-py",
    )
    g.add_argument(
        "--samples",
        type=int,
        metavar="N",
        help="use a fixed subset of N samples, the same every run, e.g. --samples 512",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="samples per batch of the Hessian's data pass (default: one batch), e.g. "
        "--batch-size 128",
    )
    g.add_argument(
        "--loss", choices=("cross-entropy", "mse"), default="cross-entropy", help="the loss"
    )
    g.add_argument("--device", default="cpu", help="where to compute, e.g. --device cuda:0")
    g.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="precision of the model and the Hessian products, e.g. --dtype float64",
    )
    g.add_argument(
        "--params",
        metavar="REGEX",
        help="analyse only parameters whose name matches REGEX (re.search), e.g. "
        "--params 'layer3|fc' for the last stage and the head",
    )
    o = p.add_argument_group("run")
    o.add_argument("--seed", type=int, default=0, help="seed of every random start and probe")
    o.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the results (default: hessian-spectra-<command>), e.g. --out runs/a",
    )
    if k:
        o.add_argument("--k", type=int, default=10, help="how many top eigenvalues, e.g. --k 20")


def _resume_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("interruptions")
    g.add_argument(
        "--save-every",
        type=int,
        default=10,
        metavar="N",
        help="save the run's state to OUT/<analysis>.ckpt every N iterations (Lanczos steps, "
        "trace probe blocks, density steps); 0 saves nothing",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the runs saved in the output folder (after Ctrl-C or a crash); the "
        "result is identical to an uninterrupted run",
    )


def _eig_options(p: argparse.ArgumentParser, *, full: bool) -> None:
    g = p.add_argument_group("eigenvalues")
    g.add_argument(
        "--tol", type=float, default=1e-4, help="relative residual tolerance, e.g. --tol 1e-6"
    )
    if full:
        g.add_argument(
            "--which",
            choices=("LA", "SA", "LM", "BE"),
            default="LA",
            help="LA largest, SA smallest (negative curvature), LM largest magnitude, BE both ends",
        )
        g.add_argument(
            "--method",
            choices=("lanczos", "block", "power", "rqi"),
            default="lanczos",
            help="eigensolver: lanczos, block (block Lanczos), power (PyHessian's power "
            "iteration), rqi (sketch + Rayleigh quotient iteration)",
        )
        g.add_argument("--block-size", type=int, default=8, help="block size of --method block")
        g.add_argument("--max-matvecs", type=int, metavar="N", help="stop after N HVPs, e.g. 500")
        g.add_argument(
            "--verify",
            action="store_true",
            help="recompute the residuals with k extra HVPs",
        )
    g.add_argument(
        "--compare-power",
        action="store_true",
        help="also run PyHessian-style power iteration (its stopping rule) for comparison",
    )


def _trace_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("trace")
    g.add_argument(
        "--trace-method",
        choices=("xtrace", "hutch++", "hutchinson"),
        default="xtrace",
        help="trace estimator",
    )
    g.add_argument("--num-matvecs", type=int, default=60, help="HVP budget of the trace, e.g. 120")


def _density_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("density")
    g.add_argument("--num-steps", type=int, default=80, help="Lanczos steps per probe")
    g.add_argument("--num-probes", type=int, default=2, help="random probes (spread = error bar)")


def _sketch_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sketch")
    g.add_argument("--size", type=int, default=50, help="sketch size d, e.g. --size 100")
    g.add_argument(
        "--kind",
        choices=(*SKETCH_KINDS, "all"),
        default="all",
        help="rademacher (the study's SᵀHS), rangefinder, nystrom, or all three",
    )
    g.add_argument(
        "--power-steps", type=int, default=0, help="extra range passes (rangefinder, nystrom)"
    )


def _landscape_options(p: argparse.ArgumentParser, *, full: bool) -> None:
    g = p.add_argument_group("landscape")
    if full:
        g.add_argument(
            "--directions",
            choices=("eigen", "random", "gradient"),
            default="eigen",
            help="top Hessian eigenvectors, random filter-normalized (Li et al. 2018), gradient",
        )
        g.add_argument("--dims", type=int, choices=(1, 2), default=2, help="a line or a plane")
    g.add_argument(
        "--span",
        type=float,
        help="grid from -SPAN to SPAN along each direction (default: where the loss along "
        "the top eigenvector rises by about 1), e.g. --span 0.5",
    )
    g.add_argument("--steps", type=int, default=25, help="grid points per direction")


def build_parser() -> argparse.ArgumentParser:
    """The `hessian-spectra` argument parser with every command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_Formatter,
        description="Spectra of neural-network Hessians from Hessian-vector products: top-k "
        "eigenpairs, trace with error bars, spectral density, sketches, loss landscapes.",
        epilog="examples:\n"
        f"  {PROG} demo\n"
        f"  {PROG} analyze --model resnet20 --checkpoint model.pt --data cifar10:~/cifar "
        "--samples 1000\n"
        f"  {PROG} eigs --k 20 --tol 1e-6\n"
        f"  {PROG} COMMAND --help",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"example:\n  {example}",
            formatter_class=_Formatter,
        )

    p = add(
        "demo",
        "train the digits CNN for a few seconds, run every analysis and write report.html",
        f"{PROG} demo --out demo-report",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: hessian-spectra-demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and every probe")
    p.add_argument("--k", type=int, default=10, help="top eigenvalues to compute")
    p.add_argument("--tol", type=float, default=1e-4, help="relative residual tolerance")
    p.add_argument("--samples", type=int, metavar="N", help="analyse a fixed subset of N digits")
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="precision of the analysis (float64 is about 3x slower on a CPU)",
    )
    p.add_argument("--train-steps", type=int, default=200, help="full-batch Adam steps")
    p.add_argument("--num-matvecs", type=int, default=60, help="HVP budget of the trace")
    p.add_argument("--num-steps", type=int, default=80, help="Lanczos steps of the density")
    p.add_argument("--num-probes", type=int, default=2, help="probes of the density")
    p.add_argument("--size", type=int, default=50, help="sketch size")
    p.add_argument("--steps", type=int, default=25, help="landscape grid points per direction")
    p.set_defaults(func=cmd_demo)

    p = add(
        "analyze",
        "run the analyses on your model and data and write report.html",
        f"{PROG} analyze --model resnet20 --checkpoint model.pt --data cifar10:~/cifar "
        "--samples 1000 --what eigs,trace,density",
    )
    _inputs(p)
    p.add_argument(
        "--what",
        default=",".join(ANALYSES),
        help="comma-separated analyses from " + ",".join(ANALYSES) + ", e.g. --what eigs,trace",
    )
    _eig_options(p, full=False)
    _trace_options(p)
    _density_options(p)
    _sketch_options(p)
    _landscape_options(p, full=False)
    _resume_options(p)
    p.set_defaults(func=cmd_analyze, train_steps=200)

    p = add("eigs", "top-k eigenpairs with residuals", f"{PROG} eigs --k 20 --which LA --tol 1e-6")
    _inputs(p)
    _eig_options(p, full=True)
    _resume_options(p)
    p.set_defaults(func=cmd_eigs, train_steps=200)

    p = add(
        "trace",
        "the Hessian trace with a standard error",
        f"{PROG} trace --trace-method xtrace --num-matvecs 120 --layers",
    )
    _inputs(p, k=False)
    _trace_options(p)
    p.add_argument("--rtol", type=float, help="stop when stderr <= rtol * |trace|, e.g. 0.01")
    p.add_argument("--layers", action="store_true", help="per-layer traces from the same probes")
    _resume_options(p)
    p.set_defaults(func=cmd_trace, train_steps=200)

    p = add(
        "density",
        "the eigenvalue density by stochastic Lanczos quadrature",
        f"{PROG} density --num-steps 100 --num-probes 4",
    )
    _inputs(p, k=False)
    _density_options(p)
    _resume_options(p)
    p.set_defaults(func=cmd_density, train_steps=200)

    p = add(
        "sketch",
        "Hessian sketches (SᵀHS, range finder, Nyström) vs Lanczos",
        f"{PROG} sketch --size 100 --kind rangefinder --power-steps 1",
    )
    _inputs(p)
    _sketch_options(p)
    p.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="skip the Lanczos reference for the top-k",
    )
    p.set_defaults(func=cmd_sketch, train_steps=200)

    p = add(
        "landscape",
        "the loss on a line or plane through the parameters",
        f"{PROG} landscape --directions random --dims 2 --span 1 --steps 31",
    )
    _inputs(p, k=False)
    _landscape_options(p, full=True)
    p.set_defaults(func=cmd_landscape, train_steps=200, k=None)

    p = add(
        "train",
        "train a built-in model, optionally monitoring its spectrum every N epochs",
        f"{PROG} train --model resnet20 --data cifar10:~/cifar --epochs 160 --monitor-every 10",
    )
    p.add_argument(
        "--model",
        default="digits-cnn",
        help="digits-cnn (full-batch Adam) or a resnet (SGD, the study's recipe)",
    )
    p.add_argument("--data", help="digits (default for digits-cnn) or cifar10:PATH")
    p.add_argument("--checkpoint", metavar="FILE", help="start from this state_dict")
    p.add_argument("--samples", type=int, metavar="N", help="train on a fixed subset of N")
    p.add_argument("--epochs", type=int, help="epochs (default: 200 for digits, 160 for resnets)")
    p.add_argument("--lr", type=float, help="learning rate (default: 0.01 Adam / 0.1 SGD)")
    p.add_argument("--batch-size", type=int, help="default: full batch (digits) / 128")
    p.add_argument("--optimizer", choices=("sgd", "adam"), help="default: adam (digits) / sgd")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, help="default: 0 (digits) / 5e-4")
    p.add_argument(
        "--decay",
        type=float,
        nargs="+",
        metavar="FRACTION",
        help="divide the lr by 10 at these fractions of the epochs (default for resnets: 0.5 0.75)",
    )
    p.add_argument(
        "--monitor-every",
        type=int,
        default=0,
        metavar="N",
        help="measure the spectrum every N epochs (0: never), e.g. 10",
    )
    p.add_argument(
        "--monitor-samples",
        type=int,
        default=512,
        help="fixed subset the monitored Hessian is taken on",
    )
    p.add_argument("--monitor-layers", action="store_true", help="also per-layer traces")
    p.add_argument(
        "--compare-cold",
        action="store_true",
        help="also run cold starts to measure the HVPs the warm starts save",
    )
    p.add_argument("--k", type=int, default=3, help="top eigenvalues to monitor")
    p.add_argument("--device", default="cpu", help="e.g. cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of init, shuffling and probes")
    p.add_argument("--out", metavar="DIR", help="output folder (default: hessian-spectra-train)")
    p.set_defaults(func=cmd_train)

    _register_experiments(sub)
    return parser


def _register_experiments(sub: Any) -> None:
    """The `experiment` command comes from `hessian_spectra.experiments`, where installed."""
    try:
        experiments = importlib.import_module("hessian_spectra.experiments")
        register = experiments.register
    except (ImportError, AttributeError):
        p = sub.add_parser("experiment", help="reproduce the study's experiments (not available)")
        p.set_defaults(func=_no_experiments)
        return
    register(sub)


def _no_experiments(args: argparse.Namespace) -> int:
    raise CLIError("the experiments are not available in this installation")


# =============================================================================== main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from hessian_spectra._progress import set_progress

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        return int(exc.code) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    set_progress(not args.quiet)
    from hessian_spectra.checkpoint import CheckpointError

    _STATES.clear()
    restore_sigterm = _sigterm_interrupts()
    started_group = False
    try:
        started_group = _init_distributed(args)
        return int(args.func(args))
    except (CLIError, ProblemError, CheckpointError) as exc:
        _note(f"{PROG}: error: {exc}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _note(_interrupted_message(list(sys.argv[1:] if argv is None else argv)))
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.traceback:
            raise
        msg = " ".join(str(exc).split()) or "(no message)"
        _note(f"{PROG}: error: {type(exc).__name__}: {msg} (run with --traceback for details)")
        return EXIT_FAILURE
    finally:
        set_progress(None)
        restore_sigterm()
        if started_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _interrupted_message(argv: list[str]) -> str:
    """What was saved, and the exact command that continues it."""
    saved = [p for p in _STATES if p.exists()]
    if not saved:
        return f"{PROG}: interrupted (no run state was saved yet)"
    again = [a for a in argv if a != "--resume"] + ["--resume"]
    files = ", ".join(str(p) for p in saved)
    return (
        f"{PROG}: interrupted; the run so far is saved in {files}. To continue it, run:\n"
        f"  {PROG} {shlex.join(again)}"
    )


def _sigterm_interrupts() -> Callable[[], None]:
    """Treat SIGTERM (a scheduler's preemption) like Ctrl-C; returns the undo."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)

    def undo() -> None:
        signal.signal(signal.SIGTERM, previous)

    return undo


DISTRIBUTED_COMMANDS = ("analyze", "eigs", "trace", "density", "sketch", "landscape")


def _init_distributed(args: argparse.Namespace) -> bool:
    """Under torchrun (WORLD_SIZE > 1): start the default process group; True if started here.

    gloo for --device cpu, nccl for CUDA (each rank on cuda:LOCAL_RANK unless
    --device names an index).
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or getattr(args, "command", None) not in DISTRIBUTED_COMMANDS:
        return False
    import torch.distributed as dist

    if not dist.is_available():
        raise CLIError("this torch build has no torch.distributed; run without torchrun")
    if dist.is_initialized():
        return False
    device = str(getattr(args, "device", "cpu"))
    backend = "gloo"
    if device.startswith("cuda"):
        backend = "nccl"
        if device == "cuda":
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(args.device))
    dist.init_process_group(backend)
    return True
