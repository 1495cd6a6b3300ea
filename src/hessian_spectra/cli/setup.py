"""Set-up shared by the analysis commands: device, output folder, model, data, loss.

`build_setup` turns the model-and-data options (an `Inputs`) into a `Setup`:
the model with its checkpoint loaded (or the digits CNN trained here), the
batches, the loss, checked to fit together before any time is spent.
`run_state` gives a resumable computation its state file in the output folder.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hessian_spectra._distributed import world_size
from hessian_spectra.cli.errors import PROG, CLIError
from hessian_spectra.cli.output import note
from hessian_spectra.cli.units import parse_memory
from hessian_spectra.operators import (
    FisherOperator,
    GGNOperator,
    HessianOperator,
    LossFn,
    select_parameters,
)
from hessian_spectra.problems import (
    BUILTIN_MODELS,
    Data,
    build_model,
    canonical_model_name,
    load_data,
    load_loss_fn,
    load_state_dict,
)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: --loss by name; "model" is the model's own loss (``model(**batch).loss``), the default
#: for dict batches; a package.module:function is a loss_fn(model, batch)
LOSSES = ("cross-entropy", "mse", "model")
OWN_LOSS = "the model's own loss, model(**batch).loss"
#: --curvature: the matrix the analyses run on, and its name in the output
CURVATURES = {
    "hessian": "Hessian",
    "ggn": "GGN (generalized Gauss-Newton)",
    "fisher": "empirical Fisher",
}


@dataclass(frozen=True)
class Inputs:
    """The model-and-data options every analysis command reads."""

    model: str = "digits-cnn"
    checkpoint: str | None = None
    data: str = "digits"
    samples: int | None = None
    batch_size: int | None = None
    loss: str | None = None  # None: cross-entropy, or the model's own loss for dict batches
    device: str = "cpu"
    dtype: str = "float32"
    params: str | None = None
    seed: int = 0
    out: str | None = None
    max_memory: str | None = None  # e.g. "8GB"; None: the memory available
    curvature: str = "hessian"  # a key of CURVATURES
    checkpoint_prefix: str | None = None  # "OLD" or "OLD=NEW" on the checkpoint's keys


@dataclass
class Setup:
    """Everything a command needs: the model, its loss, the data, the output folder."""

    model: nn.Module
    model_name: str
    criterion: nn.Module | None  # None: loss_fn, or the model's own loss when both are None
    data: Data
    out: Path
    seed: int
    params: str | None
    num_params: int
    settings: dict[str, Any]
    train_seconds: float = 0.0
    train_note: str = ""
    max_memory: int | None = None  # bytes the analyses' vectors may take; None: what is free
    curvature: str = "hessian"  # a key of CURVATURES: the matrix the analyses run on
    loss_fn: LossFn | None = None  # --loss package.module:function


def device(name: str) -> torch.device:
    """The torch device `name` names, refused when it is not here."""
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
    """Create the output folder and check that files can be written in it.

    A path that is a file, a folder that cannot be created, and a folder that
    cannot be written into (read-only, full, no permission) are refused here,
    before anything is trained or computed: a small probe file is written and
    removed.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give a folder to write the results into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create output folder {out}: {exc.strerror or exc}") from exc
    probe = None
    try:
        fd, probe = tempfile.mkstemp(prefix=".hessian-spectra-probe.", suffix=".tmp", dir=out)
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"probe")
            fh.flush()
    except OSError as exc:
        raise CLIError(
            f"--out {out} is not writable ({exc.strerror or exc}); give a folder you can "
            "write the results into"
        ) from exc
    finally:
        if probe is not None:
            Path(probe).unlink(missing_ok=True)
    return out


def selected_count(model: nn.Module, params: str | None) -> int:
    """How many trainable parameters `params` (a regex, None for all) selects."""
    try:
        chosen = select_parameters(model, params)
    except ValueError as exc:
        raise CLIError(f"--params {params!r}: {exc}") from exc
    return sum(p.numel() for _, p in chosen)


