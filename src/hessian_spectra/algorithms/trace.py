"""Stochastic trace estimates with standard errors, and per-block traces: `trace`.

The estimators (Hutchinson, Hutch++, XTrace; with their papers, standard
errors and the per-block decomposition) live in `trace_estimators`; this
module checks the call, splits the budget, runs the estimator a block of
probes at a time in a run context (seed, record, checkpoint) and decides when
to stop.

Stopping: a fixed budget (`num_matvecs`), or `rtol` on the standard error
(stderr <= rtol * |estimate|, tested only after at least 10 probes, capped by
`max_matvecs`). PyHessian stops when two consecutive running means agree to
0.1%, which says nothing about the variance; that rule is not offered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from hessian_spectra.algorithms._linalg import work_dtype
from hessian_spectra.algorithms._run import Callback, RunContext
from hessian_spectra.algorithms.memory import check_max_memory, check_memory, dtype_bytes
from hessian_spectra.algorithms.trace_estimators import ESTIMATORS, Estimator, HutchPlusPlus
from hessian_spectra.history import ESTIMATE, PROBES, STDERR
from hessian_spectra.operators.base import LinearOperator, as_operator, digest
from hessian_spectra.results import TraceResult

Method = Literal["hutchinson", "hutch++", "xtrace"]
BlockIndex = slice | torch.Tensor | Sequence[int] | np.ndarray

METHODS = ("hutchinson", "hutch++", "xtrace")
DEFAULT_NUM_MATVECS = 100
MIN_PROBES_FOR_RTOL = 10


def _as_blocks(
    blocks: Mapping[str, BlockIndex] | str | None, op: LinearOperator
) -> dict[str, slice | torch.Tensor]:
    """Check and convert `blocks` to slices or long index tensors on `op`'s device.

    A string groups a model operator's parameters (`_grouping`).
    """
    if blocks is None:
        return {}
    if isinstance(blocks, str):
        blocks = _grouping(op, blocks)
    n, device = op.shape[0], op.device
    if not isinstance(blocks, Mapping):
        raise TypeError(
            "blocks must be a mapping name -> slice or index tensor (e.g. op.blocks), "
            f"got {type(blocks).__name__}"
        )
    out: dict[str, slice | torch.Tensor] = {}
    for name, idx in blocks.items():
        if isinstance(idx, slice):
            start, stop, step = idx.indices(n)
            if step != 1:
                idx = torch.arange(start, stop, step, device=device)
            else:
                if stop <= start:
                    raise ValueError(f"block {name!r} is empty ({idx}); drop it or fix its slice")
                out[str(name)] = slice(start, stop)
                continue
        t = torch.as_tensor(idx, device=device)
        if t.dtype == torch.bool:
            if t.shape != (n,):
                raise ValueError(f"boolean block {name!r} must have shape ({n},)")
            t = torch.nonzero(t).flatten()
        if t.ndim != 1 or t.is_floating_point():
            raise ValueError(f"block {name!r} must be a slice or a 1-d integer index tensor")
        if t.numel() == 0:
            raise ValueError(f"block {name!r} is empty; drop it")
        t = t.long()
        if int(t.min()) < 0 or int(t.max()) >= n:
            raise ValueError(f"block {name!r} has indices outside [0, {n}); the operator has n={n}")
        out[str(name)] = t
    return out


def _grouping(op: LinearOperator, how: str) -> Mapping[str, BlockIndex]:
    """A model operator's parameters grouped by `how` ("layers", "modules", ...)."""
    blocks_by = getattr(op, "blocks_by", None)
    if blocks_by is None:
        raise TypeError(
            f"blocks={how!r} groups a model's parameters, so it needs a model operator "
            f"(HessianOperator, GGNOperator, FisherOperator), not a {type(op).__name__}; "
            "pass a mapping name -> slice or index tensor instead"
        )
    return blocks_by(how)  # type: ignore[no-any-return]


