"""The one registry of problems: built-in models, state-dict loading and data specs.

The command line, the experiments and the benchmarks all build their models
and batches here, so a model has one name everywhere and a checkpoint is read
by one loader that explains every mismatch.

- `BUILTIN_MODELS`: the reference models by name (``digits-cnn``, ``resnet20``,
  ``resnet20-no-bn``, ``resnet20-no-residual``, ``resnet32``), each with a
  description and the data it is made for. `canonical_model_name` maps the
  older spelling ``digits_cnn`` to ``digits-cnn``.
- `build_model(spec, seed)`: a built-in name or ``package.module:factory``.
- `load_state_dict(model, path, model_name)`: a ``torch.save`` state dict
  (bare, or under ``state_dict``/``model_state_dict``/``model``; a
  ``module.`` prefix from DataParallel is dropped), refused key by key when it
  does not fit.
- `load_loss_fn(spec)`: a ``package.module:function`` loss, ``loss_fn(model, batch)``.
- `load_data(spec, ...)`: ``digits``, ``cifar10:PATH``, ``cifar10-test:PATH`` or
  ``package.module:factory``, as a fixed subset split into batches on a device;
  a factory may return dict batches (``{"input_ids": ..., "labels": ...}``).

Bad input raises `ProblemError` (a `ValueError`) whose message names the
option at fault and what to write instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from hessian_spectra.data import cifar10, digits
from hessian_spectra.models import digits_cnn, resnet20, train_digits_cnn

__all__ = [
    "BUILTIN_MODELS",
    "MODEL_ALIASES",
    "BuiltinModel",
    "Data",
    "ProblemError",
    "build_model",
    "canonical_model_name",
    "default_data",
    "load_data",
    "load_loss_fn",
    "load_state_dict",
    "map_prefix",
]


class ProblemError(ValueError):
    """A model, checkpoint or data spec that cannot be used; the message says what to do."""


# =============================================================================== models
@dataclass(frozen=True)
class BuiltinModel:
    """A reference model: how to build it from a seed, what it is, the data it is made for.

    `train`, where given, trains the model here in seconds: ``train(seed, steps)``
    returns it trained (in eval mode) on its default data.
    """

    build: Callable[[int], nn.Module]
    about: str
    data: str  # "digits" or "cifar10"
    train: Callable[[int, int], nn.Module] | None = None


def _digits_cnn(seed: int) -> nn.Module:
    return digits_cnn(seed=seed)


def _train_digits_cnn(seed: int, steps: int) -> nn.Module:
    return train_digits_cnn(seed=seed, steps=steps)


def _resnet(seed: int, **kw: Any) -> nn.Module:
    return resnet20(seed=seed, **kw)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "digits-cnn": BuiltinModel(
        _digits_cnn, "small CNN on 8x8 digits, 2,650 parameters", "digits", _train_digits_cnn
    ),
    "resnet20": BuiltinModel(_resnet, "the study's CIFAR ResNet20, 272,474 parameters", "cifar10"),
    "resnet20-no-bn": BuiltinModel(
        lambda s: _resnet(s, batch_norm=False), "ResNet20 without BatchNorm", "cifar10"
    ),
    "resnet20-no-residual": BuiltinModel(
        lambda s: _resnet(s, residual=False), "ResNet20 without residual connections", "cifar10"
    ),
    "resnet32": BuiltinModel(lambda s: _resnet(s, depth=32), "CIFAR ResNet32", "cifar10"),
}

# older spellings that keep working
MODEL_ALIASES: dict[str, str] = {"digits_cnn": "digits-cnn"}


def canonical_model_name(name: str) -> str:
    """The registry's spelling of a model name (``digits_cnn`` -> ``digits-cnn``).

    Names that are not aliases (built-in names, ``package.module:factory``,
    unknown names) come back unchanged.
    """
    return MODEL_ALIASES.get(name, name)


def default_data(name: str) -> str | None:
    """The data spec a built-in model uses when none is given, or None when it needs a
    folder (CIFAR-10) or is not built in."""
    builtin = BUILTIN_MODELS.get(canonical_model_name(name))
    if builtin is None or builtin.data != "digits":
        return None
    return "digits"


def _import_factory(spec: str, what: str) -> Any:
    """Import ``package.module:attribute`` and return the attribute."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ProblemError(f"{what} {spec!r}: write it as package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProblemError(
            f"{what} {spec!r}: cannot import module {module_name!r} ({exc}); "
            "is it installed or on PYTHONPATH?"
        ) from exc
    except SystemExit as exc:
        raise ProblemError(
            f"{what} {spec!r}: importing module {module_name!r} called sys.exit() "
            f'(SystemExit({exc.code!r})); move that call under `if __name__ == "__main__":`'
        ) from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ProblemError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _factory_exited(what: str, spec: str, exc: SystemExit, returns: str) -> str:
    """The message for a factory that called sys.exit() instead of returning."""
    return (
        f"{what} {spec!r}: the factory called sys.exit() or exit() (SystemExit({exc.code!r})) "
        f"instead of returning {returns}; make it return {returns}"
    )


