"""The loss Hessian of a network as a matrix-free operator (Pearlmutter, 1994).

`HessianOperator` multiplies blocks of vectors by the Hessian of the mean loss
over a data set with respect to (a subset of) the model's parameters. It
never forms the matrix: each product is a double backward pass (or a
forward-over-reverse pass through `torch.func`). A block of b vectors costs
ONE forward pass and ONE gradient graph per batch, reused for all b columns,
which is where block algorithms get their speed.

The b columns are b backward passes over the retained gradient graph. On
ResNet20 on the CPU (``benchmarks/hvp_cost.py``, one thread) that costs 0.74x
PyHessian's HVP per column at b = 8, while autograd's ``is_grads_batched``
(vmap over the same backward) cost 1.07x and vmapped forward-over-reverse
1.47x with 4x the memory, so the loop is the default.

The full-data Hessian is the sample-weighted mean of the per-batch Hessians
(a batch's weight is its number of samples), so a short last batch is not
over-counted.

Precision follows the model: the operator works in the dtype of the selected
parameters. Call ``model.double()`` before building the operator for a
float64 Hessian; floating-point inputs are cast to that dtype and moved to the
parameters' device. Sums over several batches are accumulated in float64.

Data parallel: with a ``torch.distributed`` default group of more than one
rank, each rank multiplies by its shard of the data, and one ``all_reduce``
per block product sums the sample-weighted products and the sample count
(packed in one tensor), so every rank gets the full-data product and the
algorithms above run unchanged, and identically, on every rank.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hessian_spectra import _distributed
from hessian_spectra.operators.base import LinearOperator, digest

LossFn = Callable[[nn.Module, Any], Any]
ParamSpec = str | nn.Module | Sequence[str | nn.Module | torch.Tensor] | None

_MODES = ("double_backward", "forward_over_reverse")
# modules whose output depends on train/eval mode
_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _is_one_batch(data: Any) -> bool:
    """A lone tuple/list of tensors, a dict, or a tensor is one batch."""
    if isinstance(data, torch.Tensor) or isinstance(data, Mapping):
        return True
    if isinstance(data, (tuple, list)):
        return len(data) > 0 and all(isinstance(t, torch.Tensor) for t in data)
    return False


def _batch_size(batch: Any) -> int:
    """Samples in a batch: len(batch[0]) for tuples, the first value's len for dicts."""
    first = batch
    if isinstance(batch, Mapping):
        first = next(iter(batch.values()), None)
    elif isinstance(batch, (tuple, list)):
        first = batch[0] if len(batch) else None
    if isinstance(first, torch.Tensor) and first.ndim > 0:
        return int(first.shape[0])
    if isinstance(first, (Sequence, Mapping)) and not isinstance(first, (str, bytes)):
        return len(first)
    raise TypeError(
        f"cannot tell how many samples a batch of type {type(batch).__name__} holds; "
        "have loss_fn return (mean_loss, num_samples)"
    )


_NO_ROWS: Any = object()  # a rank's empty slice of a lone batch