def _block_size(idx: slice | torch.Tensor) -> int:
    return int(idx.stop - idx.start) if isinstance(idx, slice) else int(idx.numel())


def trace(
    op: LinearOperator | torch.Tensor | np.ndarray,
    *,
    method: Method = "xtrace",
    num_matvecs: int | None = None,
    rtol: float | None = None,
    seed: int | None = None,
    blocks: Mapping[str, BlockIndex] | str | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    max_matvecs: int = 2000,
    block_size: int = 10,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    max_memory: float | None = None,
) -> TraceResult:
    """Estimate tr(H) with a standard error, from Hessian-vector products only.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> op = hs.DenseOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
        >>> tr = hs.trace(op, method="xtrace", num_matvecs=40, seed=0)
        >>> abs(tr.estimate - 5050.0) < 3 * tr.stderr  # the exact trace is 5050
        True

    Args:
        op: a symmetric `LinearOperator` (or a dense symmetric matrix).
        method: "xtrace" (default; its standard error is the paper's own
            estimate, which is known to under-report the true error),
            "hutch++" or "hutchinson".
        num_matvecs: a fixed budget of operator products (default 100 when
            `rtol` is not given). XTrace uses two products per probe (an odd
            budget leaves one unused); Hutch++ splits it in thirds (the
            remainder going to its Hutchinson part).
        rtol: stop once stderr <= rtol * |estimate|, tested after each block
            of probes once at least 10 Hutchinson-type probes are in, or at
            `max_matvecs`. Exclusive with `num_matvecs`. With "hutch++" the
            low-rank part is fixed at max(10, block_size) directions (capped
            by max_matvecs // 3) and only the Hutchinson part grows.
        seed: the random seed (drawn and recorded when None).
        blocks: name -> slice, integer index tensor or boolean mask of the flat
            vector (e.g. ``op.blocks`` of a Hessian operator). Per-block traces
            and standard errors come from the same probes; when the blocks
            partition the coordinates they sum to the total estimate. On a
            model operator also ``"layers"`` (one block per repeated layer of
            the network, plus embeddings and head), ``"modules"`` (per module
            role: embeddings, attention, mlp, norm, head) or ``"parameters"``,
            resolved by ``op.blocks_by``.
        progress: show a progress bar.
        callback: called with each history record; returning True stops.
        max_matvecs: the cap on products when stopping by `rtol`.
        block_size: probes multiplied per block product (one history record each).
        checkpoint: a file to save the run's state to (the estimator's sums and
            bases, the generator state, the product count, the history),
            written atomically every `checkpoint_every` blocks and when the call
            is left by an exception (KeyboardInterrupt included) at a consistent
            point; removed when the call returns. Only rank 0 writes it.
        checkpoint_every: blocks of probes between saves (default 10).
        resume: continue the run saved in `checkpoint` (start afresh when there
            is no file): the same result, to the bit, as an uninterrupted call
            with the same arguments. Without it an existing file is refused;
            a file of another computation, a truncated or a foreign file raise
            `CheckpointError`.
        max_memory: the most bytes the estimator's probes and bases may take
            (see `trace_memory`); by default they are checked against the
            memory available on the operator's device before any product, and
            a call that would not fit raises `InsufficientMemoryError`.

    Returns:
        A `TraceResult` with `estimate`, `stderr`, `samples` (the Hutchinson
        samples, Hutch++'s remainder samples, or XTrace's leave-one-out
        estimates), `block_estimates` / `block_stderrs` when `blocks` were
        given, `num_matvecs`, `seconds`, `history` and `seed`.
    """
    op = as_operator(op)
    n = op.shape[0]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if num_matvecs is not None and rtol is not None:
        raise ValueError(
            "give either num_matvecs (a fixed budget) or rtol (with max_matvecs as the cap), "
            "not both"
        )
    if rtol is not None and not (rtol > 0):
        raise ValueError(f"rtol must be positive, got {rtol}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    adaptive = rtol is not None
    budget = int(max_matvecs if adaptive else (num_matvecs or DEFAULT_NUM_MATVECS))
    if num_matvecs is not None and num_matvecs < 1:
        raise ValueError(f"num_matvecs must be positive, got {num_matvecs}")
    bl = _as_blocks(blocks, op)
    rank, max_probes = _plan(method, budget, adaptive, block_size, n)
    check_max_memory(max_memory)
    check_memory(
        [
            (
                op.device,
                _need(n, method, rank, max_probes, block_size, op.dtype, work_dtype(op), bool(bl)),
            )
        ],
        what=f"trace(method={method!r}) on an operator of size n={n}",
        lower=LOWER_MEMORY[method].format(block_size=block_size),
        max_memory=max_memory,
    )
    ctx = RunContext(
        op,
        f"trace ({method})",
        seed=seed,
        total=budget,
        progress=progress,
        callback=callback,
        checkpoint=checkpoint,
        kind=f"trace/{method}",
        fingerprint=lambda: {
            **op.fingerprint(),
            "num_matvecs": num_matvecs,
            "rtol": rtol,
            "max_matvecs": max_matvecs if adaptive else None,
            "block_size": block_size,
            "blocks": {
                name: [idx.start, idx.stop] if isinstance(idx, slice) else digest(idx)
                for name, idx in bl.items()
            },
        },
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    settings = {
        "method": method,
        "num_matvecs": num_matvecs,
        "rtol": rtol,
        "max_matvecs": max_matvecs if adaptive else None,
        "block_size": block_size,
        "blocks": list(bl),
    }
    est: Estimator
    converged: bool | None = None
    with ctx:
        if ctx.saved is not None:
            est = ESTIMATORS[method].from_state_dict(ctx.saved["estimator"], op, ctx.generator, bl)
        elif method == "hutch++":
            est = HutchPlusPlus(op, ctx.generator, bl, rank=rank)
        else:
            est = ESTIMATORS[method](op, ctx.generator, bl)
        if ctx.checkpoint is not None:
            est.on_update = ctx.dirty
        ctx.track(lambda: {"estimator": est.state_dict()})
        # a resumed run first re-takes the stopping tests of its last recorded block
        resuming = ctx.resumed and est.probes > 0
        while True:
            if resuming:
                resuming = False
                value, err, samples, be, bs = est.summary()
                stop = False
            else:
                b = min(block_size, max_probes - est.probes)
                est.extend(b)
                value, err, samples, be, bs = est.summary()
                stop = ctx.record(
                    {ESTIMATE: value, STDERR: err, PROBES: est.probes},
                    postfix=f"{value:.4g} +- {err:.2g}",
                )
            if adaptive:
                assert rtol is not None
                converged = est.probes >= MIN_PROBES_FOR_RTOL and err <= rtol * abs(value)
                if converged:
                    break
            if stop or est.probes >= max_probes:
                break
        ctx.finish(f"{value:.4g} +- {err:.2g}")  # the bar ends on the returned value
        seconds = ctx.seconds
        used = ctx.matvecs
        history = ctx.history
        all_settings = ctx.settings(**settings)

    names = list(bl)
    return TraceResult(
        estimate=value,
        stderr=err,
        samples=samples.detach().cpu().numpy(),
        block_estimates=None if be is None else dict(zip(names, be.tolist(), strict=True)),
        block_stderrs=None if bs is None else dict(zip(names, bs.tolist(), strict=True)),
        block_sizes=None if be is None else {k: _block_size(v) for k, v in bl.items()},
        method=method,
        converged=converged,
        num_matvecs=used,
        seconds=seconds,
        history=history,
        seed=ctx.seed,
        settings=all_settings,
    )


#: the options that lower each estimator's memory, for the refusal's message
LOWER_MEMORY = {
    "hutchinson": "lower block_size (now {block_size}: probes multiplied at once)",
    "hutch++": (
        "lower num_matvecs (or max_matvecs with rtol: the sketch holds n x num_matvecs / 3 "
        "numbers) or block_size (now {block_size})"
    ),
    "xtrace": (
        "lower num_matvecs (or max_matvecs with rtol: XTrace keeps about 4 n x num_matvecs "
        "/ 2 numbers in float64), or use method='hutchinson', which holds one block of probes"
    ),
}


def _need(
    n: int,
    method: str,
    rank: int,
    max_probes: int,
    block_size: int,
    dtype: torch.dtype,
    wd: torch.dtype,
    blocks: bool,
) -> int:
    """Bytes of an estimator's probes, products and bases at their largest."""
    item, w = dtype_bytes(dtype), dtype_bytes(wd)
    b = max(1, min(block_size, max_probes))
    if method == "hutchinson":
        return n * b * (2 * item + 4 * w)
    if method == "hutch++":
        return n * rank * (item + 4 * w) + n * b * (item + 6 * w)
    m = max_probes  # xtrace: probes, their products, the basis and its products
    need = 6 * n * m * w + n * b * (item + 4 * w)
    if blocks:  # the per-block terms, a chunk of leave-one-out estimates at a time
        need += 12 * min(n * m, max(n, 2**22)) * w
    return need


def trace_memory(
    n: int,
    *,
    method: Method = "xtrace",
    num_matvecs: int | None = None,
    rtol: float | None = None,
    max_matvecs: int = 2000,
    block_size: int = 10,
    dtype: torch.dtype = torch.float32,
    blocks: bool = False,
) -> int:
    """Bytes `trace` allocates for its probes and bases on an operator of size n.

    What ``trace(op, ...)`` with the same arguments checks before its first
    product (the operator's own memory is not included; the small dense algebra
    is float64).

    Example:
        >>> from hessian_spectra.algorithms import trace_memory
        >>> trace_memory(1_000_000, num_matvecs=100) > 6 * 1_000_000 * 50 * 8  # XTrace
        True
        >>> trace_memory(1_000_000, method="hutchinson") < 1e9
        True

    Args:
        n: the operator's size.
        method, num_matvecs, rtol, max_matvecs, block_size: as for `trace`.
        dtype: the operator's dtype.
        blocks: whether per-block traces are asked for.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    adaptive = rtol is not None
    budget = int(max_matvecs if adaptive else (num_matvecs or DEFAULT_NUM_MATVECS))
    rank, max_probes = _plan(method, budget, adaptive, block_size, int(n))
    return _need(int(n), method, rank, max_probes, block_size, dtype, torch.float64, blocks)


def _plan(method: str, budget: int, adaptive: bool, block_size: int, n: int) -> tuple[int, int]:
    """How many directions Hutch++ sketches (0 for the others) and the most probes that follow."""
    rank = 0
    if method == "hutch++":
        if adaptive:
            rank = min(max(10, block_size), budget // 3)
            if rank < 1:
                raise ValueError("hutch++ with rtol needs max_matvecs >= 3")
        else:
            if budget < 3:
                raise ValueError(f"hutch++ needs num_matvecs >= 3, got {budget}")
            rank = budget // 3
        if rank >= n:
            raise ValueError(
                f"hutch++ would sketch {rank} >= n={n} directions; for so small an operator "
                "compute the trace exactly, or lower num_matvecs"
            )
        return rank, budget - 2 * rank
    if method == "xtrace":
        max_probes = budget // 2
        if adaptive:
            max_probes = min(max_probes, n - 1)  # the cap, not a request
        if max_probes < 2:
            raise ValueError(f"xtrace needs num_matvecs >= 4 (two per probe), got {budget}")
        if max_probes >= n:
            raise ValueError(
                f"xtrace would use {max_probes} >= n={n} probes; for so small an operator "
                "compute the trace exactly, or lower num_matvecs"
            )
        return rank, max_probes
    return rank, budget