def load_loss_fn(spec: str) -> Callable[[nn.Module, Any], Any]:
    """``package.module:function``: a ``loss_fn(model, batch)`` returning the batch's mean
    loss or ``(mean_loss, num_samples)`` (see `HessianOperator`)."""
    fn = _import_factory(spec, "--loss")
    if not callable(fn) or isinstance(fn, type):
        raise ProblemError(
            f"--loss {spec!r} is a {type(fn).__name__}, not a function; give a function "
            "loss_fn(model, batch) returning the batch's mean loss"
        )
    return fn  # type: ignore[no-any-return]


def build_model(spec: str, seed: int) -> nn.Module:
    """A built-in model by name, or ``package.module:factory`` called with no arguments."""
    name = canonical_model_name(spec)
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name].build(seed)
    if ":" not in spec:
        names = ", ".join(BUILTIN_MODELS)
        raise ProblemError(
            f"unknown model {spec!r}: use a built-in name ({names}) or package.module:factory"
        )
    factory = _import_factory(spec, "--model")
    try:
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    except SystemExit as exc:
        raise ProblemError(_factory_exited("--model", spec, exc, "the model")) from exc
    except Exception as exc:
        raise ProblemError(
            f"--model {spec!r}: the factory raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ProblemError(
            f"--model {spec!r} gave a {type(model).__name__}, not a torch.nn.Module; "
            "the factory must return the model"
        )
    return model


# =============================================================================== state dicts
def _few(items: list[str]) -> str:
    head = ", ".join(items[:6])
    return head + (f", ... ({len(items)} in all)" if len(items) > 6 else "")


def map_prefix(state: dict[str, torch.Tensor], prefix: str, where: str) -> dict[str, torch.Tensor]:
    """The keys that start with ``OLD`` with it replaced by ``NEW`` (prefix ``"OLD=NEW"``,
    or ``"OLD"`` to strip it); keys without it are dropped (a training wrapper's own
    entries, such as a loss module's weights)."""
    old, _, new = prefix.partition("=")
    if not old:
        raise ProblemError(
            f"--checkpoint-prefix {prefix!r}: give the prefix to strip, e.g. 'model.', or "
            "OLD=NEW to replace one"
        )
    kept = {new + k[len(old) :]: v for k, v in state.items() if k.startswith(old)}
    if not kept:
        raise ProblemError(
            f"--checkpoint-prefix {prefix!r}: no key of checkpoint {where} starts with {old!r}; "
            f"its keys look like {_few(list(state))}"
        )
    return kept


