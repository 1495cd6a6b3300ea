"""Model handling: parameters, data, batches, the loss and its weight, in one place.

Every curvature operator (`HessianOperator`, and GGN or Fisher operators
after it), `loss_landscape`, `layer_traces` and the CLI turn a model, a loss
and data into numbers the same way, through this module:

- which parameters: `ParamSpec`, `select_parameters`, and `ParameterSelection`
  (the selected tensors, their slices in a flat vector, `flatten` and
  `unflatten` between flat vectors and ``{name: tensor}``);
- what the data are: one batch (`is_one_batch`) or a re-iterable of batches;
  one-shot iterators (generators), empty data and data without a length
  (unless ``max_batches`` caps each pass) are refused (`check_data`);
- how a batch is prepared: `prepare_batch` moves every tensor, in tuples,
  lists, namedtuples and nested dicts, to the parameters' device and casts
  floating ones to their dtype (integer tensors such as class labels keep
  theirs);
- the loss call: ``criterion(model(inputs), targets)``,
  ``loss_fn(model, batch)``, returning the batch's mean loss or
  ``(mean_loss, num_samples)``, or, with neither, the model's own loss:
  ``model(**batch).loss`` for dict batches (HuggingFace models); a criterion
  with ``reduction='sum'`` or ``'none'`` is refused (``operators/criteria.py``).
  The forward runs with attention on its twice-differentiable kernel
  (``operators/autograd_support.py``);
- the batch weight: the number of terms the batch's mean loss averages over:
  a ``weight_fn(batch)`` when given; else the criterion's own count where it
  has one (``ignore_index`` and class weights of ``CrossEntropyLoss``/``NLLLoss``,
  `criteria.criterion_weight`); for the model's own loss its labels other
  than -100, shifted by one for a causal LM (`criteria.label_count`); else
  `batch_weight`, one rule for every batch layout;
- the train-mode check: BatchNorm, Dropout or an RNN's dropout in train mode
  is refused (`check_eval_mode`) unless asked for; every buffer a pass changes
  (BatchNorm's running statistics, a counter updated in forward) is restored
  after it (`buffers_kept`), and `modes_kept` restores every submodule's own
  train/eval mode (these live in ``operators/modes.py``);
- what the data are, for checkpoints and data-parallel runs: `data_digest`
  (``operators/sharding.py``).

`ModelLoss` bundles these: built once from (model, criterion, data, loss_fn,
params), it yields this rank's prepared batches (`batches`) and computes a
batch's mean loss and weight (`loss`). A new curvature operator builds one and
writes only its product.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hessian_spectra import _distributed
from hessian_spectra.operators.autograd_support import twice_differentiable
from hessian_spectra.operators.criteria import (
    check_reduction,
    coarser_loss_message,
    criterion_weight,
    is_causal_lm,
    no_terms_message,
    own_loss,
)
from hessian_spectra.operators.modes import MODE_DEPENDENT as MODE_DEPENDENT
from hessian_spectra.operators.modes import buffers_kept as buffers_kept
from hessian_spectra.operators.modes import check_eval_mode as check_eval_mode
from hessian_spectra.operators.modes import is_mode_dependent as is_mode_dependent
from hessian_spectra.operators.modes import modes_kept as modes_kept
from hessian_spectra.operators.modes import running_stats_kept as running_stats_kept
from hessian_spectra.operators.sharding import (
    NO_ROWS,
    SHARD_OPTIONS,
    Shard,
    choose_shard,
    data_digest,
    split_rows,
)

Criterion = Callable[[torch.Tensor, Any], torch.Tensor]
"""``criterion(model(inputs), targets)`` -> the batch's mean loss (``nn.CrossEntropyLoss()``)."""

LossFn = Callable[[nn.Module, Any], Any]
"""``loss_fn(model, batch)`` -> the batch's mean loss, or ``(mean_loss, num_samples)``."""

WeightFn = Callable[[Any], float]
"""``weight_fn(batch)`` -> the number of terms the batch's mean loss averages over."""

