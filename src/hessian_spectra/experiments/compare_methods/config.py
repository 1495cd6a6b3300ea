"""Settings of `compare-methods`, its command-line options, and the problem they describe."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

import hessian_spectra as hs
from hessian_spectra.operators import LinearOperator
from hessian_spectra.problems import (
    BUILTIN_MODELS,
    build_model,
    canonical_model_name,
    load_data,
    load_state_dict,
)

#: Samples in the loss of a CIFAR-10 model when none are asked for.
CIFAR_SAMPLES = 128


@dataclass(frozen=True)
class CompareConfig:
    """Settings of `compare-methods` (defaults: the study's choices where it made any).

    Attributes:
        model: a built-in model of `hessian_spectra.problems` ("digits-cnn",
            "resnet20", ...; the older "digits_cnn" is accepted).
        data: "digits" or "cifar10:PATH" (the data the model is made for).
        checkpoint: a state-dict file for the model (required for the ResNets).
        num_samples: data points in the loss, a fixed subset chosen by the registry
            (None: all of digits; 128 of CIFAR-10).
        batch_size: samples per batch of the Hessian's data pass.
        dtype: "float64" or "float32" (the operator's precision).
        train_steps: Adam steps of the training done here (digits-cnn without checkpoint).
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
        probe_compare: Hutchinson products of each probe kind (Rademacher,
            Gaussian) whose variances are compared (0: skip).
        reference: "exact" (dense Hessian, small models) or "lanczos".
        reference_tol: tolerance of the reference Lanczos run.
        reference_trace_probes: Hutchinson probes of the reference trace when not exact.
        reference_cache: an .npz file keeping the exact reference between runs
            (checked against one HVP of the current operator before use).
        density_steps: Lanczos steps of the density.
        density_probes: probes of the density.
        seed: seed of every random draw.
    """

    model: str = "digits-cnn"
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
    probe_compare: int = 100
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


def _check_data(name: str, data: str) -> None:
    """Refuse data that the built-in model `name` is not made for."""
    kind = BUILTIN_MODELS[name].data
    if kind == "digits" and data != "digits":
        raise ValueError(f"{name} takes --data digits")
    if kind == "cifar10" and not data.startswith(("cifar10:", "cifar10-test:")):
        raise ValueError(f"{name} takes --data cifar10:PATH (the extracted CIFAR-10 folder)")


def build_problem(cfg: CompareConfig) -> tuple[LinearOperator, dict[str, Any]]:
    """The Hessian operator of the configured model and data, and a description of it.

    The model, its checkpoint and the data come from the problem registry
    (`hessian_spectra.problems`); a model without a checkpoint is trained here
    where the registry knows how (digits-cnn), and refused otherwise.
    """
    dtype = _dtype(cfg.dtype)
    name = canonical_model_name(cfg.model)
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; choose from {', '.join(BUILTIN_MODELS)}")
    _check_data(name, cfg.data)
    builtin = BUILTIN_MODELS[name]
    desc: dict[str, Any] = {"model": name, "data": cfg.data, "dtype": cfg.dtype}
    if cfg.checkpoint is not None:
        model = build_model(name, seed=0)
        load_state_dict(model, cfg.checkpoint, name)
        desc["checkpoint"] = cfg.checkpoint
    elif builtin.train is not None:
        model = builtin.train(0, cfg.train_steps)
        desc["trained"] = f"{name} trained here (seed=0, steps={cfg.train_steps})"
    else:
        raise ValueError(
            f"{name} needs --checkpoint FILE (a trained state dict); the study's numbers "
            "come from a trained network"
        )
    num = cfg.num_samples
    if num is None and builtin.data == "cifar10":
        num = CIFAR_SAMPLES
    data = load_data(cfg.data, samples=num, batch_size=cfg.batch_size, dtype=dtype)
    batches = data.batches
    model = model.to(dtype).eval()
    op = hs.HessianOperator(
        model, torch.nn.CrossEntropyLoss(), batches[0] if len(batches) == 1 else batches
    )
    desc.update(num_samples=data.num_samples, num_batches=len(batches), num_parameters=op.shape[0])
    return op, desc


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `experiment compare-methods`."""
    d = CompareConfig()
    a = parser.add_argument
    a(
        "--model",
        type=canonical_model_name,
        choices=list(BUILTIN_MODELS),
        default=d.model,
        help=f"a built-in model (default {d.model}; digits_cnn is accepted too)",
    )
    a("--data", default=d.data, help="digits (default) or cifar10:PATH")
    a("--checkpoint", help="state dict of the model (required for the ResNets)")
    a("--num-samples", type=int, help="data points in the loss (default: all digits / 128 CIFAR)")
    a(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"samples per batch (default {d.batch_size})",
    )
    a("--dtype", choices=("float64", "float32"), default=d.dtype, help="operator precision")
    a("--train-steps", type=int, default=d.train_steps, help="Adam steps for digits-cnn")
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
    a(
        "--probe-compare",
        type=int,
        default=d.probe_compare,
        help=f"Rademacher and Gaussian Hutchinson products each, whose variances are compared "
        f"(default {d.probe_compare}; 0 skips)",
    )
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
    model = canonical_model_name(args.model)
    reference = args.reference or ("exact" if model == "digits-cnn" else "lanczos")
    return CompareConfig(
        model=model,
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
        probe_compare=args.probe_compare,
        reference=reference,
        reference_tol=args.reference_tol,
        reference_trace_probes=args.reference_trace_probes,
        reference_cache=args.reference_cache,
        density_steps=args.density_steps,
        density_probes=args.density_probes,
        seed=args.seed,
    )
