"""Model handling: parameters, data, batches, the loss and its weight, in one place.

Every curvature operator (`HessianOperator`, and GGN or Fisher operators
after it), `loss_landscape`, `layer_traces` and the CLI turn a model, a loss
and data into numbers the same way, through this module:

- which parameters: `ParamSpec`, `select_parameters`, and `ParameterSelection`
  (the selected tensors, their slices in a flat vector, `flatten` and
  `unflatten` between flat vectors and ``{name: tensor}``);
- what the data are: one batch (`is_one_batch`) or a re-iterable of batches;
  one-shot iterators (generators) and empty data are refused (`check_data`);
- how a batch is prepared: `prepare_batch` moves every tensor, in tuples,
  lists, namedtuples and nested dicts, to the parameters' device and casts
  floating ones to their dtype (integer tensors such as class labels keep
  theirs);
- the loss call: ``criterion(model(inputs), targets)`` or
  ``loss_fn(model, batch)``, returning the batch's mean loss or
  ``(mean_loss, num_samples)``;
- the batch weight: `batch_weight`, one rule for every batch layout;
- the train-mode check: BatchNorm or Dropout in train mode is refused
  (`check_eval_mode`) unless asked for, and then BatchNorm's running
  statistics are restored after every pass (`running_stats_kept`).

`ModelLoss` bundles these: built once from (model, criterion, data, loss_fn,
params), it yields this rank's prepared batches (`batches`) and computes a
batch's mean loss and weight (`loss`). A new curvature operator builds one and
writes only its product.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import torch
from torch import nn

from hessian_spectra import _distributed
from hessian_spectra.operators.sharding import NO_ROWS, Shard, plan_shard, split_rows

Criterion = Callable[[torch.Tensor, Any], torch.Tensor]
"""``criterion(model(inputs), targets)`` -> the batch's mean loss (``nn.CrossEntropyLoss()``)."""

LossFn = Callable[[nn.Module, Any], Any]
"""``loss_fn(model, batch)`` -> the batch's mean loss, or ``(mean_loss, num_samples)``."""

ParamSpec = str | nn.Module | torch.Tensor | Sequence[str | nn.Module | torch.Tensor] | None
"""Which parameters: None (all trainable), a regex, names, modules, parameter tensors, or a mix."""

# modules whose output depends on train/eval mode
MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


# ------------------------------------------------------------------ parameters


