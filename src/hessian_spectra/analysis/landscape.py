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

The model's parameters, buffers and every submodule's train/eval mode are
restored bit-for-bit afterwards, also when an evaluation raises; each
evaluation starts from the model's buffers (one that a forward updates is
restored after it). A model in train mode with BatchNorm or Dropout is
refused as `HessianOperator` refuses it (two identical calls would differ)
unless ``allow_train_mode=True``. The grid is evaluated in one pass over the
data: each batch is loaded once and all grid points are evaluated on it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from hessian_spectra._progress import progress_bar
from hessian_spectra.algorithms import eigsh
from hessian_spectra.operators import (
    Criterion,
    HessianOperator,
    LossFn,
    ModelLoss,
    ParameterSelection,
    ParamSpec,
    select_parameters,
)
from hessian_spectra.operators.model import modes_kept
from hessian_spectra.results import LandscapeResult

__all__ = [
    "LandscapeResult",
    "eigen_directions",
    "gradient_direction",
    "loss_landscape",
    "random_directions",
    "select_parameters",  # re-exported from hessian_spectra.operators.model
]

Directions = (
    str
    | torch.Tensor
    | Mapping[str, torch.Tensor]
    | Sequence[torch.Tensor]
    | Sequence[Mapping[str, torch.Tensor]]
)


def _as_direction(
    d: torch.Tensor | Mapping[str, torch.Tensor], selection: ParameterSelection
) -> dict[str, torch.Tensor]:
    """A given direction as ``{name: tensor}`` over the selection, in the parameters' dtype."""
    if isinstance(d, torch.Tensor):
        parts = selection.unflatten(d)
    elif isinstance(d, Mapping):
        unknown = [k for k in d if k not in selection.blocks]
        if unknown:
            raise ValueError(
                f"direction names {unknown} are not selected trainable parameters of the model"
            )
        parts = dict(d)
    else:
        raise TypeError(f"a direction must be a tensor or a dict of tensors, got {type(d)}")
    out = {}
    for name, p in zip(selection.names, selection.params, strict=True):
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
    selection = ParameterSelection(model, params)
    chosen = list(zip(selection.names, selection.params, strict=True))
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
            norm = float(selection.flatten(d).norm())
            d = {k: v / norm for k, v in d.items()}
        out.append({n: d[n].to(dtype=p.dtype, device=p.device) for n, p in chosen})
    return out


def gradient_direction(
    model: nn.Module,
    criterion: Criterion | None = None,
    data: Any = None,
    *,
    loss_fn: LossFn | None = None,
    params: ParamSpec = None,
) -> dict[str, torch.Tensor]:
    """The full-data gradient, scaled to unit norm, as a dict ``{name: tensor}``.

    The model's buffers are left as they were (train-mode BatchNorm's running
    statistics included).
    """
    problem = ModelLoss(
        model, criterion, data, loss_fn=loss_fn, params=params, allow_train_mode=True
    )
    return _unit_gradient(problem)


def _unit_gradient(problem: ModelLoss) -> dict[str, torch.Tensor]:
    grads = _full_gradient(problem)
    norm = float(problem.selection.flatten(grads).double().norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(
            "the gradient is zero or not finite at these parameters; use directions='random'"
        )
    return {k: v / norm for k, v in grads.items()}


def _full_gradient(problem: ModelLoss) -> dict[str, torch.Tensor]:
    """The sample-weighted mean gradient over the data; zero where a parameter gets none."""
    selection = problem.selection
    total = 0.0
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in selection.items()}
    with torch.enable_grad(), problem.state_kept():
        for batch in problem.batches():
            loss, w = problem.loss(batch)
            gs = torch.autograd.grad(loss, selection.params, allow_unused=True)
            for name, g in zip(selection.names, gs, strict=True):
                if g is not None:
                    acc[name] += w * g.double()
            total += w
    if total == 0:
        raise ValueError("data yielded no batch; pass at least one (inputs, targets) batch")
    return {n: (acc[n] / total).to(p.dtype) for n, p in selection.items()}