def load_state_dict(
    model: nn.Module, path: str | Path, model_name: str, *, prefix: str | None = None
) -> None:
    """Load a state_dict file into `model`, explaining any mismatch key by key.

    Args:
        model: the model to load into (its keys and shapes must match exactly).
        path: a file written by ``torch.save(model.state_dict(), path)``; a dict
            holding the state dict under ``state_dict``, ``model_state_dict`` or
            ``model`` works too, and a ``module.`` prefix on every key is dropped.
        model_name: how the model is named in error messages.
        prefix: ``"OLD"`` strips OLD from the keys that start with it (e.g.
            ``"model."`` from a Lightning checkpoint) and drops the others;
            ``"OLD=NEW"`` replaces it (``"=transformer."`` adds one).

    Raises:
        ProblemError: the file is missing, unreadable, not a state dict, or does
            not fit the model (missing keys, unexpected keys, shape mismatches).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ProblemError(f"checkpoint file {p} not found")
    if not p.is_file():
        raise ProblemError(f"checkpoint {p} is not a file; give the file written by torch.save")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProblemError(
            f"cannot read checkpoint {p} ({msg}); expected a file written by "
            "torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ProblemError(
            f"checkpoint {p} holds a {type(obj).__name__}, not a state_dict of tensors; "
            "save it with torch.save(model.state_dict(), path)"
        )
    state: dict[str, torch.Tensor] = dict(obj)
    if prefix is not None:
        state = map_prefix(state, prefix, str(p))
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch (checkpoint vs model): {_few(shapes)}")
        raise ProblemError(
            f"checkpoint {p} does not fit model {model_name}: " + "; ".join(parts) + "; "
            "check --model (and its options) against the model that was saved"
            + ("" if prefix else "; --checkpoint-prefix maps a prefix of its keys")
        )
    model.load_state_dict(state)


# =============================================================================== data
@dataclass
class Data:
    """The batches an analysis runs on, and what they are."""

    batches: Any  # a list of (inputs, targets) or dict batches, or a DataLoader
    description: str
    num_samples: int
    # two samples of the first batch ((inputs, targets)), or the first dict batch
    example: Any = field(repr=False, default=None)


def _fixed_subset(n: int, samples: int | None) -> np.ndarray | None:
    """Indices of a fixed subset: the same `samples` indices every run (seed 0)."""
    if samples is None:
        return None
    if samples < 1:
        raise ProblemError(f"--samples must be at least 1, got {samples}")
    if samples > n:
        raise ProblemError(f"--samples {samples} is more than the {n} samples the data has")
    return np.sort(np.random.default_rng(0).permutation(n)[:samples])


def _raw_data(spec: str) -> tuple[Any, str]:
    """The data object a spec names, and a description."""
    if spec == "digits":
        return digits(), "scikit-learn digits (1,797 images, 8x8)"
    for prefix, train in (("cifar10:", True), ("cifar10-test:", False)):
        if spec.startswith(prefix):
            root = str(Path(spec[len(prefix) :]).expanduser()) if spec[len(prefix) :] else ""
            if not root:
                raise ProblemError(f"--data {spec!r}: give the folder, e.g. {prefix}/data/cifar10")
            if not Path(root).exists():
                raise ProblemError(f"--data {spec!r}: folder {root} not found")
            try:
                ds = cifar10(root, train=train)
            except (FileNotFoundError, ValueError) as exc:
                raise ProblemError(str(exc)) from exc
            split = "training" if train else "test"
            return ds, f"CIFAR-10 {split} set from {root}"
    if ":" not in spec:
        raise ProblemError(
            f"unknown data {spec!r}: use digits, cifar10:PATH, cifar10-test:PATH or "
            "package.module:factory"
        )
    factory = _import_factory(spec, "--data")
    try:
        obj = factory() if callable(factory) else factory
    except SystemExit as exc:
        raise ProblemError(_factory_exited("--data", spec, exc, "the data")) from exc
    except Exception as exc:
        raise ProblemError(
            f"--data {spec!r}: the factory raised {type(exc).__name__}: {exc}"
        ) from exc
    return obj, spec


def load_data(
    spec: str,
    *,
    samples: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Data:
    """Batches for an analysis: a fixed subset, split into batches, on the device.

    Args:
        spec: ``digits``, ``cifar10:PATH``, ``cifar10-test:PATH`` or
            ``package.module:factory`` (returning (inputs, targets) tensors, a
            Dataset or a DataLoader).
        samples: keep a fixed subset of this many samples (the same every run).
        batch_size: samples per batch (None: one batch).
        device: where the batches live.
        dtype: floating inputs are cast to it.
    """
    obj, desc = _raw_data(spec)
    if batch_size is not None and batch_size < 1:
        raise ProblemError(f"--batch-size must be at least 1, got {batch_size}")

    def move(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device)
        return t.to(dtype) if t.is_floating_point() else t

    if isinstance(obj, DataLoader):
        if samples is not None:
            raise ProblemError(
                f"--data {spec!r} gives a DataLoader: --samples needs a dataset or tensors; "
                "have the factory return the dataset instead"
            )
        if not hasattr(obj.dataset, "__len__"):
            raise ProblemError(
                f"--data {spec!r} gives a DataLoader over a dataset without a length (an "
                "IterableDataset, which may never end); have the factory return a Dataset "
                "with __len__, (inputs, targets) tensors, or a DataLoader over one"
            )
        try:
            first = next(iter(obj))
        except StopIteration:
            raise ProblemError(
                f"--data {spec!r} gives a DataLoader that yields no batch (its dataset is "
                "empty, or drop_last=True drops every sample); give it at least one sample"
            ) from None
        if isinstance(first, Mapping):  # dict batches (HuggingFace style)
            return Data(obj, desc, len(obj.dataset), _map_tensors(first, move))  # type: ignore[arg-type]
        ex = (move(first[0][:2]), first[1][:2].to(device))
        return Data(obj, desc, len(obj.dataset), ex)  # type: ignore[arg-type]
    tensors: tuple[torch.Tensor, torch.Tensor] | None = None
    if isinstance(obj, TensorDataset):
        tensors = (obj.tensors[0], obj.tensors[1])
    elif (
        isinstance(obj, (tuple, list))
        and len(obj) == 2
        and all(isinstance(t, torch.Tensor) for t in obj)
    ):
        tensors = (obj[0], obj[1])
    if tensors is not None:
        x, y = tensors
        if len(x) != len(y):
            raise ProblemError(f"--data {spec!r}: {len(x)} inputs but {len(y)} targets")
        if len(x) == 0:
            raise ProblemError(f"--data {spec!r} holds no samples")
        idx = _fixed_subset(len(x), samples)
        if idx is not None:
            t_idx = torch.as_tensor(idx)
            x, y = x[t_idx], y[t_idx]
        x, y = move(x), y.to(device)
        bs = len(x) if batch_size is None else int(batch_size)
        batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]
        sub = f", fixed subset of {len(x)}" if idx is not None else ""
        return Data(batches, desc + sub, len(x), (x[:2], y[:2]))
    if isinstance(obj, Dataset) and hasattr(obj, "__len__"):
        n = len(obj)
        if n == 0:
            raise ProblemError(f"--data {spec!r} holds no samples")
        idx = _fixed_subset(n, samples)
        ds: Any = Subset(obj, idx.tolist()) if idx is not None else obj
        loader = DataLoader(ds, batch_size=batch_size or len(ds), shuffle=False)
        xs, ys = [], []
        for b in loader:
            xs.append(move(b[0]))
            ys.append(b[1].to(device) if isinstance(b[1], torch.Tensor) else torch.as_tensor(b[1]))
        batches = list(zip(xs, ys, strict=True))
        return Data(batches, desc, len(ds), (xs[0][:2], ys[0][:2]))
    if isinstance(obj, Mapping) or (
        isinstance(obj, (list, tuple)) and obj and all(isinstance(b, Mapping) for b in obj)
    ):
        return _dict_data(obj, spec, desc, samples, batch_size, move)
    raise ProblemError(
        f"--data {spec!r} gave a {type(obj).__name__}; the factory must return (inputs, targets) "
        "tensors, a dict batch of tensors (e.g. input_ids and labels), a list of them, a torch "
        "Dataset or a DataLoader"
    )


def _map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`batch` with `fn` applied to every tensor in it (nested dicts, lists and tuples)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: _map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map_tensors(v, fn) for v in batch)
    return batch


def _rows(batch: Any) -> int | None:
    """The leading dimension of the first tensor in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    if isinstance(batch, Mapping):
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        return None
    for v in values:
        n = _rows(v)
        if n is not None:
            return n
    return None