ParamSpec = str | nn.Module | torch.Tensor | Sequence[str | nn.Module | torch.Tensor] | None
"""Which parameters: None (all trainable), a regex, names, modules, parameter tensors, or a mix."""


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


def data_length(data: Any) -> int | None:
    """``len(data)``, or None when the data have none (a DataLoader over an IterableDataset)."""
    try:
        return len(data)
    except TypeError:
        return None


def check_max_batches(max_batches: int | None) -> int | None:
    """Refuse a cap on the batches per pass that is not a positive int."""
    if max_batches is None:
        return None
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    return max_batches


def check_data(data: Any, max_batches: int | None = None) -> None:
    """Refuse data that cannot be passed over more than once, or whose pass may not end.

    None, generators and empty data are refused; so are data without a length
    (an IterableDataset, a stream) unless `max_batches` caps every pass.
    """
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
    length = data_length(data)
    if length == 0:
        raise ValueError("data is empty; pass at least one batch")
    if length is None and max_batches is None:
        raise ValueError(
            f"data ({type(data).__name__}) have no length, so a pass over them may never end "
            "(an IterableDataset or a stream), and every product makes a full pass: pass "
            "max_batches=N to use the first N batches on every pass, or pass a list of "
            "batches or a DataLoader over a map-style Dataset"
        )


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


# ------------------------------------------------------------------ the loss


def _check_own_loss_data(data: Any) -> None:
    """Refuse, up front, a first batch the model's own loss cannot take (not a dict)."""
    first = data if is_one_batch(data) else None
    if first is None and isinstance(data, Sequence) and len(data) > 0:
        first = data[0]
    if first is not None and not isinstance(first, Mapping):
        raise ValueError(
            "pass exactly one of criterion (called as criterion(model(inputs), targets)) and "
            "loss_fn (called as loss_fn(model, batch)), or neither for a model that returns "
            "its own loss from model(**batch) (dict batches, as HuggingFace models take); got "
            f"neither, and batches of type {type(first).__name__}, not dicts"
        )