def _split_rows(batch: Any, rank: int, world: int) -> Any:
    """Rank `rank`'s contiguous slice of the samples of one batch (or `_NO_ROWS`)."""
    tensors: list[torch.Tensor] = []

    def collect(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            tensors.append(x)
        elif isinstance(x, Mapping):
            for v in x.values():
                collect(v)
        elif isinstance(x, (tuple, list)):
            for v in x:
                collect(v)
        else:
            raise TypeError(
                f"cannot split a batch holding a {type(x).__name__} across ranks; pass a list "
                "of batches (sharded by batch) or a DataLoader with a DistributedSampler"
            )

    collect(batch)
    sizes = {int(t.shape[0]) if t.ndim else -1 for t in tensors}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(
            "to split one batch across ranks every tensor in it needs the same number of "
            f"samples along dim 0, got sizes {sorted(sizes)}; pass a list of batches instead"
        )
    size = sizes.pop()
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    if stop == start:
        return _NO_ROWS

    def cut(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x[start:stop]
        if isinstance(x, Mapping):
            return {k: cut(v) for k, v in x.items()}
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            return type(x)(*(cut(v) for v in x))
        return type(x)(cut(v) for v in x)

    return cut(batch)


def _sample_digests(batch: Any) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Per-sample (sum, sum of squares) of the inputs and of the targets of a batch.

    For an ``(inputs, targets)`` batch; other layouts count everything as inputs.
    Used only by the determinism check, to tell changed data from a random model.
    """

    def rows(t: torch.Tensor) -> list[tuple[float, float]]:
        flat = t.detach().reshape(t.shape[0], -1).double() if t.ndim else t.reshape(1, 1).double()
        return list(zip(flat.sum(1).tolist(), (flat * flat).sum(1).tolist(), strict=True))

    if (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and all(isinstance(t, torch.Tensor) for t in batch)
    ):
        return rows(batch[0]), rows(batch[1])
    parts: list[torch.Tensor] = []
    if isinstance(batch, torch.Tensor):
        parts = [batch]
    elif isinstance(batch, Mapping):
        parts = [v for v in batch.values() if isinstance(v, torch.Tensor)]
    elif isinstance(batch, (tuple, list)):
        parts = [v for v in batch if isinstance(v, torch.Tensor)]
    return [r for t in parts for r in rows(t)], []


class _LossModule(nn.Module):
    """Wraps model + loss so that `torch.func.functional_call` can swap parameters."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> Any:
        return self.fn(self.model, batch)


class HessianOperator(LinearOperator):
    """The Hessian of a model's mean loss over its data, known through products.

    Args:
        model: the network. Must be in eval mode when it contains BatchNorm or
            Dropout (else the Hessian changes with every pass).
        criterion: called as ``criterion(model(inputs), targets)`` on each
            batch ``(inputs, targets)``, returning the batch's mean loss (e.g.
            ``nn.CrossEntropyLoss()``). Exactly one of criterion and loss_fn.
        data: one batch (a tuple or list of tensors, e.g. ``(inputs, targets)``)
            or a re-iterable of batches (a list of batches, a DataLoader).
            One-shot iterators (generators) are refused: every product makes a
            full pass over the data.
        loss_fn: keyword-only alternative to criterion, called as
            ``loss_fn(model, batch)`` and returning the batch's mean loss or
            ``(mean_loss, num_samples)``. For dict inputs, language models,
            physics-informed losses.
        params: which parameters the Hessian is taken with respect to: None
            (all with ``requires_grad``), a list of parameter names, a regex
            string (``re.search`` on the names), a module or a list of modules
            (their parameters; per-layer Hessians), or a mix of these.
        hvp_mode: ``"double_backward"`` (default; reverse-over-reverse) or
            ``"forward_over_reverse"`` (``torch.func.jvp`` of ``torch.func.grad``,
            vmapped over the block; fails clearly on models torch.func cannot
            transform).
        allow_train_mode: accept a model in train mode with BatchNorm/Dropout.
            BatchNorm then uses batch statistics (its running statistics are
            restored after every pass) and Dropout draws new masks each pass,
            so the operator is not a fixed matrix.
        check_finite: raise when an HVP contains NaN/inf, naming the batch.
        distributed: ``"auto"`` (default: on when a ``torch.distributed``
            default group with more than one rank is initialized), True (the
            same, but an error without such a group) or False (this rank's data
            only). Each rank takes a shard of the data, and no sample is
            counted twice: a DataLoader whose sampler is a
            ``DistributedSampler`` is the rank's shard as it is (a sampler that
            pads the data set with repeated samples is refused); any other
            re-iterable of batches must be the same full data on every rank
            and is sharded by batch (rank r takes batches r, r + W, ...); one
            batch is split into W contiguous slices of samples. Every rank must
            call the same products (run the same algorithm with the same seed).
        check_deterministic: multiply a random probe twice when the operator is
            built (two products, not counted in `num_matvecs`) and raise when
            the results differ by more than 100 machine epsilons relatively,
            naming the likely cause: Dropout in train mode, random data
            augmentation, or data that yield different samples on each pass.
            A shuffled loader passes (only the summation order changes).

    Attributes:
        param_names: names of the selected parameters, in vector order.
        params: the selected parameter tensors.
        blocks: ``{name: slice}`` of each parameter in a flat vector.
        is_distributed: whether products are summed over the ranks of the
            default ``torch.distributed`` group.
        num_samples: the samples (total batch weight) of the last product,
            over all ranks; ``local_num_samples``: this rank's share of them.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
        data: Any = None,
        *,
        loss_fn: LossFn | None = None,
        params: ParamSpec = None,
        hvp_mode: str = "double_backward",
        allow_train_mode: bool = False,
        check_finite: bool = True,
        distributed: bool | str = "auto",
        check_deterministic: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if (criterion is None) == (loss_fn is None):
            raise ValueError(
                "pass exactly one of criterion (called as criterion(model(inputs), targets)) "
                "and loss_fn (called as loss_fn(model, batch)); got "
                + ("both" if criterion is not None else "neither")
            )
        if hvp_mode not in _MODES:
            raise ValueError(f"hvp_mode must be one of {_MODES}, got {hvp_mode!r}")
        if distributed not in ("auto", True, False):
            raise ValueError(f"distributed must be 'auto', True or False, got {distributed!r}")
        self.model = model
        self.criterion = criterion
        self.loss_fn = loss_fn
        self.hvp_mode = hvp_mode
        self.allow_train_mode = bool(allow_train_mode)
        self.check_finite = bool(check_finite)
        self.distributed = distributed
        self.check_deterministic = bool(check_deterministic)
        # whether products are reduced across the ranks of the default group
        self.is_distributed = _distributed.resolve_distributed(distributed)
        self._rank, self._world = _distributed.rank(), _distributed.world_size()
        self._shard = "none"  # how this rank's data is chosen: none, sampler, batches, rows
        self._batch_log: list[Any] | None = None  # per-batch digests during the check
        # samples (batch weights) of the last product: all ranks', and this rank's
        self.num_samples = 0.0
        self.local_num_samples = 0.0
        self._gradients_checked = False  # forward_over_reverse: unused parameters checked

        names, tensors = self._select_params(params)
        dtypes = {p.dtype for p in tensors}
        devices = {p.device for p in tensors}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                f"the selected parameters mix dtypes {sorted(map(str, dtypes))} or devices "
                f"{sorted(map(str, devices))}; convert the model with model.to(dtype, device)"
            )
        dtype = tensors[0].dtype
        if not dtype.is_floating_point:
            raise TypeError(f"parameters must be floating point, got {dtype}")
        self.param_names: list[str] = names
        self.params: list[torch.Tensor] = tensors
        self.blocks: dict[str, slice] = {}
        start = 0
        for name, p in zip(names, tensors, strict=True):
            self.blocks[name] = slice(start, start + p.numel())
            start += p.numel()
        super().__init__(start, dtype, tensors[0].device)

        self._check_mode()
        self.data = data
        self._one_batch: Any = None
        if data is None:
            raise ValueError(
                "pass data: one batch (inputs, targets) or a re-iterable of batches "
                "(a list of batches or a DataLoader)"
            )
        if _is_one_batch(data):
            self._one_batch = self._prepare(data)
        else:
            if not isinstance(data, Iterable):
                raise TypeError(
                    f"data must be one batch (a tuple of tensors) or a re-iterable of batches, "
                    f"got {type(data).__name__}"
                )
            if isinstance(data, Iterator):
                raise TypeError(
                    f"data is a one-shot iterator ({type(data).__name__}); every Hessian "
                    "product needs a full pass over the data, so pass something that can be "
                    "iterated again: a list of batches or a DataLoader (e.g. list(generator))"
                )
            try:
                empty = len(data) == 0  # type: ignore[arg-type]
            except TypeError:
                empty = False
            if empty:
                raise ValueError("data is empty; pass at least one batch")
        if self.is_distributed:
            self._setup_shard()
        if self.check_deterministic:
            self._verify_deterministic()

    # ------------------------------------------------------------------ setup

    def _select_params(self, spec: ParamSpec) -> tuple[list[str], list[torch.Tensor]]:
        """Resolve `params` into (names, tensors) in the model's parameter order."""
        named = list(self.model.named_parameters())
        if not named:
            raise ValueError("the model has no parameters")
        by_id = {id(p): name for name, p in named}
        wanted: set[str] = set()
        if spec is None:
            wanted = {name for name, p in named if p.requires_grad}
            if not wanted:
                raise ValueError(
                    "no parameter of the model has requires_grad=True; unfreeze some or "
                    "name them in params="
                )
        else:
            items: Sequence[Any]
            if isinstance(spec, str):
                pattern = re.compile(spec)
                wanted = {name for name, _ in named if pattern.search(name)}
                if not wanted:
                    raise ValueError(
                        f"the regex {spec!r} matches no parameter name; names look like "
                        f"{[n for n, _ in named[:4]]}"
                    )
                items = ()
            elif isinstance(spec, nn.Module):
                items = [spec]
            elif isinstance(spec, Sequence):
                items = list(spec)
                if not items:
                    raise ValueError("params is an empty list; pass None for all parameters")
            else:
                raise TypeError(
                    "params must be None, a list of names, a regex string, a module or a "
                    f"list of modules, got {type(spec).__name__}"
                )
            known = {name for name, _ in named}
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
                        f"params entries must be names, modules or parameters, got "
                        f"{type(item).__name__}"
                    )
        frozen = sorted(name for name, p in named if name in wanted and not p.requires_grad)
        if frozen:
            raise ValueError(
                f"parameters {frozen} have requires_grad=False; unfreeze them "
                "(p.requires_grad_(True)) or leave them out of params"
            )
        names = [name for name, _ in named if name in wanted]
        return names, [p for name, p in named if name in wanted]

    def _setup_shard(self) -> None:
        """Choose this rank's shard of the data (see `distributed` in the class docstring)."""
        from torch.utils.data import DataLoader, RandomSampler
        from torch.utils.data.distributed import DistributedSampler

        r, w = self._rank, self._world
        if self._one_batch is not None:
            self._one_batch = _split_rows(self._one_batch, r, w)
            self._shard = "rows"
            return
        sampler = getattr(self.data, "sampler", None) if isinstance(self.data, DataLoader) else None
        if isinstance(sampler, DistributedSampler):
            if sampler.num_replicas != w or sampler.rank != r:
                raise ValueError(
                    f"the DataLoader's DistributedSampler has num_replicas={sampler.num_replicas}"
                    f", rank={sampler.rank}, but this process is rank {r} of {w}: build it "
                    "with the default group's values, DistributedSampler(dataset)"
                )
            size = len(sampler.dataset)  # type: ignore[arg-type]
            if not sampler.drop_last and sampler.total_size > size:
                raise ValueError(
                    f"the DataLoader's DistributedSampler pads the {size} samples to "
                    f"{sampler.total_size} ({w} ranks) by repeating "
                    f"{sampler.total_size - size} of them, which the Hessian would count "
                    "twice: pass drop_last=True to the DistributedSampler (it drops "
                    f"{size % w} samples instead), use a data set whose size is a multiple of "
                    f"{w}, or pass the full data on every rank (a list of batches or a "
                    "DataLoader without a DistributedSampler) to have it sharded by batch"
                )
            self._shard = "sampler"
            return
        if isinstance(sampler, RandomSampler):
            raise ValueError(
                "the DataLoader shuffles (RandomSampler): each rank would see its batches in "
                "another order, so sharding by batch index would count samples twice. Pass "
                "shuffle=False (the order does not matter for the Hessian), or give the "
                "DataLoader a DistributedSampler"
            )
        self._shard = "batches"

    def _verify_deterministic(self) -> None:
        """Multiply one random probe twice; raise, naming the likely cause, when they differ."""
        n = self.shape[0]
        gen = torch.Generator().manual_seed(0)
        v = torch.randn((n, 1), generator=gen, dtype=torch.float64)
        v = v.to(dtype=self.dtype, device=self.device)
        logs: list[list[Any]] = []
        products = []
        for _ in range(2):
            self._batch_log = []
            try:
                products.append(self._matmat(v).double())
            finally:
                logs.append(self._batch_log)
                self._batch_log = None
        h1, h2 = products
        scale = float(torch.linalg.vector_norm(h1))
        diff = float(torch.linalg.vector_norm(h1 - h2))
        tol = 100 * torch.finfo(self.dtype).eps
        if math.isfinite(diff) and diff <= tol * max(scale, 1e-300):
            return
        raise RuntimeError(
            f"check_deterministic: two products with the same vector differ by {diff:.3g} "
            f"relative to {scale:.3g} (tolerance: {tol:.1g} relative), so the operator is "
            f"not a fixed matrix. {self._nondeterminism_cause(logs[0], logs[1])}"
        )

    def _nondeterminism_cause(self, first: list[Any], second: list[Any]) -> str:
        """The likely cause of two different products, from what each pass saw."""
        x1 = sorted(r for inputs, _ in first for r in inputs)
        x2 = sorted(r for inputs, _ in second for r in inputs)
        y1 = sorted(r for _, targets in first for r in targets)
        y2 = sorted(r for _, targets in second for r in targets)
        if x1 == x2 and y1 == y2:
            dropout = [
                name or "model"
                for name, m in self.model.named_modules()
                if m.training and isinstance(m, nn.modules.dropout._DropoutNd)
            ]
            if dropout:
                return (
                    f"Likely cause: Dropout in train mode ({', '.join(dropout[:3])}) draws new "
                    "masks on every pass; call model.eval() and drop allow_train_mode=True"
                )
            batchnorm = [
                name or "model"
                for name, m in self.model.named_modules()
                if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm)
            ]
            if batchnorm:
                return (
                    "Likely cause: train-mode BatchNorm "
                    f"({', '.join(batchnorm[:3])}) normalizes with the statistics of batches "
                    "that are composed differently on each pass; call model.eval()"
                )
            return (
                "Both passes saw the same samples, so the model or the loss is random (a "
                "stochastic layer or noise drawn in forward): make the forward pass "
                "deterministic"
            )
        if len(x1) == len(x2) and y1 == y2:
            return (
                "Likely cause: random data augmentation: the same targets came with different "
                "inputs on the two passes (e.g. RandomCrop or RandomHorizontalFlip in the data "
                "set's transform); build the Hessian's data without random transforms"
            )
        return (
            f"Likely cause: the data yield different samples on each pass ({len(x1)} then "
            f"{len(x2)} samples, with different targets), e.g. a sampler that draws a random "
            "subset or an iterable that streams new data; pass a fixed list of batches or a "
            "DataLoader over a fixed data set (shuffle=True is fine)"
        )

    def fingerprint(self) -> dict[str, Any]:
        """Type, size, dtype and a digest of the selected parameters' names and values.

        The data are not part of it: a checkpoint resumed with other data is not
        detected.
        """
        return {
            **super().fingerprint(),
            "param_names": hashlib.sha256(",".join(self.param_names).encode()).hexdigest(),
            "params": digest(self.params),
        }

    def _check_mode(self) -> None:
        """Refuse BatchNorm/Dropout in train mode unless the user opted in."""
        if self.allow_train_mode:
            return
        culprits = [
            f"{name or 'model'} ({type(m).__name__})"
            for name, m in self.model.named_modules()
            if m.training and isinstance(m, _MODE_DEPENDENT)
        ]
        if culprits:
            shown = ", ".join(culprits[:3]) + (" ..." if len(culprits) > 3 else "")
            raise RuntimeError(
                f"the model is in train mode and has mode-dependent layers: {shown}; "
                "BatchNorm would use batch statistics (and update its running ones) and "
                "Dropout would draw new masks on every pass. Call model.eval() first, or "
                "pass allow_train_mode=True if you really want the train-mode Hessian"
            )

    def _prepare(self, batch: Any) -> Any:
        """Move tensors to the operator's device; cast floating ones to its dtype."""
        if isinstance(batch, torch.Tensor):
            if batch.is_floating_point():
                return batch.to(device=self.device, dtype=self.dtype)
            return batch.to(device=self.device)
        if isinstance(batch, Mapping):
            return {k: self._prepare(v) for k, v in batch.items()}
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
            return type(batch)(*(self._prepare(v) for v in batch))
        if isinstance(batch, (tuple, list)):
            return type(batch)(self._prepare(v) for v in batch)
        return batch

    def _batches(self) -> Iterator[Any]:
        for batch in self._local_batches():
            if self._batch_log is not None:
                self._batch_log.append(_sample_digests(batch))
            yield batch

    def _local_batches(self) -> Iterator[Any]:
        if self._one_batch is not None:
            if self._one_batch is not _NO_ROWS:
                yield self._one_batch
            return
        if self._shard == "batches":
            for index, batch in enumerate(self.data):
                if index % self._world == self._rank:
                    yield self._prepare(batch)
            return
        for batch in self.data:
            yield self._prepare(batch)

    # --------------------------------------------------------------- products

    def _loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, float]:
        """The batch's mean loss and its weight (number of samples)."""
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
                loss, weight = out, float(_batch_size(batch))
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
            weight = float(_batch_size(batch))
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"the loss must be a scalar tensor (the batch mean), got {shape}; use a "
                "criterion with reduction='mean' or return loss.mean() from loss_fn"
            )
        if not weight > 0:
            raise ValueError(f"a batch must have a positive number of samples, got {weight}")
        return loss, weight

    def _batch_hvp_double_backward(self, batch: Any, Vt: list[torch.Tensor]) -> tuple[Any, float]:
        """Per-parameter H_batch @ V for one batch by double backward; one graph for all columns."""
        with torch.enable_grad():
            loss, weight = self._loss(self.model, batch)
            grads = self._gradient(loss, create_graph=True)
            # gradients that are constant in the parameters have a zero Hessian block
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            b = Vt[0].shape[0]
            cols: list[torch.Tensor] = []
            for j in range(b):
                hv: Sequence[torch.Tensor | None] = ()
                if live:
                    hv = torch.autograd.grad(
                        [grads[i] for i in live],
                        [self.params[i] for i in live],
                        grad_outputs=[Vt[i][j] for i in live],
                        retain_graph=j < b - 1,
                        allow_unused=True,
                    )
                if len(live) < len(self.params) or any(h is None for h in hv):
                    full = [torch.zeros_like(p) for p in self.params]
                    for i, h in zip(live, hv, strict=True):
                        if h is not None:
                            full[i] = h
                    hv = full
                cols.append(torch.cat([h.reshape(-1) for h in hv if h is not None]))
        return torch.stack(cols, 1), weight

    def _gradient(self, loss: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
        """The loss's gradient; raises naming the parameters that receive none."""
        if not loss.requires_grad:
            raise ValueError(
                "the loss does not depend on the selected parameters (it has no gradient "
                "graph); check that the model is used in the loss and not under no_grad"
            )
        grads = torch.autograd.grad(loss, self.params, create_graph=create_graph, allow_unused=True)
        missing = [n for n, g in zip(self.param_names, grads, strict=True) if g is None]
        if missing:
            raise ValueError(
                f"parameters {missing} receive no gradient from the loss; leave them out "
                "with params=..., or freeze them with requires_grad_(False)"
            )
        return [g for g in grads if g is not None]  # all of them, after the check

    def _batch_hvp_forward_over_reverse(
        self, batch: Any, Vt: list[torch.Tensor]
    ) -> tuple[Any, float]:
        """Per-parameter H_batch @ V for one batch by jvp of grad, vmapped over the columns."""
        from torch.func import functional_call, grad, jvp, vmap

        if not self._gradients_checked:
            # torch.func gives zeros where autograd gives None: check once, as the
            # double-backward mode does on every batch
            with torch.enable_grad():
                self._gradient(self._loss(self.model, batch)[0], create_graph=False)
            self._gradients_checked = True

        wrapper = _LossModule(self.model, self._loss)
        primals = {
            f"model.{n}": p.detach() for n, p in zip(self.param_names, self.params, strict=True)
        }
        keys = list(primals)
        weights: list[float] = []  # filled while tracing: the weight is a Python float

        def loss_of(p: dict[str, torch.Tensor]) -> torch.Tensor:
            loss, weight = functional_call(wrapper, p, (batch,))
            weights.append(weight)
            return loss

        def hvp_column(*v: torch.Tensor) -> list[torch.Tensor]:
            hv = jvp(grad(loss_of), (primals,), (dict(zip(keys, v, strict=True)),))[1]
            return [hv[k] for k in keys]

        try:
            with warnings.catch_warnings():
                # torch's forward-mode AD loads its decompositions with torch.jit.script
                # on first use, which warns that torch.jit.script is deprecated
                warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
                hv = vmap(hvp_column)(*Vt)
        except (RuntimeError, NotImplementedError) as err:
            raise RuntimeError(
                f"hvp_mode='forward_over_reverse' failed for this model ({err}); torch.func "
                "cannot transform it. Use hvp_mode='double_backward' (the default)"
            ) from err
        b = Vt[0].shape[0]
        return torch.cat([h.reshape(b, -1) for h in hv], 1).T, weights[0]

    def _accumulate(self, V: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One pass over the data: (sum_k w_k H_k V, sum_k w_k), w_k = samples in batch k.

        Sums over more than one batch are kept in float64. Data-parallel
        reductions belong right after this loop.
        """
        b = V.shape[1]
        Vt_full = V.T.contiguous()
        Vt = [
            Vt_full[:, s].view(b, *p.shape)
            for s, p in zip(self.blocks.values(), self.params, strict=True)
        ]
        step = (
            self._batch_hvp_double_backward
            if self.hvp_mode == "double_backward"
            else self._batch_hvp_forward_over_reverse
        )
        total: torch.Tensor | None = None
        weight_sum = 0.0
        bad = -1  # the first batch whose product is not finite (distributed runs)
        for index, batch in enumerate(self._batches()):
            hv, weight = step(batch, Vt)
            if self.check_finite and not bool(torch.isfinite(hv).all()):
                if not self.is_distributed:
                    raise FloatingPointError(
                        f"the Hessian-vector product of batch {index} contains NaN or inf; check "
                        "that batch's data and the model's numerics (a float64 model, "
                        "model.double(), may help)"
                    )
                bad = index if bad < 0 else bad
                hv = torch.zeros_like(hv)
            if total is None:
                total = hv * weight
            else:
                if total.dtype != torch.float64:
                    total = total.to(torch.float64)
                total.add_(hv.to(torch.float64), alpha=weight)
            weight_sum += weight
        self.local_num_samples = weight_sum
        if self.is_distributed:
            total, weight_sum = self._reduce(total, weight_sum, b, bad)
        if total is None:
            raise ValueError("data yielded no batches; pass at least one batch")
        self.num_samples = weight_sum
        return total, weight_sum

    def _reduce(
        self, total: torch.Tensor | None, weight_sum: float, b: int, bad: int
    ) -> tuple[torch.Tensor, float]:
        """Sum the ranks' weighted products and sample counts: ONE all_reduce.

        The block, the sample count and the number of ranks with a non-finite
        product travel in one float64 tensor, so a failure is raised on every
        rank (no rank is left waiting in the next product).
        """
        n = self.shape[0]
        buf = torch.zeros(n * b + 2, dtype=torch.float64, device=self.device)
        if total is not None:
            buf[: n * b] = total.reshape(-1)
        buf[n * b] = weight_sum
        buf[n * b + 1] = 1.0 if bad >= 0 else 0.0
        _distributed.all_reduce_sum(buf)
        if buf[n * b + 1] > 0:
            here = f"; on this rank (rank {self._rank}) its batch {bad}" if bad >= 0 else ""
            raise FloatingPointError(
                f"a Hessian-vector product contains NaN or inf on {int(buf[n * b + 1])} "
                f"rank(s){here}; check the data and the model's numerics (a float64 model, "
                "model.double(), may help)"
            )
        weight = float(buf[n * b])
        if weight <= 0:
            raise ValueError("no rank has data: give every rank the data (see distributed=)")
        return buf[: n * b].view(n, b), weight

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        self._check_mode()
        if self.check_finite and not bool(torch.isfinite(V).all()):
            raise FloatingPointError("the input block contains NaN or inf")
        saved = self._save_running_stats()
        try:
            total, weight = self._accumulate(V.detach())
        finally:
            self._restore_running_stats(saved)
        return (total / weight).to(self.dtype)

    def _save_running_stats(self) -> list[tuple[nn.Module, dict[str, torch.Tensor]]]:
        """Buffers of train-mode BatchNorm layers (only with allow_train_mode)."""
        if not self.allow_train_mode:
            return []
        saved: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []
        for m in self.model.modules():
            if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm):
                bufs = {k: b.detach().clone() for k, b in m.named_buffers(recurse=False)}
                saved.append((m, bufs))
        return saved

    @staticmethod
    def _restore_running_stats(saved: list[tuple[nn.Module, dict[str, torch.Tensor]]]) -> None:
        with torch.no_grad():
            for m, bufs in saved:
                for k, b in m.named_buffers(recurse=False):
                    b.copy_(bufs[k])

    # ---------------------------------------------------------------- helpers

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat (n,) vector into ``{name: tensor shaped like the parameter}``."""
        if not isinstance(v, torch.Tensor) or v.ndim != 1 or v.shape[0] != self.shape[0]:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"expected a flat vector of shape ({self.shape[0]},), got {shape}")
        return {
            name: v[s].view(p.shape)
            for (name, s), p in zip(self.blocks.items(), self.params, strict=True)
        }

    def flatten(self, tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors (a dict by name, or a list in order) to (n,)."""
        if isinstance(tensors, Mapping):
            missing = [n for n in self.param_names if n not in tensors]
            if missing:
                raise ValueError(f"missing entries for parameters {missing}")
            parts = [tensors[n] for n in self.param_names]
        else:
            parts = list(tensors)
            if len(parts) != len(self.params):
                raise ValueError(f"expected {len(self.params)} tensors, got {len(parts)}")
        return torch.cat([t.reshape(-1) for t in parts]).to(self.dtype)

    def __repr__(self) -> str:
        return (
            f"HessianOperator(n={self.shape[0]}, params={len(self.params)} tensors, "
            f"dtype={self.dtype}, device={self.device}, hvp_mode={self.hvp_mode!r})"
        )
