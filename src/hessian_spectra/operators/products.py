"""Hessian-vector products of one batch: block strategies, the kept gradient graph, precision.

`HessianOperator` multiplies a block V of b vectors by a batch's Hessian from
the batch's first-order gradient graph (the gradient computed with
``create_graph=True``). This module holds the ways to do that and what they
need:

- the block strategies over one graph (`backward_block`): ``"double_backward"``
  (a loop of b backward passes, the graph retained between them) and
  ``"batched_backward"`` (one backward vmapped over the b columns, autograd's
  ``is_grads_batched``); ``"forward_over_reverse"`` (in ``hessian.py``:
  ``torch.func.jvp`` of ``torch.func.grad`` vmapped over the columns) builds
  its own graph for every block. ``docs/products.md`` has their measured costs and
  the rule ``hvp_mode="auto"`` follows (`auto_mode`);
- the kept graph (`GraphCache`): for data that are one batch, the gradient
  graph is built once and reused by every later product while the model is
  unchanged. "Unchanged" is checked exactly before every reuse: the identity,
  storage and version counter of every selected parameter, every buffer and
  every tensor of the batch, each module's train/eval mode, and then the
  values of those tensors against a copy taken when the graph was built (a
  fused optimizer step, or an edit through ``.data``, changes values without
  touching version counters). Any difference frees the graph and builds a
  new one. `graph_bytes` is what the kept graph holds: the tensors its nodes
  saved, the gradient, and the copy;
- precision (`Precision`, `resolve_precision`): products in a lower dtype than
  the model's (``product_dtype=torch.bfloat16`` under ``torch.autocast``, or
  ``"tf32"`` matmuls on CUDA), summed in float32 or wider, and models stored
  in bfloat16/float16, whose operator works in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hessian_spectra.operators.model import ModelLoss

__all__ = [
    "BLOCK_MODES",
    "GraphCache",
    "KeptGraph",
    "Precision",
    "auto_mode",
    "backward_block",
    "build_graph",
    "resolve_precision",
]

#: Strategies for a block of b columns; the first two share one gradient graph.
BLOCK_MODES = ("double_backward", "batched_backward", "forward_over_reverse")
HALF = (torch.float16, torch.bfloat16)
#: TensorFloat-32 keeps 10 mantissa bits, as float16 does: the same machine epsilon 2^-10.
TF32_EPS_DTYPE = torch.float16


# ------------------------------------------------------------------ precision


@dataclass(frozen=True)
class Precision:
    """The dtypes of one operator's products.

    Attributes:
        storage: the dtype of the model's selected parameters (and its batches).
        dtype: the operator's dtype (vectors in and out): the storage dtype, or
            float32 for a model stored in bfloat16/float16.
        product: what `product_dtype` resolved to: a torch dtype, or ``"tf32"``.
        autocast: the dtype of ``torch.autocast`` around each batch's product, or None.
        tf32: whether CUDA matmuls and convolutions may use TensorFloat-32.
        precision_dtype: the dtype whose machine epsilon is the products' rounding unit
            (float16 stands for TF32, whose epsilon is the same 2^-10).
    """

    storage: torch.dtype
    dtype: torch.dtype
    product: torch.dtype | str
    autocast: torch.dtype | None = None
    tf32: bool = False
    precision_dtype: torch.dtype = field(default=torch.float32)

    def context(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The context a batch's product runs in: autocast, TF32, or nothing."""
        if self.autocast is not None:
            return torch.autocast(device_type=device.type, dtype=self.autocast)
        if self.tf32:
            return _tf32_allowed()
        return contextlib.nullcontext()

    def accumulate(self, hv: torch.Tensor) -> torch.Tensor:
        """A batch's product in float32 or wider, ready to be weighted and summed."""
        return hv.float() if hv.dtype in HALF else hv


