"""Loss landscapes: the loss on a 1-D line or a 2-D plane through the current parameters.

``loss_landscape`` evaluates ``L(theta + a d_1)`` or ``L(theta + a d_1 + b d_2)``
on a grid, for directions given by the caller or built here:

- ``"eigen"``: the top eigenvectors of the loss Hessian (unit norm), the
  "most significant" plane of PyHessian (Yao et al., 2020). The coordinates
  are then Euclidean distances in parameter space, and near a minimum the
  loss along eigenvector i rises like ``lambda_i a^2 / 2``.
- ``"random"``: random Gaussian directions, filter-normalized (Li, Xu, Taylor,
  Studer, Goldstein, 2018: "Visualizing the loss landscape of neural nets"):
  each filter (slice along the output dimension) of a weight's direction is
  scaled to the norm of the same filter of the weight, and biases and other
  one-dimensional parameters (BatchNorm) get zero, as in the paper's default.
- ``"gradient"``: the unit gradient direction; a second direction, where asked
  for, is a random unit direction orthogonal to it.

The model's parameters and buffers are restored bit-for-bit afterwards, also
when an evaluation raises. The grid is evaluated in one pass over the data:
each batch is loaded once and all grid points are evaluated on it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hessian_spectra._progress import progress_bar
from hessian_spectra.results import LandscapeResult

Directions = (
    str
    | torch.Tensor
    | Mapping[str, torch.Tensor]
    | Sequence[torch.Tensor]
    | Sequence[Mapping[str, torch.Tensor]]
)
ParamSpec = None | str | Sequence[str] | Sequence[nn.Module] | nn.Module


def select_parameters(model: nn.Module, params: ParamSpec = None) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs a parameter spec selects, in ``named_parameters`` order.

    Args:
        model: the network.
        params: None (every parameter that requires grad), a regex searched in
            each parameter name, a list of names, or modules whose parameters to take.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is None:
        chosen = named
    elif isinstance(params, str):
        try:
            pattern = re.compile(params)
        except re.error as exc:
            raise ValueError(f"params regex {params!r} does not compile: {exc}") from exc
        chosen = [(n, p) for n, p in named if pattern.search(n)]
        if not chosen:
            names = ", ".join(n for n, _ in named[:8])
            raise ValueError(
                f"params regex {params!r} matches no trainable parameter; names look like: {names}"
            )
    else:
        items: list[Any] = [params] if isinstance(params, nn.Module) else list(params)
        if all(isinstance(x, str) for x in items):
            lookup = dict(named)
            missing = [x for x in items if x not in lookup]
            if missing:
                raise ValueError(f"unknown parameter names {missing}; see model.named_parameters()")
            wanted = set(items)
            chosen = [(n, p) for n, p in named if n in wanted]
        elif all(isinstance(x, nn.Module) for x in items):
            ids = {id(p) for m in items for p in m.parameters()}
            chosen = [(n, p) for n, p in named if id(p) in ids]
        else:
            raise TypeError("params must be None, a regex, a list of names or a list of modules")
        if not chosen:
            raise ValueError("params selects no trainable parameter")
    return chosen


def _split_flat(v: torch.Tensor, chosen: list[tuple[str, nn.Parameter]]) -> dict[str, torch.Tensor]:
    n = sum(p.numel() for _, p in chosen)
    if v.ndim != 1 or v.numel() != n:
        raise ValueError(
            f"a flat direction must have shape ({n},) (the selected parameters), "
            f"got {tuple(v.shape)}"
        )
    out: dict[str, torch.Tensor] = {}
    start = 0
    for name, p in chosen:
        out[name] = v[start : start + p.numel()].reshape(p.shape)
        start += p.numel()
    return out


def _as_direction(
    d: torch.Tensor | Mapping[str, torch.Tensor], chosen: list[tuple[str, nn.Parameter]]
) -> dict[str, torch.Tensor]:
    shapes = {n: p for n, p in chosen}
    if isinstance(d, torch.Tensor):
        parts = _split_flat(d, chosen)
    elif isinstance(d, Mapping):
        unknown = [k for k in d if k not in shapes]
        if unknown:
            raise ValueError(
                f"direction names {unknown} are not selected trainable parameters of the model"
            )
        parts = dict(d)
    else:
        raise TypeError(f"a direction must be a tensor or a dict of tensors, got {type(d)}")
    out = {}
    for name, p in chosen:
        t = parts.get(name)
        if t is None:
            out[name] = torch.zeros_like(p)
            continue
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(
                f"direction for {name} has shape {tuple(t.shape)}, the parameter {tuple(p.shape)}"
            )
        out[name] = t.detach().to(dtype=p.dtype, device=p.device)
    return out


def _flat(d: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in d.values()])


def random_directions(
    model: nn.Module,
    num: int = 2,
    *,
    seed: int = 0,
    params: ParamSpec = None,
    filter_normalize: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Random Gaussian directions, filter-normalized as in Li et al. (2018).

    Args:
        model: the network (its current weights set the filter norms).
        num: how many directions.
        seed: seed of the Gaussian draws (drawn on the CPU in float64).
        params: which parameters to move (see `select_parameters`).
        filter_normalize: scale each filter to the weight's filter norm and zero
            one-dimensional parameters; False gives unit-norm directions instead.

    Returns:
        `num` dicts ``{name: tensor}``.
    """
    chosen = select_parameters(model, params)
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for _ in range(int(num)):
        d: dict[str, torch.Tensor] = {}
        for name, p in chosen:
            r = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            w = p.detach().to("cpu", torch.float64)
            if filter_normalize:
                if p.ndim <= 1:
                    r = torch.zeros_like(r)
                else:
                    rn = r.reshape(r.shape[0], -1).norm(dim=1).clamp_min(1e-300)
                    wn = w.reshape(w.shape[0], -1).norm(dim=1)
                    r = r * (wn / rn).reshape(-1, *([1] * (r.ndim - 1)))
            d[name] = r
        if not filter_normalize:
            norm = float(_flat(d).norm())
            d = {k: v / norm for k, v in d.items()}
        out.append({n: d[n].to(dtype=p.dtype, device=p.device) for n, p in chosen})
    return out