class ModelLoss:
    """The mean loss of a model over its data, as a function of selected parameters.

    Built once, it owns everything a curvature operator or an analysis needs
    from the model and the data: the parameter selection, the checked data,
    this rank's share of them, prepared batches and the loss call.

    Args:
        model: the network.
        criterion: called as ``criterion(model(inputs), targets)`` on each
            batch ``(inputs, targets)``, returning the batch's mean loss.
            At most one of criterion and loss_fn; with neither, the model's
            own loss ``model(**batch).loss`` (dict batches, HuggingFace).
            A criterion with ``reduction='sum'`` or ``'none'`` is refused.
        data: one batch (a tuple or list of tensors, a dict, a tensor) or a
            re-iterable of batches (a list of batches, a DataLoader). Data
            without a length need `max_batches`.
        loss_fn: called as ``loss_fn(model, batch)``, returning the batch's
            mean loss or ``(mean_loss, num_samples)``.
        params: which parameters (see `select_parameters`).
        allow_train_mode: accept BatchNorm, Dropout or an RNN's dropout in train mode.
        distributed: take this rank's shard of the data (see `choose_shard`).
        shard: with `distributed`, "auto" (compare a digest of the data
            across ranks: the same data are sharded, different data are each
            rank's own shard), "full" or "local" (force either).
        max_batches: use only the first this many batches of each pass (the
            cap that makes data without a length usable).
        weight_fn: ``weight_fn(batch)`` -> the number of terms the batch's
            mean loss averages over; replaces every other weight rule.

    Attributes:
        model, criterion, loss_fn, data, allow_train_mode, max_batches, weight_fn: as given.
        causal: whether the model's own loss is a causal LM's (`criteria.is_causal_lm`).
        twice_differentiable: run each forward with attention on its math
            kernel (True, needed by products that differentiate twice).
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
        shard: str = "auto",
        max_batches: int | None = None,
        weight_fn: WeightFn | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if criterion is not None and loss_fn is not None:
            raise ValueError(
                "pass exactly one of criterion (called as criterion(model(inputs), targets)) "
                "and loss_fn (called as loss_fn(model, batch)), or neither for the model's own "
                "loss model(**batch).loss; got both"
            )
        if weight_fn is not None and not callable(weight_fn):
            raise TypeError(f"weight_fn must be callable as weight_fn(batch), got {weight_fn!r}")
        if criterion is not None:
            check_reduction(criterion)
        if shard not in SHARD_OPTIONS:
            raise ValueError(f"shard must be one of {SHARD_OPTIONS}, got {shard!r}")
        self.model = model
        self.criterion = criterion
        self.loss_fn = loss_fn
        self.weight_fn = weight_fn
        self.causal = criterion is None and loss_fn is None and is_causal_lm(model)
        self.twice_differentiable = True
        self._dtype_warned = False
        self.allow_train_mode = bool(allow_train_mode)
        self.max_batches = check_max_batches(max_batches)
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
        check_data(data, self.max_batches)
        if criterion is None and loss_fn is None:
            _check_own_loss_data(data)
        self.data = data
        self._one_batch: Any = (
            prepare_batch(data, self.device, self.dtype) if is_one_batch(data) else None
        )
        self._data_digest: str | None = None
        self.shard = Shard()
        if distributed:
            rank, world = _distributed.rank(), _distributed.world_size()
            # one pass hashing this rank's data, one small all-reduce of the digests
            digests = self._all_ranks_digests(rank, world)
            self._data_digest = hashlib.sha256(",".join(digests).encode()).hexdigest()
            self.shard = choose_shard(
                data,
                one_batch=self._one_batch is not None,
                rank=rank,
                world=world,
                option=shard,
                same_everywhere=len(set(digests)) == 1,
            )
            if self._one_batch is not None and self.shard.mode == "rows":
                self._one_batch = split_rows(self._one_batch, rank, world)
        self.on_batch: Callable[[Any], None] | None = None

    def _raw_batches(self) -> Iterator[Any]:
        """The data as passed on this rank, batch by batch, capped by `max_batches`."""
        if is_one_batch(self.data):
            return iter([self.data])
        return itertools.islice(iter(self.data), self.max_batches)

    def _local_digest(self) -> str:
        # a shuffling DataLoader draws its order from the global generator: leave it as it was
        with torch.random.fork_rng(devices=[]):
            return data_digest(self._raw_batches())

    def _all_ranks_digests(self, rank: int, world: int) -> list[str]:
        """Every rank's `data_digest`, in rank order (one all-reduce of a W x 32 table)."""
        table = torch.zeros(world, 32, dtype=torch.float64, device=self.device)
        table[rank] = torch.tensor(list(bytes.fromhex(self._local_digest())), dtype=torch.float64)
        _distributed.all_reduce_sum(table)
        return [bytes(int(v) for v in row).hex() for row in table.cpu().tolist()]

    def data_digest(self) -> str:
        """A SHA-256 of the data: every sample of every batch, computed once when first asked.

        All the data are hashed, sample by sample (inputs, targets and any
        other tensor, with dtypes and shapes), independently of the batch
        order and grouping (`sharding.data_digest`); the pass costs less than
        one product. In a data-parallel run it is the digest of every rank's
        data (computed when the operator is built), the same on every rank.
        """
        if self._data_digest is None:
            self._data_digest = self._local_digest()
        return self._data_digest

    def check_mode(self) -> None:
        """Refuse BatchNorm/Dropout in train mode unless `allow_train_mode`."""
        if not self.allow_train_mode:
            check_eval_mode(self.model)

    def state_kept(self) -> contextlib.AbstractContextManager[None]:
        """A context in which passes leave every buffer of the model as it was (`buffers_kept`).

        Train-mode BatchNorm updates its running statistics, and a forward may
        update other buffers (counters, running averages): each product starts
        from the same buffers, and the model is left as it was.
        """
        return buffers_kept(self.model)

    @property
    def num_batches(self) -> int | None:
        """How many batches `batches` yields on this rank, when the data tell (else None)."""
        if self._one_batch is not None:
            return 0 if self._one_batch is NO_ROWS else 1
        total = data_length(self.data)
        if self.max_batches is not None:
            total = self.max_batches if total is None else min(total, self.max_batches)
        if total is None:
            return None
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
        for index, batch in enumerate(itertools.islice(iter(self.data), self.max_batches)):
            if self.shard.takes(index):
                yield prepare_batch(batch, self.device, self.dtype)

    def loss(self, batch: Any, model: nn.Module | None = None) -> tuple[torch.Tensor, float]:
        """A prepared batch's mean loss and its weight: the number of terms the mean averages.

        The weight is ``weight_fn(batch)`` when given; else the count a
        loss_fn returns, the criterion's own count
        (`criteria.criterion_weight`: targets other than ``ignore_index``,
        weighted by class weights), for the model's own loss the count of its
        ``labels`` (`criteria.label_count`: those other than -100, shifted by
        one for a causal LM; the batch's samples when it has no labels), or
        the batch's samples (`batch_weight`). The forward runs in
        `twice_differentiable` (attention on its math kernel).

        Args:
            batch: a batch from `batches`.
            model: the module to call (default: the model; `torch.func` passes
                a functional stand-in).
        """
        model = self.model if model is None else model
        with twice_differentiable(self.twice_differentiable):
            loss, weight = self._loss_and_count(batch, model)
        if self.weight_fn is not None:
            weight = float(self.weight_fn(batch))
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"the loss must be a scalar tensor (the batch mean), got {shape}; use a "
                "criterion with reduction='mean' or return loss.mean() from loss_fn"
            )
        if not weight > 0:
            if self.weight_fn is not None:
                raise ValueError(
                    f"weight_fn returned {weight} for a batch; it must return the positive "
                    "number of terms the batch's mean loss averages over"
                )
            if self.criterion is None and self.loss_fn is None:
                raise ValueError(
                    "a batch holds no label other than -100 (after the shift of a causal LM), "
                    "so the model's mean loss is 0/0; leave such batches out of the data"
                )
            raise ValueError(no_terms_message(self.criterion, weight))
        return loss, weight

    def _loss_and_count(self, batch: Any, model: nn.Module) -> tuple[Any, float]:
        if self.loss_fn is not None:
            out = self.loss_fn(model, batch)
            if isinstance(out, (tuple, list)):
                if len(out) != 2:
                    raise ValueError(
                        "loss_fn must return the mean loss or (mean_loss, num_samples), got a "
                        f"{type(out).__name__} of length {len(out)}"
                    )
                loss, count = out
                return loss, float(count)
            return out, self._default_weight(batch)
        if self.criterion is None:
            return self._own_loss(batch, model)
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(
                "with a criterion every batch must be (inputs, targets); got "
                f"{type(batch).__name__}"
                + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                + ". Use loss_fn=lambda model, batch: ... for other batch layouts"
            )
        inputs, targets = batch
        counted = criterion_weight(self.criterion, targets)
        loss = self.criterion(model(inputs), targets)
        return loss, self._default_weight(batch) if counted is None else counted

    def _default_weight(self, batch: Any) -> float:
        # batch_weight refuses batches it cannot count: not asked when weight_fn counts
        return 1.0 if self.weight_fn is not None else float(batch_weight(batch))

    def _own_loss(self, batch: Any, model: nn.Module) -> tuple[torch.Tensor, float]:
        """``model(**batch).loss`` and its count of labels (or of samples, without labels)."""
        loss, count = own_loss(model, batch, self.causal)
        message = coarser_loss_message(loss.dtype, self.dtype)
        if message is not None and not self._dtype_warned:
            self._dtype_warned = True
            warnings.warn(message, stacklevel=4)
        if count is None:
            count = self._default_weight(batch)
        return loss, count

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