@contextlib.contextmanager
def _tf32_allowed() -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def resolve_precision(
    product_dtype: torch.dtype | str | None, storage: torch.dtype, device: torch.device
) -> Precision:
    """Check `product_dtype` against the model's dtype and device; the products' dtypes.

    Args:
        product_dtype: None (the model's dtype), ``torch.bfloat16`` or
            ``torch.float16`` (autocast; needs a float32 model), ``"tf32"``
            (a float32 model on CUDA), or the model's own dtype.
        storage: the dtype of the selected parameters.
        device: their device.
    """
    dtype = torch.float32 if storage in HALF else storage
    if isinstance(product_dtype, str) and product_dtype in ("bfloat16", "float16"):
        product_dtype = getattr(torch, product_dtype)
    if product_dtype is None or product_dtype == storage:
        return Precision(storage, dtype, storage, precision_dtype=storage)
    if storage in HALF:
        raise ValueError(
            f"the model is stored in {storage}, so its products are computed in {storage}; "
            f"product_dtype={product_dtype!r} cannot change that: leave product_dtype=None, "
            "or convert the model (model.float()) for float32 products"
        )
    if product_dtype == "tf32":
        if storage != torch.float32 or device.type != "cuda":
            raise ValueError(
                "product_dtype='tf32' is TensorFloat-32 matmuls of a float32 model on a CUDA "
                f"device; this model is {storage} on {device.type}. On a CPU use "
                "product_dtype=torch.bfloat16"
            )
        return Precision(storage, dtype, "tf32", tf32=True, precision_dtype=TF32_EPS_DTYPE)
    if product_dtype in HALF:
        if storage != torch.float32:
            raise ValueError(
                f"product_dtype={product_dtype} computes the products of a float32 model under "
                f"torch.autocast, which leaves {storage} tensors as they are; use a float32 "
                "model (model.float()) or product_dtype=None"
            )
        assert isinstance(product_dtype, torch.dtype)
        return Precision(
            storage, dtype, product_dtype, autocast=product_dtype, precision_dtype=product_dtype
        )
    raise ValueError(
        "product_dtype must be None, torch.bfloat16, torch.float16 or 'tf32', got "
        f"{product_dtype!r}"
    )


# ------------------------------------------------------------------ block strategies


def auto_mode(device: torch.device, columns: int) -> str:
    """The block strategy ``hvp_mode="auto"`` takes (measurements in docs/products.md).

    On the CPU the loop of backward passes over one graph was the cheapest at
    every block size measured; ``is_grads_batched`` pays off only where a
    vmapped kernel fills a wide device, so it is taken on CUDA from 4 columns.
    """
    if device.type == "cuda" and columns >= 4:
        return "batched_backward"
    return "double_backward"


@dataclass
class KeptGraph:
    """A batch's first-order gradient with its graph, and what it was built from.

    Attributes:
        grads: the gradient of the batch's mean loss, one tensor per selected
            parameter (with ``create_graph=True``: differentiable again).
        live: indices of the gradients that depend on the parameters (the others
            have a zero Hessian block).
        weight: the batch's weight.
        stamp: identities, storages and version counters of the tensors it
            was built from, and the modules' train/eval modes (see `GraphCache`).
        copies: copies of those tensors' values.
        nbytes: bytes the graph holds (saved tensors, gradient, copies).
    """

    grads: list[torch.Tensor]
    live: list[int]
    weight: float
    stamp: tuple[Any, ...] = ()
    copies: list[torch.Tensor] = field(default_factory=list)
    nbytes: int = 0


def build_graph(model_loss: ModelLoss, batch: Any) -> KeptGraph:
    """The batch's loss and its gradient with ``create_graph=True`` (call under enable_grad)."""
    loss, weight = model_loss.loss(batch)
    grads = model_loss.gradient(loss, create_graph=True)
    # gradients that are constant in the parameters have a zero Hessian block
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    return KeptGraph(list(grads), live, weight)


def backward_block(
    graph: KeptGraph,
    params: Sequence[torch.Tensor],
    Vt: list[torch.Tensor],
    mode: str,
    retain: bool,
) -> torch.Tensor:
    """The (n, b) block H V from a gradient graph: a loop of backward passes, or one vmapped.

    Args:
        graph: the batch's gradient graph.
        params: the selected parameters.
        Vt: per parameter, the b columns shaped ``(b, *p.shape)``.
        mode: ``"double_backward"`` (loop) or ``"batched_backward"`` (``is_grads_batched``).
        retain: keep the graph after the block (a kept graph); otherwise the
            last backward pass frees it.
    """
    b = Vt[0].shape[0]
    live = graph.live
    outs = [graph.grads[i] for i in live]
    inputs = [params[i] for i in live]
    if mode == "batched_backward":
        hv: Sequence[torch.Tensor | None] = ()
        if live:
            hv = torch.autograd.grad(
                outs,
                inputs,
                grad_outputs=[Vt[i] for i in live],
                retain_graph=retain,
                allow_unused=True,
                is_grads_batched=True,
            )
        full: list[torch.Tensor] = [torch.zeros_like(v) for v in Vt]
        for i, h in zip(live, hv, strict=True):
            if h is not None:
                full[i] = h
        return torch.cat([h.reshape(b, -1) for h in full], 1).T
    cols: list[torch.Tensor] = []
    for j in range(b):
        col: Sequence[torch.Tensor | None] = ()
        if live:
            col = torch.autograd.grad(
                outs,
                inputs,
                grad_outputs=[Vt[i][j] for i in live],
                retain_graph=retain or j < b - 1,
                allow_unused=True,
            )
        if len(live) < len(params) or any(h is None for h in col):
            filled = [torch.zeros_like(p) for p in params]
            for i, h in zip(live, col, strict=True):
                if h is not None:
                    filled[i] = h
            col = filled
        cols.append(torch.cat([h.reshape(-1) for h in col if h is not None]))
    return torch.stack(cols, 1)