def eigen_directions(
    model: nn.Module,
    criterion: Criterion | None = None,
    data: Any = None,
    num: int = 2,
    *,
    loss_fn: LossFn | None = None,
    params: ParamSpec = None,
    seed: int = 0,
    tol: float = 1e-4,
    allow_train_mode: bool = False,
) -> tuple[list[dict[str, torch.Tensor]], np.ndarray, int]:
    """The top `num` Hessian eigenvectors as dicts, their eigenvalues, and the HVPs used."""
    op = HessianOperator(
        model,
        criterion,
        data,
        loss_fn=loss_fn,
        params=params,
        allow_train_mode=allow_train_mode,
    )
    res = eigsh(op, int(num), which="LA", tol=tol, seed=seed)
    dirs = [op.unflatten(res.eigenvectors[:, i]) for i in range(int(num))]
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
    criterion: Criterion | None = None,
    data: Any = None,
    directions: Directions = "eigen",
    span: float | tuple[float, float] | Sequence[Any] = 1.0,
    steps: int | Sequence[int] = 21,
    *,
    dims: int | None = None,
    loss_fn: LossFn | None = None,
    params: ParamSpec = None,
    seed: int = 0,
    slopes: bool = False,
    progress: bool = False,
    loss: Criterion | None = None,
    allow_train_mode: bool = False,
) -> LandscapeResult:
    """The loss on a line (one direction) or a plane (two) through the current parameters.

    Args:
        model: the network; its parameters, buffers and every submodule's
            train/eval mode are restored bit-for-bit afterwards, also when an
            evaluation raises. It is evaluated in the mode it is in; BatchNorm
            or Dropout in train mode is refused unless `allow_train_mode`.
        criterion: called as ``criterion(model(inputs), targets)`` (returning
            the batch mean), or None when `loss_fn` is given. Exactly one of
            criterion and loss_fn.
        data: one batch (``(inputs, targets)``, a dict) or a re-iterable of
            batches; the loss is the weighted mean over batches (a batch's
            weight, the number of terms its mean loss averages over, as for
            `HessianOperator`: targets other than ``ignore_index`` count). Batches are moved to the
            parameters' device and floating tensors cast to their dtype.
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
        loss_fn: instead of `criterion`, a closure ``loss_fn(model, batch)``
            returning the batch mean loss or ``(mean_loss, num_samples)``.
        params: which parameters the directions move (see `select_parameters`).
        seed: seed for random directions and for the eigensolver's start vector.
        slopes: also compute the directional derivatives at the origin (one
            gradient pass), for Taylor-model overlays.
        progress: show a progress bar over the data pass.
        loss: the former name of `criterion`, still accepted (not both).
        allow_train_mode: evaluate a model whose BatchNorm or Dropout layers
            are in train mode (BatchNorm then uses batch statistics, Dropout
            draws new masks at every evaluation, so the surface is noisy).

    Returns:
        A `LandscapeResult`.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> _ = torch.manual_seed(0)
        >>> nn = torch.nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> res = hs.loss_landscape(model, nn.CrossEntropyLoss(), (x, y), "eigen",
        ...                         span=0.5, steps=5, seed=0)
        >>> res.losses.shape, res.kind  # a 5 x 5 grid along the top two eigenvectors
        ((5, 5), 'eigen')
        >>> bool(res.losses[2, 2] == res.origin_loss)  # the centre is the model itself
        True
    """
    if loss is not None:
        if criterion is not None:
            raise ValueError("pass the criterion as criterion= or as loss=, not both")
        criterion = loss
    if (criterion is None) == (loss_fn is None):
        raise ValueError(
            "give exactly one of `criterion` (called as criterion(model(inputs), targets)) "
            "or `loss_fn` (called as loss_fn(model, batch))"
        )
    problem = ModelLoss(
        model,
        criterion,
        data,
        loss_fn=loss_fn,
        params=params,
        allow_train_mode=allow_train_mode,
    )
    names = problem.selection.names

    # snapshot everything an evaluation could change, restored in `finally`
    saved_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    t0 = time.perf_counter()
    num_matvecs = 0
    curvatures: np.ndarray | None = None
    with modes_kept(model):
        try:
            kind, dirs, curvatures, num_matvecs = _resolve_directions(
                problem, data, directions, dims, seed
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
                gflat = problem.selection.flatten(_full_gradient(problem)).double()
                slope_arr = np.array(
                    [float(gflat @ problem.selection.flatten(d).double()) for d in dirs]
                )
            sums, origin_sum, weight, evaluations = _evaluate_grid(
                problem, grid, dirs, saved_params, progress
            )
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

    return LandscapeResult(
        coordinates=axes,
        losses=losses,
        origin_loss=origin_sum / weight,
        kind=kind,
        direction_norms=[float(problem.selection.flatten(d).double().norm()) for d in dirs],
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


def _evaluate_grid(
    problem: ModelLoss,
    grid: np.ndarray,
    dirs: list[dict[str, torch.Tensor]],
    saved_params: Mapping[str, torch.Tensor],
    progress: bool,
) -> tuple[np.ndarray, float, float, int]:
    """One pass over the data: each batch's loss at every grid point and at the origin.

    Returns the weighted loss sums per grid point, at the origin, the total
    weight and the number of evaluations.
    """
    selection = problem.selection
    sums = np.zeros(grid.shape[0], dtype=np.float64)
    origin_sum = 0.0
    weight = 0.0
    evaluations = 0
    n_batches = problem.num_batches
    total = None if n_batches is None else n_batches * (grid.shape[0] + 1)
    with (
        torch.no_grad(),
        progress_bar(total, "loss landscape", enabled=progress, unit="loss") as bar,
    ):
        for batch in problem.batches():
            for i, point in enumerate(grid):
                for name, p in selection.items():
                    step = sum(float(c) * d[name] for c, d in zip(point, dirs, strict=True))
                    p.copy_(saved_params[name] + step)
                with problem.state_kept():
                    value, w = problem.loss(batch)
                sums[i] += w * float(value)
                evaluations += 1
                bar.update(1)
            for name, p in selection.items():
                p.copy_(saved_params[name])
            with problem.state_kept():
                value, w = problem.loss(batch)
            origin_sum += w * float(value)
            weight += w
            bar.update(1)
    if weight == 0:
        raise ValueError("data yielded no batch; pass at least one (inputs, targets) batch")
    return sums, origin_sum, weight, evaluations


def _per_direction(span: Any, ndirs: int) -> bool:
    """Whether `span` lists one span per direction: a list holding at least one pair."""
    return isinstance(span, (tuple, list)) and any(isinstance(s, (tuple, list)) for s in span)


def _resolve_directions(
    problem: ModelLoss,
    data: Any,
    directions: Directions,
    dims: int | None,
    seed: int,
) -> tuple[str, list[dict[str, torch.Tensor]], np.ndarray | None, int]:
    model, selection = problem.model, problem.selection
    names = selection.names
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
                model,
                problem.criterion,
                data,
                num,
                loss_fn=problem.loss_fn,
                params=names,
                seed=seed,
                allow_train_mode=problem.allow_train_mode,
            )
            return kind, dirs, lam, mv
        g = _unit_gradient(problem)
        dirs = [g]
        if num == 2:
            (rnd,) = random_directions(model, 1, seed=seed, params=names, filter_normalize=False)
            r = selection.flatten(rnd)
            gf = selection.flatten(g)
            r = r - (r @ gf) * gf
            r = r / r.norm()
            dirs.append(selection.unflatten(r))
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
    dirs = [_as_direction(d, selection) for d in items]
    for i, d in enumerate(dirs):
        if float(selection.flatten(d).double().norm()) == 0.0:
            raise ValueError(f"direction {i} is zero on the selected parameters {names[:4]}...")
    return "given", dirs, None, 0