def _batches(data: Any) -> list[Any] | Iterable[Any]:
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        return [data]
    if data is None:
        raise ValueError(
            "data is required: one batch (inputs, targets) or a re-iterable of batches"
        )
    if iter(data) is data:
        raise TypeError(
            "data is a one-shot iterator (e.g. a generator); pass a list of batches or a "
            "DataLoader, which can be iterated again"
        )
    return data  # type: ignore[no-any-return]


def _loss_of_batch(
    model: nn.Module,
    criterion: Callable[..., torch.Tensor] | None,
    loss_fn: Callable[..., Any] | None,
    batch: Any,
) -> tuple[torch.Tensor, float]:
    """The mean loss on one batch and the batch's weight (its sample count)."""
    if loss_fn is not None:
        out = loss_fn(model, batch)
        if isinstance(out, tuple):
            return out[0], float(out[1])
        return out, float(len(batch[0])) if isinstance(batch, (tuple, list)) else 1.0
    assert criterion is not None
    inputs, targets = batch[0], batch[1]
    return criterion(model(inputs), targets), float(len(inputs))


def _move(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(batch, (tuple, list)):
        return type(batch)(_move(t, device, dtype) for t in batch)
    if isinstance(batch, torch.Tensor):
        t = batch.to(device)
        return t.to(dtype) if t.is_floating_point() else t
    return batch


def gradient_direction(
    model: nn.Module,
    criterion: Callable[..., torch.Tensor] | None,
    data: Any,
    *,
    loss_fn: Callable[..., Any] | None = None,
    params: ParamSpec = None,
) -> dict[str, torch.Tensor]:
    """The full-data gradient, scaled to unit norm, as a dict ``{name: tensor}``."""
    chosen = select_parameters(model, params)
    grads = _full_gradient(model, criterion, loss_fn, data, chosen)
    norm = float(_flat(grads).double().norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(
            "the gradient is zero or not finite at these parameters; use directions='random'"
        )
    return {k: v / norm for k, v in grads.items()}


def _full_gradient(
    model: nn.Module,
    criterion: Callable[..., torch.Tensor] | None,
    loss_fn: Callable[..., Any] | None,
    data: Any,
    chosen: list[tuple[str, nn.Parameter]],
) -> dict[str, torch.Tensor]:
    p0 = next(iter(chosen))[1]
    total = 0.0
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in chosen}
    for batch in _batches(data):
        b = _move(batch, p0.device, p0.dtype)
        loss, w = _loss_of_batch(model, criterion, loss_fn, b)
        gs = torch.autograd.grad(loss, [p for _, p in chosen], allow_unused=True)
        for (n, _), g in zip(chosen, gs, strict=True):
            if g is not None:
                acc[n] += w * g.double()
        total += w
    if total == 0:
        raise ValueError("data yielded no batch; pass at least one (inputs, targets) batch")
    return {n: (acc[n] / total).to(p.dtype) for n, p in chosen}


def eigen_directions(
    model: nn.Module,
    criterion: Callable[..., torch.Tensor] | None,
    data: Any,
    num: int = 2,
    *,
    loss_fn: Callable[..., Any] | None = None,
    params: ParamSpec = None,
    seed: int = 0,
    tol: float = 1e-4,
) -> tuple[list[dict[str, torch.Tensor]], np.ndarray, int]:
    """The top `num` Hessian eigenvectors as dicts, their eigenvalues, and the HVPs used."""
    from hessian_spectra.algorithms.eigsh import eigsh
    from hessian_spectra.operators.hessian import HessianOperator

    chosen = select_parameters(model, params)
    names = [n for n, _ in chosen]
    if loss_fn is not None:
        op = HessianOperator(model, data=data, loss_fn=loss_fn, params=names)
    else:
        op = HessianOperator(model, criterion, data, params=names)
    res = eigsh(op, int(num), which="LA", tol=tol, seed=seed)
    dirs = [_split_flat(res.eigenvectors[:, i], chosen) for i in range(int(num))]
    return dirs, np.asarray(res.eigenvalues, dtype=np.float64), int(res.num_matvecs)


def _grid_axis(span: float | tuple[float, float], steps: int) -> np.ndarray:
    if isinstance(span, (tuple, list)):
        lo, hi = float(span[0]), float(span[1])
    else:
        lo, hi = -float(span), float(span)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"span must be a positive number or an increasing (lo, hi), got {span}")
    return np.linspace(lo, hi, int(steps))