# ------------------------------------------------------------------ the kept graph


def _batch_tensors(batch: Any, out: list[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        out.append(batch)
    elif isinstance(batch, dict):
        for v in batch.values():
            _batch_tensors(v, out)
    elif isinstance(batch, (tuple, list)):
        for v in batch:
            _batch_tensors(v, out)
    return out


def _stamp(tensors: Sequence[torch.Tensor], model: nn.Module) -> tuple[Any, ...]:
    marks = tuple((id(t), t.data_ptr(), t._version, t.shape, t.dtype) for t in tensors)
    return marks, tuple(m.training for m in model.modules())


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    try:
        storage = t.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # a tensor without storage (functorch, meta)
        return id(t), t.numel() * t.element_size()


_SAVED_NAMES: dict[type, list[str]] = {}


def saved_bytes(roots: Sequence[torch.Tensor], exclude: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages the autograd graph behind `roots` saved for backward.

    Walks the graph once (nodes' ``_saved_*`` attributes); the storages of the
    `exclude` tensors (parameters, batch: they exist without the graph) are
    not counted.
    """
    skip = {_storage_key(t)[0] for t in exclude}
    seen: dict[int, int] = {}
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    visited: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        names = _SAVED_NAMES.get(type(node))
        if names is None:
            names = [a for a in dir(node) if a.startswith("_saved_")]
            _SAVED_NAMES[type(node)] = names
        for name in names:
            try:
                value = getattr(node, name)
            except RuntimeError:  # already freed
                continue
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor):
                    ptr, size = _storage_key(t)
                    if ptr not in skip:
                        seen[ptr] = size
        stack.extend(fn for fn, _ in node.next_functions if fn is not None)
    for t in roots:
        ptr, size = _storage_key(t)
        seen.setdefault(ptr, size)
    return sum(seen.values())


class GraphCache:
    """The gradient graph of a lone batch, kept between products while nothing changed.

    `lookup` returns the kept graph only when the tensors it was built from
    (parameters, buffers, the batch) are the same objects, on the same
    storages, at the same version counters and with the same values, and every
    module is in the same train/eval mode; otherwise it frees the graph.

    Attributes:
        enabled: whether graphs are kept at all.
        graph: the kept graph, or None.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = bool(enabled)
        self.graph: KeptGraph | None = None
        self.builds = 0  # graphs built while enabled (for tests and benchmarks)

    @property
    def nbytes(self) -> int:
        """Bytes the kept graph holds (0 when none is kept)."""
        return 0 if self.graph is None else self.graph.nbytes

    def free(self) -> None:
        """Drop the kept graph; the next product builds a new one."""
        self.graph = None

    @staticmethod
    def _tensors(
        model: nn.Module, params: Sequence[torch.Tensor], batch: Any
    ) -> list[torch.Tensor]:
        return [*params, *model.buffers(), *_batch_tensors(batch, [])]

    def lookup(
        self, model: nn.Module, params: Sequence[torch.Tensor], batch: Any
    ) -> KeptGraph | None:
        """The kept graph when it is still the graph of this model and batch, else None."""
        graph = self.graph
        if graph is None:
            return None
        tensors = self._tensors(model, params, batch)
        same = graph.stamp == _stamp(tensors, model) and all(
            torch.equal(t.detach(), c) for t, c in zip(tensors, graph.copies, strict=True)
        )
        if not same:
            self.free()
            return None
        return graph

    def store(
        self, graph: KeptGraph, model: nn.Module, params: Sequence[torch.Tensor], batch: Any
    ) -> None:
        """Keep `graph`, stamped with the state of the tensors it was built from."""
        tensors = self._tensors(model, params, batch)
        graph.stamp = _stamp(tensors, model)
        graph.copies = [t.detach().clone() for t in tensors]
        copied = sum(c.numel() * c.element_size() for c in graph.copies)
        graph.nbytes = saved_bytes(graph.grads, tensors) + copied
        self.graph = graph
        self.builds += 1