def _take_rows(batch: Any, n: int, rows: slice | torch.Tensor) -> Any:
    """The `rows` of every tensor of `batch` with `n` rows (others are kept whole)."""

    def take(t: torch.Tensor) -> torch.Tensor:
        return t[rows] if t.ndim and t.shape[0] == n else t

    return _map_tensors(batch, take)


def _dict_data(
    obj: Any,
    spec: str,
    desc: str,
    samples: int | None,
    batch_size: int | None,
    move: Callable[[torch.Tensor], torch.Tensor],
) -> Data:
    """Dict batches (``{"input_ids": ..., "labels": ...}``): one, split by rows, or a list."""
    if isinstance(obj, Mapping):
        n = _rows(obj)
        if not n:
            raise ProblemError(f"--data {spec!r} gave a dict without a tensor of samples")
        idx = _fixed_subset(n, samples)
        one = obj
        if idx is not None:
            rows = torch.as_tensor(idx)
            one = _take_rows(obj, n, rows)
            n = len(idx)
        bs = n if batch_size is None else int(batch_size)
        batches = [_take_rows(one, n, slice(i, i + bs)) for i in range(0, n, bs)]
        sub = f", fixed subset of {n}" if idx is not None else ""
    else:
        if samples is not None or batch_size is not None:
            raise ProblemError(
                f"--data {spec!r} gives a list of dict batches: --samples and --batch-size need "
                "one dict batch to split; have the factory return one, or drop those options"
            )
        batches = list(obj)
        n = sum(_rows(b) or 0 for b in batches)
        sub = ""
    batches = [_map_tensors(b, move) for b in batches]
    plural = "es" if len(batches) > 1 else ""
    what = f"{desc}{sub} ({n} samples in {len(batches)} dict batch{plural})"
    return Data(batches, what, n, batches[0])