def loss_landscape(
    model: nn.Module,
    loss: Callable[..., torch.Tensor] | None,
    data: Any,
    directions: Directions = "eigen",
    span: float | tuple[float, float] | Sequence[Any] = 1.0,
    steps: int | Sequence[int] = 21,
    *,
    dims: int | None = None,
    loss_fn: Callable[..., Any] | None = None,
    params: ParamSpec = None,
    seed: int = 0,
    slopes: bool = False,
    progress: bool = False,
) -> LandscapeResult:
    """The loss on a line (one direction) or a plane (two) through the current parameters.

    Args:
        model: the network; its parameters and buffers are restored bit-for-bit
            afterwards, also when an evaluation raises.
        loss: a criterion called as ``loss(model(inputs), targets)`` (returning
            the batch mean), or None when `loss_fn` is given.
        data: one batch ``(inputs, targets)`` or a re-iterable of batches; the
            loss is the sample-weighted mean over batches.
        directions: "eigen" (top Hessian eigenvectors), "random"
            (filter-normalized), "gradient", or the directions themselves: a flat
            tensor (n,) or (n, 1|2) over the selected parameters, a dict
            ``{name: tensor}`` (e.g. ``op.unflatten(v)``), or a list of one or two
            of these.
        span: the grid's extent per direction: ``a`` for ``[-a, a]``, a pair
            ``(lo, hi)``, or one of these per direction.
        steps: grid points per direction (odd to include the origin), or one per direction.
        dims: 1 or 2 directions for the built-in kinds (default 2 for "eigen"
            and "random", 1 for "gradient").
        loss_fn: instead of `loss`, a closure ``loss_fn(model, batch)`` returning the
            batch mean loss or ``(mean_loss, num_samples)``.
        params: which parameters the directions move (see `select_parameters`).
        seed: seed for random directions and for the eigensolver's start vector.
        slopes: also compute the directional derivatives at the origin (one
            gradient pass), for Taylor-model overlays.
        progress: show a progress bar over the data pass.

    Returns:
        A `LandscapeResult`.

    Example:
        >>> res = hs.loss_landscape(model, nn.CrossEntropyLoss(), (x, y), "eigen",
        ...                         span=0.5, steps=25)       # doctest: +SKIP
    """
    if (loss is None) == (loss_fn is None):
        raise ValueError("give exactly one of `loss` (a criterion) or `loss_fn` (a closure)")
    chosen = select_parameters(model, params)
    names = [n for n, _ in chosen]
    batches = _batches(data)

    # snapshot everything an evaluation could change, restored in `finally`
    saved_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    was_training = model.training
    t0 = time.perf_counter()
    num_matvecs = 0
    curvatures: np.ndarray | None = None
    try:
        kind, dirs, curvatures, num_matvecs = _resolve_directions(
            model, loss, loss_fn, batches, directions, dims, chosen, params, seed
        )
        spans: list[Any] = (
            list(span) if _per_direction(span, len(dirs)) else [span] * len(dirs)  # type: ignore[arg-type]
        )
        step_list = list(steps) if isinstance(steps, Sequence) else [steps] * len(dirs)
        if len(spans) != len(dirs) or len(step_list) != len(dirs):
            raise ValueError(
                f"give one span and one steps value, or one per direction ({len(dirs)})"
            )
        if any(int(s) < 2 for s in step_list):
            raise ValueError(f"steps must be at least 2 per direction, got {step_list}")
        axes = [_grid_axis(s, int(n)) for s, n in zip(spans, step_list, strict=True)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(dirs))

        slope_arr: np.ndarray | None = None
        if slopes:
            g = _full_gradient(model, loss, loss_fn, batches, chosen)
            gflat = _flat(g).double()
            slope_arr = np.array([float(gflat @ _flat(d).double()) for d in dirs])

        sums = np.zeros(grid.shape[0], dtype=np.float64)
        origin_sum = 0.0
        weight = 0.0
        evaluations = 0
        params_by_name = dict(chosen)
        n_batches = len(batches) if isinstance(batches, Sized) else None
        total = None if n_batches is None else n_batches * (grid.shape[0] + 1)
        with (
            torch.no_grad(),
            progress_bar(total, "loss landscape", enabled=progress, unit="loss") as bar,
        ):
            for batch in batches:
                p_any = chosen[0][1]
                b = _move(batch, p_any.device, p_any.dtype)
                for i, point in enumerate(grid):
                    for name in names:
                        step = sum(float(c) * d[name] for c, d in zip(point, dirs, strict=True))
                        params_by_name[name].copy_(saved_params[name] + step)
                    value, w = _loss_of_batch(model, loss, loss_fn, b)
                    sums[i] += w * float(value)
                    evaluations += 1
                    bar.update(1)
                for name in names:
                    params_by_name[name].copy_(saved_params[name])
                value, w = _loss_of_batch(model, loss, loss_fn, b)
                origin_sum += w * float(value)
                weight += w
                bar.update(1)
        if weight == 0:
            raise ValueError("data yielded no batch; pass at least one (inputs, targets) batch")
        losses = (sums / weight).reshape([a.size for a in axes])
        if not np.all(np.isfinite(losses)):
            bad = int(np.sum(~np.isfinite(losses)))
            raise FloatingPointError(
                f"{bad} grid points gave a non-finite loss; use a smaller span"
            )
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved_params[n])
            for n, buf in model.named_buffers():
                buf.copy_(saved_buffers[n])
        model.train(was_training)

    return LandscapeResult(
        coordinates=axes,
        losses=losses,
        origin_loss=origin_sum / weight,
        kind=kind,
        direction_norms=[float(_flat(d).double().norm()) for d in dirs],
        curvatures=curvatures,
        slopes=slope_arr,
        num_evaluations=evaluations,
        param_names=names,
        num_matvecs=num_matvecs,
        seconds=time.perf_counter() - t0,
        seed=seed,
        settings={
            "directions": kind,
            "span": [[float(a[0]), float(a[-1])] for a in axes],
            "steps": [int(a.size) for a in axes],
            "params": params if isinstance(params, str) or params is None else names,
        },
    )


