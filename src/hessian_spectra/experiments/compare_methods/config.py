"""Settings of `compare-methods`, its command-line options, and the problem they describe."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import hessian_spectra as hs
from hessian_spectra import data as hdata
from hessian_spectra import models
from hessian_spectra.operators import LinearOperator

MODELS = ("digits_cnn", "resnet20")


@dataclass(frozen=True)
class CompareConfig:
    """Settings of `compare-methods` (defaults: the study's choices where it made any).

    Attributes:
        model: "digits_cnn" or "resnet20".
        data: "digits" or "cifar10:PATH".
        checkpoint: a state-dict file for the model (required for resnet20).
        num_samples: data points in the loss (None: all of digits; 128 of CIFAR-10).
        batch_size: samples per batch of the Hessian's data pass.
        dtype: "float64" or "float32" (the operator's precision).
        train_steps: Adam steps of `train_digits_cnn` (digits_cnn only).
        k: eigenvalues wanted (the study: 20).
        which: "LA" (largest) or "LM" (largest magnitude; for indefinite nets).
        tol: residual tolerance of Lanczos and block Lanczos.
        power_tol: PyHessian's relative-change tolerance (its default 1e-3).
        power_max_iter: power iterations allowed per eigenvalue (PyHessian's maxIter, 100).
        power_which: the end power iteration targets; "LM" is what PyHessian's
            unshifted iteration finds.
        block_size: block Lanczos block size.
        plain_steps: steps of plain Lanczos for the ghost count (the study: 45).
        ghost_rtol: relative distance under which a Ritz value is a copy.
        sketch_sizes: sketch sizes (the study: 50 and 100).
        sketch_kinds: sketch kinds.
        trace_matvecs: HVP budget of each trace estimator.
        reference: "exact" (dense Hessian, small models) or "lanczos".
        reference_tol: tolerance of the reference Lanczos run.
        reference_trace_probes: Hutchinson probes of the reference trace when not exact.
        reference_cache: an .npz file keeping the exact reference between runs
            (checked against one HVP of the current operator before use).
        density_steps: Lanczos steps of the density.
        density_probes: probes of the density.
        seed: seed of every random draw.
    """

    model: str = "digits_cnn"
    data: str = "digits"
    checkpoint: str | None = None
    num_samples: int | None = None
    batch_size: int = 2048
    dtype: str = "float64"
    train_steps: int = 200
    k: int = 20
    which: str = "LA"
    tol: float = 1e-4
    power_tol: float = 1e-3
    power_max_iter: int = 100
    power_which: str = "LM"
    block_size: int = 8
    plain_steps: int = 45
    ghost_rtol: float = 1e-3
    sketch_sizes: tuple[int, ...] = (50, 100)
    sketch_kinds: tuple[str, ...] = ("rademacher", "rangefinder", "nystrom")
    trace_matvecs: int = 50
    reference: str = "exact"
    reference_tol: float = 1e-9
    reference_trace_probes: int = 1000
    reference_cache: str | None = None
    density_steps: int = 100
    density_probes: int = 1
    seed: int = 0


# --------------------------------------------------------------------------- problem


def _dtype(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {name!r}")
    return torch.float64 if name == "float64" else torch.float32


def _load_state(model: torch.nn.Module, path: str) -> None:
    """Load a state dict saved by `torch.save` (bare, or under "state_dict"/"model")."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {file} does not exist; pass the path of a state dict")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise ValueError(f"{file} holds a {type(state).__name__}, not a state dict")
    # checkpoints saved from nn.DataParallel prefix every name with "module."
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not match
        raise ValueError(f"{file} does not fit the model: {exc}; check --model") from exc
    if missing or unexpected:
        raise ValueError(
            f"{file} does not fit the model: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}; check --model"
        )


def build_problem(cfg: CompareConfig) -> tuple[LinearOperator, dict[str, Any]]:
    """The Hessian operator of the configured model and data, and a description of it."""
    dtype = _dtype(cfg.dtype)
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; choose from {', '.join(MODELS)}")
    desc: dict[str, Any] = {"model": cfg.model, "data": cfg.data, "dtype": cfg.dtype}
    model: torch.nn.Module
    if cfg.model == "digits_cnn":
        if cfg.data != "digits":
            raise ValueError("digits_cnn takes --data digits")
        if cfg.checkpoint is not None:
            model = models.digits_cnn(seed=0)
            _load_state(model, cfg.checkpoint)
            desc["checkpoint"] = cfg.checkpoint
        else:
            model = models.train_digits_cnn(seed=0, steps=cfg.train_steps)
            desc["trained"] = f"train_digits_cnn(seed=0, steps={cfg.train_steps})"
        x, y = hdata.digits()
    else:
        if not cfg.data.startswith("cifar10:"):
            raise ValueError("resnet20 takes --data cifar10:PATH (the extracted CIFAR-10 folder)")
        if cfg.checkpoint is None:
            raise ValueError(
                "resnet20 needs --checkpoint FILE (a trained state dict); the study's numbers "
                "come from a trained network"
            )
        model = models.resnet20(seed=0)
        _load_state(model, cfg.checkpoint)
        desc["checkpoint"] = cfg.checkpoint
        ds = hdata.cifar10(Path(cfg.data.split(":", 1)[1]).expanduser(), train=True)
        x, y = ds.tensors
    num = cfg.num_samples
    if num is None:
        num = x.shape[0] if cfg.model == "digits_cnn" else 128
    if not 1 <= num <= x.shape[0]:
        raise ValueError(f"num_samples must be in [1, {x.shape[0]}], got {num}")
    x, y = x[:num].to(dtype), y[:num]
    model = model.to(dtype).eval()
    batches = [
        (x[i : i + cfg.batch_size], y[i : i + cfg.batch_size])
        for i in range(0, num, cfg.batch_size)
    ]
    data: Any = batches[0] if len(batches) == 1 else batches
    op = hs.HessianOperator(model, torch.nn.CrossEntropyLoss(), data)
    desc.update(num_samples=num, num_batches=len(batches), num_parameters=op.shape[0])
    return op, desc


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `experiment compare-methods`."""
    d = CompareConfig()
    a = parser.add_argument
    a("--model", choices=MODELS, default=d.model, help="default digits_cnn")
    a("--data", default=d.data, help="digits (default) or cifar10:PATH")
    a("--checkpoint", help="state dict of the model (required for resnet20)")
    a("--num-samples", type=int, help="data points in the loss (default: all digits / 128 CIFAR)")
    a(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"samples per batch (default {d.batch_size})",
    )
    a("--dtype", choices=("float64", "float32"), default=d.dtype, help="operator precision")
    a("--train-steps", type=int, default=d.train_steps, help="Adam steps for digits_cnn")
    a("--k", type=int, default=d.k, help=f"eigenvalues wanted (default {d.k})")
    a("--which", choices=("LA", "LM"), default=d.which, help="LA (default) or LM")
    a("--tol", type=float, default=d.tol, help=f"Lanczos residual tolerance (default {d.tol})")
    a("--power-tol", type=float, default=d.power_tol, help="PyHessian's relative-change tolerance")
    a("--power-max-iter", type=int, default=d.power_max_iter, help="power HVPs per eigenvalue")
    a("--power-which", choices=("LM", "LA"), default=d.power_which, help="LM (PyHessian) or LA")
    a(
        "--block-size",
        type=int,
        default=d.block_size,
        help=f"block Lanczos size (default {d.block_size})",
    )
    a("--plain-steps", type=int, default=d.plain_steps, help="plain Lanczos steps (default 45)")
    a("--ghost-rtol", type=float, default=d.ghost_rtol, help="relative distance of a ghost copy")
    a("--sketch-sizes", default="50,100", help="comma-separated sketch sizes (default 50,100)")
    a("--sketch-kinds", default="rademacher,rangefinder,nystrom", help="comma-separated kinds")
    a("--trace-matvecs", type=int, default=d.trace_matvecs, help="HVPs per trace estimator")
    a("--reference", choices=("exact", "lanczos"), help="default: exact for n <= 20000")
    a("--reference-tol", type=float, default=d.reference_tol, help="reference Lanczos tolerance")
    a(
        "--reference-cache",
        metavar="FILE",
        help="keep the exact reference (n HVPs and a dense eigensolve) in this .npz between "
        "runs; checked against one HVP of the current operator before use",
    )
    a(
        "--reference-trace-probes",
        type=int,
        default=d.reference_trace_probes,
        help="Hutchinson probes of the reference trace (lanczos reference)",
    )
    a("--density-steps", type=int, default=d.density_steps, help="SLQ Lanczos steps")
    a("--density-probes", type=int, default=d.density_probes, help="SLQ probes")
    a("--seed", type=int, default=d.seed, help="seed of every random draw (default 0)")
    a("--out", default="out/compare-methods", help="output folder")
    a("--no-plots", action="store_true", help="write the JSON only")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from exc


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The configuration the parsed options of `add_arguments` describe."""
    reference = args.reference or ("exact" if args.model == "digits_cnn" else "lanczos")
    return CompareConfig(
        model=args.model,
        data=args.data,
        checkpoint=args.checkpoint,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        dtype=args.dtype,
        train_steps=args.train_steps,
        k=args.k,
        which=args.which,
        tol=args.tol,
        power_tol=args.power_tol,
        power_max_iter=args.power_max_iter,
        power_which=args.power_which,
        block_size=args.block_size,
        plain_steps=args.plain_steps,
        ghost_rtol=args.ghost_rtol,
        sketch_sizes=_ints(args.sketch_sizes),
        sketch_kinds=tuple(x.strip() for x in args.sketch_kinds.split(",") if x.strip()),
        trace_matvecs=args.trace_matvecs,
        reference=reference,
        reference_tol=args.reference_tol,
        reference_trace_probes=args.reference_trace_probes,
        reference_cache=args.reference_cache,
        density_steps=args.density_steps,
        density_probes=args.density_probes,
        seed=args.seed,
    )