def _check_k(k: int | None, num_params: int, params: str | None) -> None:
    if k is None:
        return
    if k < 1:
        raise CLIError(f"--k must be at least 1, got {k}")
    if k >= num_params:
        which = " matching --params" if params else ""
        raise CLIError(
            f"--k {k} is too large: the Hessian has {num_params} rows (parameters{which}); "
            f"use --k below {num_params}"
        )


def build_setup(
    inputs: Inputs,
    *,
    command: str,
    k: int | None = None,
    train_steps: int = 200,
    check: Callable[[int], None] | None = None,
) -> Setup:
    """Build the model, load the checkpoint and data, check they fit together.

    Args:
        inputs: the model-and-data options.
        command: the command's name (the default output folder, the settings).
        k: eigenvalues the command computes, checked against the parameter count.
        train_steps: full-batch Adam steps when the digits CNN is trained here
            (no checkpoint).
        check: called with the parameter count before anything is trained or
            computed (the analyses' sizes and memory); raises `CLIError`.
    """
    seed = int(inputs.seed)
    dev = device(inputs.device)
    dtype = DTYPES[inputs.dtype]
    out = prepare_out(inputs.out or f"{PROG}-{command}")
    name = canonical_model_name(inputs.model)
    builtin = BUILTIN_MODELS.get(name)
    model = build_model(name, seed)
    if inputs.checkpoint:
        load_state_dict(model, inputs.checkpoint, name, prefix=inputs.checkpoint_prefix)
    model = model.to(device=dev, dtype=dtype).eval()
    num_params = selected_count(model, inputs.params)
    _check_k(k, num_params, inputs.params)
    if check is not None:  # sizes and memory: they need only the parameter count
        check(num_params)
    data = load_data(
        inputs.data, samples=inputs.samples, batch_size=inputs.batch_size, device=dev, dtype=dtype
    )
    criterion, loss_fn, loss_name = resolve_loss(inputs.loss, data)
    if criterion is None and inputs.curvature != "hessian":
        raise CLIError(
            f"--curvature {inputs.curvature} needs the model's output and a criterion "
            f"(--loss cross-entropy or mse), not {loss_name}; use --curvature hessian"
        )
    _check_fit(model, criterion, loss_fn, data.example, f"model {name}", inputs.data, loss_name)
    # the input is valid: only now spend time on training
    train_seconds, train_note = 0.0, ""
    if inputs.checkpoint:
        origin = f"checkpoint {inputs.checkpoint}"
    elif builtin is not None and builtin.train is not None:
        steps = int(train_steps)
        note(f"no --checkpoint: training the digits CNN ({steps} full-batch Adam steps) ...")
        t0 = time.perf_counter()
        trained = builtin.train(seed, steps)
        train_seconds = time.perf_counter() - t0
        model.load_state_dict(trained.state_dict())
        origin = f"trained here: {steps} full-batch Adam steps, lr 1e-2, seed {seed}"
        train_note = origin
    elif builtin is not None:
        origin = f"initialization with seed {seed} (no --checkpoint)"
        note(f"no --checkpoint: analysing {name} at its initialization with seed {seed}")
    else:  # a factory's model: trained or pretrained weights, or its own initialization
        origin = f"as {name} returned it (no --checkpoint)"
    settings = {
        "command": command,
        "model": name,
        "model origin": origin,
        "parameters analysed": num_params,
        "params regex": inputs.params or "all trainable",
        "data": data.description,
        "samples": data.num_samples,
        "batch size": inputs.batch_size or "one batch",
        "loss": loss_name,
        "curvature": CURVATURES[inputs.curvature],
        "device": str(dev),
        "dtype": inputs.dtype,
        "seed": seed,
        **({"max memory": inputs.max_memory} if inputs.max_memory else {}),
    }
    return Setup(
        model=model,
        model_name=name,
        criterion=criterion,
        data=data,
        out=out,
        seed=seed,
        params=inputs.params,
        num_params=num_params,
        settings=settings,
        train_seconds=train_seconds,
        train_note=train_note,
        max_memory=parse_memory(inputs.max_memory) if inputs.max_memory else None,
        curvature=inputs.curvature,
        loss_fn=loss_fn,
    )