def _per_direction(span: Any, ndirs: int) -> bool:
    """Whether `span` lists one span per direction: a list holding at least one pair."""
    return isinstance(span, (tuple, list)) and any(isinstance(s, (tuple, list)) for s in span)


def _resolve_directions(
    model: nn.Module,
    loss: Callable[..., torch.Tensor] | None,
    loss_fn: Callable[..., Any] | None,
    batches: Any,
    directions: Directions,
    dims: int | None,
    chosen: list[tuple[str, nn.Parameter]],
    params: ParamSpec,
    seed: int,
) -> tuple[str, list[dict[str, torch.Tensor]], np.ndarray | None, int]:
    names = [n for n, _ in chosen]
    if isinstance(directions, str):
        kind = directions
        if kind not in ("eigen", "random", "gradient"):
            raise ValueError(
                f"unknown directions {kind!r}: use 'eigen', 'random', 'gradient' or tensors"
            )
        num = dims if dims is not None else (1 if kind == "gradient" else 2)
        if num not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {num}")
        if kind == "random":
            return kind, random_directions(model, num, seed=seed, params=names), None, 0
        if kind == "eigen":
            dirs, lam, mv = eigen_directions(
                model, loss, batches, num, loss_fn=loss_fn, params=names, seed=seed
            )
            return kind, dirs, lam, mv
        g = gradient_direction(model, loss, batches, loss_fn=loss_fn, params=names)
        dirs = [g]
        if num == 2:
            r = _flat(
                random_directions(model, 1, seed=seed, params=names, filter_normalize=False)[0]
            )
            gf = _flat(g)
            r = r - (r @ gf) * gf
            r = r / r.norm()
            dirs.append(_split_flat(r, chosen))
        return kind, dirs, None, 0
    if dims is not None:
        raise ValueError("dims applies to the built-in direction kinds; given directions set it")
    items: list[Any]
    if isinstance(directions, torch.Tensor):
        if directions.ndim == 2:
            items = [directions[:, i] for i in range(directions.shape[1])]
        else:
            items = [directions]
    elif isinstance(directions, Mapping):
        items = [directions]
    else:
        items = list(directions)
    if len(items) not in (1, 2):
        raise ValueError(f"give one or two directions, got {len(items)}")
    dirs = [_as_direction(d, chosen) for d in items]
    for i, d in enumerate(dirs):
        if float(_flat(d).double().norm()) == 0.0:
            raise ValueError(f"direction {i} is zero on the selected parameters {names[:4]}...")
    return "given", dirs, None, 0
