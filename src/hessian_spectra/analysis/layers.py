"""Per-layer Hessian traces from one trace estimate.

The study's "find slow layers": layers that keep a high trace during training
are the ones to look at. `layer_traces` builds the Hessian operator of a
model and runs `trace` once with the parameter vector split by layer, so
every layer's share of the trace (the trace of its diagonal block of the
Hessian) comes from the same probes, with its own standard error, at the cost
of a single estimate rather than one per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from hessian_spectra.algorithms import trace
from hessian_spectra.operators import Criterion, HessianOperator, LossFn, ParamSpec
from hessian_spectra.results import TraceResult

TraceMethod = Literal["hutchinson", "hutch++", "xtrace"]  # the estimators `trace` offers


def layer_of(param_name: str, depth: int | None = None) -> str:
    """The layer a parameter belongs to: its module path, optionally cut to `depth` parts.

    ``"layer1.0.conv1.weight"`` -> ``"layer1.0.conv1"`` (depth None), ``"layer1"``
    (depth 1), ``"layer1.0"`` (depth 2). A parameter held by the model itself
    (no dot) is its own layer.
    """
    parts = param_name.split(".")
    path = parts[:-1] if len(parts) > 1 else parts
    if depth is not None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1 (or None), got {depth}")
        path = path[:depth]
    return ".".join(path)


def group_blocks(
    blocks: Mapping[str, slice], depth: int | None = None
) -> dict[str, slice | torch.Tensor]:
    """Merge per-parameter slices into per-layer index sets, in parameter order.

    A layer whose parameters are adjacent in the flat vector (the usual case)
    gets one slice; otherwise an index tensor.
    """
    parts: dict[str, list[slice]] = {}
    for name, sl in blocks.items():
        parts.setdefault(layer_of(name, depth), []).append(sl)
    out: dict[str, slice | torch.Tensor] = {}
    for layer, slices in parts.items():
        slices = sorted(slices, key=lambda s: s.start)
        if all(a.stop == b.start for a, b in zip(slices, slices[1:], strict=False)):
            out[layer] = slice(slices[0].start, slices[-1].stop)
        else:
            out[layer] = torch.cat([torch.arange(s.start, s.stop) for s in slices])
    return out


def layer_traces(
    model: nn.Module,
    criterion: Criterion | None = None,
    data: Any = None,
    *,
    method: TraceMethod = "hutchinson",
    num_matvecs: int | None = None,
    rtol: float | None = None,
    seed: int | None = None,
    loss_fn: LossFn | None = None,
    params: ParamSpec = None,
    depth: int | None = None,
    blocks: Mapping[str, slice | torch.Tensor] | str | None = None,
    progress: bool = False,
    max_matvecs: int = 2000,
    block_size: int = 10,
    **operator_options: Any,
) -> TraceResult:
    """Trace of each layer's diagonal Hessian block, all from one trace estimate.

    Args:
        model, criterion, data, loss_fn, params: as for `HessianOperator`
            (``criterion(model(inputs), targets)`` or ``loss_fn(model, batch)``).
        method: the trace estimator (default "hutchinson", whose per-layer
            standard errors are exact variance estimates; "hutch++" and
            "xtrace" also split by layer, see `trace`).
        num_matvecs: the product budget (default 100 unless `rtol` is given).
        rtol: stop once the total's standard error is below rtol * |trace|.
        seed: the random seed (drawn and recorded when None).
        depth: group parameters by the first `depth` parts of their module
            path (e.g. 1: "layer1", "layer2", ...); None: by the module that
            holds them ("layer1.0.conv1").
        blocks: instead of `depth`, ``"layers"`` (one block per repeated layer
            of the network, e.g. GPT-2's ``transformer.h.0``, plus embeddings
            and head), ``"modules"`` (per module role: embeddings, attention,
            mlp, norm, head), ``"parameters"``, or a mapping name -> slice or
            index tensor of the operator's vector (see ``operators/grouping.py``).
        progress: show a progress bar.
        max_matvecs, block_size: as for `trace`.
        **operator_options: passed to `HessianOperator` (e.g. hvp_mode,
            allow_train_mode).

    Returns:
        A `TraceResult` whose `block_estimates`, `block_stderrs` and
        `block_sizes` are keyed by layer, in parameter order, and sum to the
        total `estimate`.
    """
    op = HessianOperator(model, criterion, data, loss_fn=loss_fn, params=params, **operator_options)
    if blocks is not None and depth is not None:
        raise ValueError("give depth or blocks, not both")
    if isinstance(blocks, str):
        groups: Mapping[str, slice | torch.Tensor] = op.blocks_by(blocks)
    else:
        groups = group_blocks(op.blocks, depth) if blocks is None else blocks
    return trace(
        op,
        method=method,
        num_matvecs=num_matvecs,
        rtol=rtol,
        seed=seed,
        blocks=groups,
        progress=progress,
        max_matvecs=max_matvecs,
        block_size=block_size,
    )