def _shown(names: Sequence[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{list(names[:limit])}{more}"


def select_parameters(model: nn.Module, params: ParamSpec = None) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs that `params` selects, in ``named_parameters`` order.

    Args:
        model: the network.
        params: None (every parameter with ``requires_grad``); a regex string
            (``re.search`` on the names of the trainable parameters); or a
            name, module or parameter tensor, or a list mixing these (a
            module stands for all its parameters: per-layer Hessians). The
            order asked does not matter: the model's order is kept.

    Raises:
        ValueError: the selection is empty, names an unknown parameter, a
            module or tensor that is not the model's, or a frozen parameter
            (``requires_grad=False``) by name, module or tensor.
        TypeError: `params` is of another type.
    """
    named = list(model.named_parameters())
    if not named:
        raise ValueError("the model has no parameters")
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise ValueError(
                "no parameter of the model has requires_grad=True; unfreeze some or "
                "name them in params="
            )
        return chosen
    if isinstance(params, str):
        return _select_by_regex(named, params)
    items: list[Any]
    if isinstance(params, (nn.Module, torch.Tensor)):
        items = [params]
    elif isinstance(params, Sequence):
        items = list(params)
        if not items:
            raise ValueError("params is an empty list; pass None for all parameters")
    else:
        raise TypeError(
            "params must be None, a list of names, a regex string, a module or a "
            f"list of modules, got {type(params).__name__}"
        )
    by_id = {id(p): name for name, p in named}
    known = {name for name, _ in named}
    wanted: set[str] = set()
    for item in items:
        if isinstance(item, str):
            if item not in known:
                raise ValueError(
                    f"the model has no parameter named {item!r}; names look like "
                    f"{[n for n, _ in named[:4]]}"
                )
            wanted.add(item)
        elif isinstance(item, nn.Module):
            own = list(item.parameters())
            if not own:
                raise ValueError(f"module {type(item).__name__} has no parameters")
            for p in own:
                if id(p) not in by_id:
                    raise ValueError(
                        f"a parameter of module {type(item).__name__} is not a "
                        "parameter of the model; pass submodules of the model"
                    )
                wanted.add(by_id[id(p)])
        elif isinstance(item, torch.Tensor):
            if id(item) not in by_id:
                raise ValueError("a tensor in params is not a parameter of the model")
            wanted.add(by_id[id(item)])
        else:
            raise TypeError(
                f"params entries must be names, modules or parameters, got {type(item).__name__}"
            )
    frozen = [name for name, p in named if name in wanted and not p.requires_grad]
    if frozen:
        raise ValueError(
            f"parameters {_shown(frozen)} have requires_grad=False; unfreeze them "
            "(p.requires_grad_(True)) or leave them out of params"
        )
    return [(n, p) for n, p in named if n in wanted]


def _select_by_regex(
    named: list[tuple[str, nn.Parameter]], regex: str
) -> list[tuple[str, nn.Parameter]]:
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise ValueError(f"params regex {regex!r} does not compile: {exc}") from exc
    matched = [(n, p) for n, p in named if pattern.search(n)]
    chosen = [(n, p) for n, p in matched if p.requires_grad]
    if chosen:
        return chosen
    if matched:
        raise ValueError(
            f"the regex {regex!r} matches no parameter that requires grad, only frozen ones "
            f"{_shown([n for n, _ in matched])}; unfreeze them with p.requires_grad_(True) "
            "or choose other parameters"
        )
    raise ValueError(
        f"the regex {regex!r} matches no parameter name; names look like "
        f"{[n for n, _ in named[:4]]}"
    )


class ParameterSelection:
    """Selected parameters of a model and their layout in one flat vector.

    Args:
        model: the network.
        params: which parameters (see `select_parameters`).

    Attributes:
        names: the selected parameters' names, in vector order (the model's order).
        params: the selected parameter tensors, in the same order.
        blocks: ``{name: slice}`` of each parameter in a flat vector.
        numel: the flat vector's length (the number of selected scalars).
    """

    def __init__(self, model: nn.Module, params: ParamSpec = None) -> None:
        chosen = select_parameters(model, params)
        self.names: list[str] = [n for n, _ in chosen]
        self.params: list[torch.Tensor] = [p for _, p in chosen]
        self.blocks: dict[str, slice] = {}
        start = 0
        for name, p in chosen:
            self.blocks[name] = slice(start, start + p.numel())
            start += p.numel()
        self.numel = start

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """The ``(name, parameter)`` pairs, in vector order."""
        return list(zip(self.names, self.params, strict=True))

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat ``(numel,)`` vector into ``{name: view shaped like the parameter}``."""
        if not isinstance(v, torch.Tensor) or v.ndim != 1 or v.shape[0] != self.numel:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(
                f"expected a flat vector of shape ({self.numel},) over the selected "
                f"parameters, got {shape}"
            )
        return {
            name: v[s].view(p.shape)
            for (name, s), p in zip(self.blocks.items(), self.params, strict=True)
        }

    def flatten(self, tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors (a dict by name, or a list in order) to ``(numel,)``.

        The result keeps the tensors' dtype and device.
        """
        if isinstance(tensors, Mapping):
            missing = [n for n in self.names if n not in tensors]
            if missing:
                raise ValueError(f"missing entries for parameters {missing}")
            parts = [tensors[n] for n in self.names]
        else:
            parts = list(tensors)
            if len(parts) != len(self.params):
                raise ValueError(f"expected {len(self.params)} tensors, got {len(parts)}")
        return torch.cat([t.reshape(-1) for t in parts])


# ------------------------------------------------------------------ data


def is_one_batch(data: Any) -> bool:
    """A lone tuple/list of tensors, a dict, or a tensor is one batch; anything else, batches."""
    if isinstance(data, (torch.Tensor, Mapping)):
        return True
    if isinstance(data, (tuple, list)):
        return len(data) > 0 and all(isinstance(t, torch.Tensor) for t in data)
    return False


def check_data(data: Any) -> None:
    """Refuse data that cannot be passed over more than once: None, generators, empty data."""
    if data is None:
        raise ValueError(
            "pass data: one batch (inputs, targets) or a re-iterable of batches "
            "(a list of batches or a DataLoader)"
        )
    if is_one_batch(data):
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            "data must be one batch (a tuple of tensors) or a re-iterable of batches, "
            f"got {type(data).__name__}"
        )
    if isinstance(data, Iterator):
        raise TypeError(
            f"data is a one-shot iterator ({type(data).__name__}); every Hessian product "
            "and every loss landscape needs a full pass over the data, so pass something "
            "that can be iterated again: a list of batches or a DataLoader (e.g. "
            "list(generator))"
        )
    try:
        empty = len(data) == 0  # type: ignore[arg-type]
    except TypeError:
        empty = False
    if empty:
        raise ValueError("data is empty; pass at least one batch")


def prepare_batch(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move a batch's tensors to `device`; cast floating ones to `dtype`, keep integer ones.

    Tuples, lists, namedtuples and dicts are prepared recursively; other values
    are passed through unchanged.
    """
    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point():
            return batch.to(device=device, dtype=dtype)
        return batch.to(device=device)
    if isinstance(batch, Mapping):
        return {k: prepare_batch(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(prepare_batch(v, device, dtype) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(prepare_batch(v, device, dtype) for v in batch)
    return batch


def _leading_sizes(x: Any, out: dict[str, int], path: str) -> None:
    if isinstance(x, torch.Tensor):
        if x.ndim > 0:
            out[path or "batch"] = int(x.shape[0])
    elif isinstance(x, Mapping):
        for k, v in x.items():
            _leading_sizes(v, out, f"{path}[{k!r}]")
    elif isinstance(x, (tuple, list)):
        for i, v in enumerate(x):
            _leading_sizes(v, out, f"{path}[{i}]")


def batch_weight(batch: Any) -> int:
    """A batch's weight: its number of samples, the leading dimension its tensors share.

    One rule for every layout: the tensors anywhere in the batch (in tuples,
    lists and dicts, nested) must agree on the size of their first dimension,
    and that size is the weight. Tensors without dimensions and values that
    are not tensors do not count. A batch whose tensors disagree (e.g. a dict
    holding per-sample ``input_ids`` and a shared table), or that holds no
    tensor with a dimension, is refused; a ``loss_fn`` returning
    ``(mean_loss, num_samples)`` gives the weight itself and needs no rule.
    """
    sizes: dict[str, int] = {}
    _leading_sizes(batch, sizes, "")
    distinct = set(sizes.values())
    if len(distinct) == 1:
        return distinct.pop()
    if not distinct:
        reason = "it holds no tensor with a batch dimension"
    else:
        shown = ", ".join(f"{k}: {v}" for k, v in list(sizes.items())[:6])
        reason = f"its tensors disagree on the size of dim 0 ({shown})"
    raise ValueError(
        f"cannot tell how many samples a batch of type {type(batch).__name__} holds: {reason}; "
        "have loss_fn return (mean_loss, num_samples)"
    )


# ------------------------------------------------------------------ train mode


def check_eval_mode(model: nn.Module) -> None:
    """Refuse a model whose BatchNorm or Dropout layers are in train mode."""
    culprits = [
        f"{name or 'model'} ({type(m).__name__})"
        for name, m in model.named_modules()
        if m.training and isinstance(m, MODE_DEPENDENT)
    ]
    if culprits:
        shown = ", ".join(culprits[:3]) + (" ..." if len(culprits) > 3 else "")
        raise RuntimeError(
            f"the model is in train mode and has mode-dependent layers: {shown}; "
            "BatchNorm would use batch statistics (and update its running ones) and "
            "Dropout would draw new masks on every pass. Call model.eval() first, or "
            "pass allow_train_mode=True if you really want the train-mode Hessian"
        )


@contextlib.contextmanager
def running_stats_kept(model: nn.Module) -> Iterator[None]:
    """Restore the buffers of train-mode BatchNorm layers (running statistics) on exit."""
    saved: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []
    for m in model.modules():
        if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append((m, {k: b.detach().clone() for k, b in m.named_buffers(recurse=False)}))
    try:
        yield
    finally:
        with torch.no_grad():
            for m, bufs in saved:
                for k, b in m.named_buffers(recurse=False):
                    b.copy_(bufs[k])


# ------------------------------------------------------------------ the loss


class ModelLoss:
    """The mean loss of a model over its data, as a function of selected parameters.

    Built once, it owns everything a curvature operator or an analysis needs
    from the model and the data: the parameter selection, the checked data,
    this rank's share of them, prepared batches and the loss call.

    Args:
        model: the network.
        criterion: called as ``criterion(model(inputs), targets)`` on each
            batch ``(inputs, targets)``, returning the batch's mean loss.
            Exactly one of criterion and loss_fn.
        data: one batch (a tuple or list of tensors, a dict, a tensor) or a
            re-iterable of batches (a list of batches, a DataLoader).
        loss_fn: called as ``loss_fn(model, batch)``, returning the batch's
            mean loss or ``(mean_loss, num_samples)``.
        params: which parameters (see `select_parameters`).
        allow_train_mode: accept BatchNorm or Dropout in train mode.
        distributed: take this rank's shard of the data (see `plan_shard`).

    Attributes:
        model, criterion, loss_fn, data, allow_train_mode: as given.
        selection: the `ParameterSelection`.
        dtype, device: those of the selected parameters; batches are moved there.
        shard: this rank's `Shard` of the data.
        on_batch: when set, called with every prepared batch `batches` yields.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Criterion | None = None,
        data: Any = None,
        *,
        loss_fn: LossFn | None = None,
        params: ParamSpec = None,
        allow_train_mode: bool = False,
        distributed: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if (criterion is None) == (loss_fn is None):
            raise ValueError(
                "pass exactly one of criterion (called as criterion(model(inputs), targets)) "
                "and loss_fn (called as loss_fn(model, batch)); got "
                + ("both" if criterion is not None else "neither")
            )
        self.model = model
        self.criterion = criterion
        self.loss_fn = loss_fn
        self.allow_train_mode = bool(allow_train_mode)
        self.selection = ParameterSelection(model, params)
        tensors = self.selection.params
        dtypes = {p.dtype for p in tensors}
        devices = {p.device for p in tensors}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                f"the selected parameters mix dtypes {sorted(map(str, dtypes))} or devices "
                f"{sorted(map(str, devices))}; convert the model with model.to(dtype, device)"
            )
        self.dtype: torch.dtype = tensors[0].dtype
        self.device: torch.device = tensors[0].device
        if not self.dtype.is_floating_point:
            raise TypeError(f"parameters must be floating point, got {self.dtype}")
        self.check_mode()
        check_data(data)
        self.data = data
        self._one_batch: Any = (
            prepare_batch(data, self.device, self.dtype) if is_one_batch(data) else None
        )
        self.shard = Shard()
        if distributed:
            rank, world = _distributed.rank(), _distributed.world_size()
            self.shard = plan_shard(
                data, one_batch=self._one_batch is not None, rank=rank, world=world
            )
            if self._one_batch is not None:
                self._one_batch = split_rows(self._one_batch, rank, world)
        self.on_batch: Callable[[Any], None] | None = None

    def check_mode(self) -> None:
        """Refuse BatchNorm/Dropout in train mode unless `allow_train_mode`."""
        if not self.allow_train_mode:
            check_eval_mode(self.model)

    def state_kept(self) -> contextlib.AbstractContextManager[None]:
        """A context in which passes leave BatchNorm's running statistics as they were.

        Only train-mode BatchNorm changes them, and only `allow_train_mode` lets
        it through; otherwise this does nothing.
        """
        if self.allow_train_mode:
            return running_stats_kept(self.model)
        return contextlib.nullcontext()

    @property
    def num_batches(self) -> int | None:
        """How many batches `batches` yields on this rank, when the data tell (else None)."""
        if self._one_batch is not None:
            return 0 if self._one_batch is NO_ROWS else 1
        if not isinstance(self.data, Sized):
            return None
        total = len(self.data)
        if self.shard.mode != "batches":
            return total
        return len(range(self.shard.rank, total, self.shard.world))

    def batches(self) -> Iterator[Any]:
        """This rank's batches, prepared: on the parameters' device, in their dtype."""
        for batch in self._local_batches():
            if self.on_batch is not None:
                self.on_batch(batch)
            yield batch

    def _local_batches(self) -> Iterator[Any]:
        if self._one_batch is not None:
            if self._one_batch is not NO_ROWS:
                yield self._one_batch
            return
        for index, batch in enumerate(self.data):
            if self.shard.takes(index):
                yield prepare_batch(batch, self.device, self.dtype)

    def loss(self, batch: Any, model: nn.Module | None = None) -> tuple[torch.Tensor, float]:
        """A prepared batch's mean loss and its weight (see `batch_weight`).

        Args:
            batch: a batch from `batches`.
            model: the module to call (default: the model; `torch.func` passes
                a functional stand-in).
        """
        model = self.model if model is None else model
        if self.loss_fn is not None:
            out = self.loss_fn(model, batch)
            if isinstance(out, (tuple, list)):
                if len(out) != 2:
                    raise ValueError(
                        "loss_fn must return the mean loss or (mean_loss, num_samples), got a "
                        f"{type(out).__name__} of length {len(out)}"
                    )
                loss, count = out
                weight = float(count)
            else:
                loss, weight = out, float(batch_weight(batch))
        else:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise ValueError(
                    "with a criterion every batch must be (inputs, targets); got "
                    f"{type(batch).__name__}"
                    + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                    + ". Use loss_fn=lambda model, batch: ... for other batch layouts"
                )
            inputs, targets = batch
            assert self.criterion is not None
            loss = self.criterion(model(inputs), targets)
            weight = float(batch_weight(batch))
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"the loss must be a scalar tensor (the batch mean), got {shape}; use a "
                "criterion with reduction='mean' or return loss.mean() from loss_fn"
            )
        if not weight > 0:
            raise ValueError(f"a batch must have a positive number of samples, got {weight}")
        return loss, weight

    def gradient(self, loss: torch.Tensor, create_graph: bool = False) -> list[torch.Tensor]:
        """The loss's gradient for the selected parameters; names the ones that get none."""
        if not loss.requires_grad:
            raise ValueError(
                "the loss does not depend on the selected parameters (it has no gradient "
                "graph); check that the model is used in the loss and not under no_grad"
            )
        grads = torch.autograd.grad(
            loss, self.selection.params, create_graph=create_graph, allow_unused=True
        )
        missing = [n for n, g in zip(self.selection.names, grads, strict=True) if g is None]
        if missing:
            raise ValueError(
                f"parameters {missing} receive no gradient from the loss; leave them out "
                "with params=..., or freeze them with requires_grad_(False)"
            )
        return [g for g in grads if g is not None]  # all of them, after the check