def resolve_loss(spec: str | None, data: Data) -> tuple[nn.Module | None, LossFn | None, str]:
    """``--loss``: (criterion, loss_fn, how the settings name it).

    None: cross-entropy, or the model's own loss when the data are dict batches
    (HuggingFace style, with ``labels``). "model": the model's own loss.
    ``package.module:function``: a ``loss_fn(model, batch)``.
    """
    if spec is None:
        spec = "model" if isinstance(data.example, Mapping) else "cross-entropy"
    if spec == "cross-entropy":
        return nn.CrossEntropyLoss(), None, spec
    if spec == "mse":
        return nn.MSELoss(), None, spec
    if spec == "model":
        return None, None, OWN_LOSS
    return None, load_loss_fn(spec), spec


def _check_fit(
    model: nn.Module,
    criterion: nn.Module | None,
    loss_fn: LossFn | None,
    example: Any,
    model_text: str,
    data_name: str,
    loss_name: str,
) -> None:
    """One loss on the data's first samples, before anything is trained or computed."""
    try:
        with torch.no_grad():
            if loss_fn is not None:
                out = loss_fn(model, example)
                loss = out[0] if isinstance(out, tuple) else out
            elif criterion is not None:
                if isinstance(example, Mapping):
                    raise ValueError(
                        "the data are dict batches; use --loss model (the model's own loss) or "
                        "--loss package.module:function"
                    )
                x, y = example
                loss = criterion(model(x), y)
            else:
                if not isinstance(example, Mapping):
                    raise ValueError(
                        "the model's own loss needs dict batches (model(**batch).loss); use "
                        "--loss cross-entropy, mse or package.module:function"
                    )
                out = model(**example)
                loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
                if loss is None:
                    raise ValueError(
                        "the model returned no loss; put the targets in the batch (labels=...) "
                        "or give --loss package.module:function"
                    )
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"the loss is {shape}, not a scalar tensor")
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(example, Mapping):
            shapes = ", ".join(
                f"{k} {tuple(v.shape)}" for k, v in example.items() if isinstance(v, torch.Tensor)
            )
            what = f"dict batches ({shapes})"
        else:
            x, y = example
            what = (
                f"inputs of shape {tuple(x.shape[1:])}, targets {tuple(y.shape[1:]) or 'scalars'}"
            )
        raise CLIError(
            f"{model_text} does not fit data {data_name} ({what}) with the {loss_name} loss: {msg}"
        ) from exc


def hessian(s: Setup, curvature: str | None = None) -> HessianOperator:
    """The curvature operator of the set-up's model, loss, data and parameters.

    `curvature` (default: the set-up's ``--curvature``): "hessian", "ggn" or
    "fisher" (the empirical Fisher).
    """
    data = s.data.batches
    if world_size() > 1 and isinstance(data, list) and len(data) == 1:
        data = data[0]  # one batch: each rank takes a slice of its samples
    kind = {"hessian": HessianOperator, "ggn": GGNOperator, "fisher": FisherOperator}
    extra: dict[str, Any] = {"loss_fn": s.loss_fn} if s.loss_fn is not None else {}
    return kind[curvature or s.curvature](s.model, s.criterion, data, params=s.params, **extra)


# =============================================================================== run state
@dataclass(frozen=True)
class Resume:
    """How resumable computations save their state (``--save-every``, ``--resume``)."""

    save_every: int = 0  # 0: save nothing
    resume: bool = False


# files of the runs that save their state, for the message on Ctrl-C
SAVED_STATES: list[Path] = []


def run_state(s: Setup, resume: Resume, name: str) -> dict[str, Any]:
    """Checkpoint arguments of a resumable computation: its state file in the output folder."""
    every = int(resume.save_every or 0)
    if every <= 0:
        if resume.resume:
            raise CLIError("--resume needs the run's saved state: drop --save-every 0")
        return {}
    path = s.out / f"{name}.ckpt"
    if path.exists() and not resume.resume:
        raise CLIError(
            f"{path} holds an interrupted {name} run: add --resume to continue it, or delete "
            "the file to start afresh"
        )
    if resume.resume and path.exists():
        note(f"resuming {name} from {path}")
    SAVED_STATES.append(path)
    return {"checkpoint": path, "checkpoint_every": every, "resume": resume.resume}
