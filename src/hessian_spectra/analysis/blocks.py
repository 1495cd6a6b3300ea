"""Per-block spectra: each layer's (or module role's) trace, top eigenvalues and density.

Zhang et al. 2024 ("Why Transformers Need Adam: A Hessian Perspective")
explain why SGD trails Adam on transformers by the Hessian's *block
heterogeneity*: the spectra of the diagonal blocks (embeddings, attention,
MLP, norms; or layer by layer) differ widely in transformers and little in
CNNs, measured by the Jensen-Shannon distance between the blocks' spectral
densities. `block_spectra` takes that measurement with matrix-free
products only:

- the trace of every block from ONE trace estimate of the whole Hessian (the
  same probes; the block traces sum to the whole), with standard errors;
- each block's top eigenvalues: `eigsh` on the Hessian with respect to that
  block's parameters alone (``HessianOperator(params=...)``, the block on the
  diagonal of the full Hessian);
- each block's density by stochastic Lanczos quadrature on the same operator,
  and the Jensen-Shannon distance between every pair of densities on a
  shared eigenvalue grid.

Blocks are whole parameters: ``"layers"``, ``"modules"`` and ``"parameters"``
(see ``operators/grouping.py``), or a mapping name -> slice / index tensor
whose index sets are unions of whole parameters (e.g. from ``op.blocks_by``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from hessian_spectra.algorithms import density, eigsh, trace
from hessian_spectra.operators import Criterion, DenseOperator, HessianOperator, LossFn, ParamSpec
from hessian_spectra.results import DensityResult
from hessian_spectra.results_blocks import BlockSpectraResult

__all__ = ["block_param_names", "block_spectra", "js_distance", "js_distances"]

TraceMethod = Literal["hutchinson", "hutch++", "xtrace"]

#: blocks this small are multiplied out (n products) and solved densely
DENSE_BELOW = 16


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """The Jensen-Shannon distance between two densities on the same grid (base 2, in [0, 1]).

    ``sqrt((KL(p || m) + KL(q || m)) / 2)`` with ``m = (p + q) / 2``, each of `p`
    and `q` normalized to sum to 1 over the grid points: 0 for equal densities,
    1 for densities with disjoint supports; symmetric.

    Example:
        >>> import numpy as np
        >>> p, q = np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.0, 2.0])
        >>> js_distance(p, p), js_distance(p, q)
        (0.0, 1.0)
    """
    a = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    b = np.clip(np.asarray(q, dtype=np.float64), 0.0, None)
    if a.shape != b.shape:
        raise ValueError(f"densities on different grids: shapes {a.shape} and {b.shape}")
    if not (a.sum() > 0 and b.sum() > 0):
        raise ValueError("a density is zero everywhere on the grid; widen the grid")
    a, b = a / a.sum(), b / b.sum()
    m = 0.5 * (a + b)

    def kl(x: np.ndarray) -> float:
        keep = x > 0
        return float(np.sum(x[keep] * np.log2(x[keep] / m[keep])))

    value = 0.5 * (kl(a) + kl(b))
    return float(np.sqrt(min(max(value, 0.0), 1.0)))


def js_distances(
    densities: Mapping[str, DensityResult], *, points: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise Jensen-Shannon distances of densities, on one grid spanning all their nodes.

    Returns:
        ``(distances, grid)``: a symmetric (b, b) matrix with a zero diagonal, in
        the order of `densities`, and the grid the densities were evaluated on.
    """
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    nodes = np.concatenate(
        [np.asarray(d.nodes, dtype=np.float64).ravel() for d in densities.values()]
    )
    lo, hi = float(nodes.min()), float(nodes.max())
    pad = 0.05 * max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    grid = np.linspace(lo - pad, hi + pad, points)
    pdfs = [np.asarray(d.pdf(grid), dtype=np.float64) for d in densities.values()]
    b = len(pdfs)
    out = np.zeros((b, b))
    for i in range(b):
        for j in range(i + 1, b):
            out[i, j] = out[j, i] = js_distance(pdfs[i], pdfs[j])
    return out, grid


def block_param_names(
    op: HessianOperator, blocks: Mapping[str, Any] | str
) -> tuple[str, dict[str, list[str]]]:
    """The grouping's name and each block's parameter names, in parameter order.

    Args:
        op: a model operator.
        blocks: ``"layers"``, ``"modules"``, ``"parameters"``, or a mapping
            name -> slice / index tensor of `op`'s vector whose index sets are
            unions of whole parameters.

    Raises:
        ValueError: a block covers part of a parameter, or the blocks overlap.
    """
    resolved = op.blocks_by(blocks) if isinstance(blocks, str) else blocks
    grouping = blocks if isinstance(blocks, str) else "custom"
    n = op.shape[0]
    owner = torch.full((n,), -1, dtype=torch.long)
    names = list(resolved)
    for i, idx in enumerate(resolved.values()):
        sel = torch.arange(n)[idx] if isinstance(idx, slice) else torch.as_tensor(idx).cpu()
        if sel.dtype == torch.bool:
            sel = torch.nonzero(sel).flatten()
        if bool((owner[sel.long()] >= 0).any()):
            raise ValueError(
                f"block {names[i]!r} overlaps an earlier block; blocks must not overlap"
            )
        owner[sel.long()] = i
    out: dict[str, list[str]] = {name: [] for name in names}
    for pname, sl in op.blocks.items():
        ids = owner[sl].unique()
        if ids.numel() != 1:
            raise ValueError(
                f"parameter {pname!r} is split between blocks (or partly in none); per-block "
                "spectra need blocks of whole parameters (use 'layers', 'modules' or "
                "'parameters')"
            )
        if int(ids) >= 0:
            out[names[int(ids)]].append(pname)
    empty = [name for name, members in out.items() if not members]
    if empty:
        raise ValueError(f"blocks {empty} hold no parameter; drop them")
    return grouping, out


def block_spectra(
    model: nn.Module,
    criterion: Criterion | None = None,
    data: Any = None,
    *,
    loss_fn: LossFn | None = None,
    blocks: Mapping[str, Any] | str = "layers",
    params: ParamSpec = None,
    k: int = 3,
    tol: float = 1e-4,
    trace_method: TraceMethod = "hutchinson",
    num_matvecs: int = 100,
    num_steps: int = 40,
    num_probes: int = 2,
    points: int = 512,
    seed: int | None = None,
    progress: bool = False,
    **operator_options: Any,
) -> BlockSpectraResult:
    """Each block's trace, top eigenvalues and spectral density, and the JS distances between them.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> _ = torch.manual_seed(0)
        >>> nn = torch.nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
        ...                       nn.Linear(8, 3)).double()
        >>> data = (torch.randn(64, 4, dtype=torch.float64), torch.randint(0, 3, (64,)))
        >>> res = hs.block_spectra(model, nn.CrossEntropyLoss(), data, blocks="layers",
        ...                        k=2, num_matvecs=20, num_steps=10, seed=0)
        >>> list(res.blocks)
        ['0', '2', '4']
        >>> bool(abs(sum(res.block_traces.values()) - res.trace) < 1e-9 * abs(res.trace))
        True

    Args:
        model, criterion, data, loss_fn, params: as for `HessianOperator`.
        blocks: ``"layers"`` (one block per repeated layer, plus embeddings and
            head), ``"modules"`` (per module role: embeddings, attention, mlp,
            norm, head), ``"parameters"``, or a mapping name -> slice / index
            tensor of whole parameters.
        k: top eigenvalues per block (fewer for blocks that small).
        tol: their relative residual tolerance.
        trace_method, num_matvecs: the trace estimate the block traces come
            from (default Hutchinson, whose per-block standard errors are
            exact variance estimates).
        num_steps, num_probes: each block's stochastic Lanczos quadrature.
        points: grid points the densities are compared on.
        seed: the random seed of every probe and start (drawn and recorded when None).
        progress: show progress bars.
        **operator_options: passed to `HessianOperator` (e.g. hvp_mode).

    Returns:
        A `BlockSpectraResult`.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if num_steps < 1 or num_probes < 1:
        raise ValueError(
            f"num_steps and num_probes must be at least 1, got {num_steps} and {num_probes}"
        )
    t0 = time.perf_counter()
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))  # type: ignore[operator]
    op = HessianOperator(model, criterion, data, loss_fn=loss_fn, params=params, **operator_options)
    grouping, members = block_param_names(op, blocks)
    parts = _index_sets(op, members)
    tr = trace(
        op,
        method=trace_method,
        num_matvecs=num_matvecs,
        seed=seed,
        blocks=parts,
        progress=progress,
    )
    used = tr.num_matvecs
    eigenvalues: dict[str, np.ndarray] = {}
    residuals: dict[str, np.ndarray] = {}
    converged: dict[str, bool] = {}
    dens: dict[str, DensityResult] = {}
    sizes: dict[str, int] = {}
    for name, names in members.items():
        sub = HessianOperator(
            model, criterion, data, loss_fn=loss_fn, params=names, **operator_options
        )
        nb = sub.shape[0]
        sizes[name] = nb
        target: Any = sub
        if nb < DENSE_BELOW:  # too small for Krylov methods: multiply it out
            H = sub.matmat(torch.eye(nb, dtype=sub.dtype, device=sub.device))
            H = 0.5 * (H + H.T)
            used += nb
            target = DenseOperator(H.double())
            lam = torch.linalg.eigvalsh(H.double()).flip(0)[: min(k, nb)].cpu().numpy()
            eigenvalues[name] = lam
            residuals[name] = np.zeros_like(lam)
            converged[name] = True
        else:
            top = eigsh(sub, min(k, nb - 1), tol=tol, seed=seed, progress=progress)
            used += top.num_matvecs
            eigenvalues[name] = np.asarray(top.eigenvalues, dtype=np.float64)
            residuals[name] = np.asarray(top.residuals, dtype=np.float64)
            converged[name] = bool(np.asarray(top.converged).all())
        den = density(
            target,
            num_steps=min(num_steps, nb),
            num_probes=num_probes,
            seed=seed,
            progress=progress,
        )
        if target is sub:
            used += den.num_matvecs
        dens[name] = den
    dist, grid = js_distances(dens, points=points)
    return BlockSpectraResult(
        blocks=list(members),
        grouping=grouping,
        block_sizes=sizes,
        trace=float(tr.estimate),
        trace_stderr=float(tr.stderr),
        block_traces=dict(tr.block_estimates or {}),
        block_trace_stderrs=dict(tr.block_stderrs or {}),
        block_eigenvalues=eigenvalues,
        block_residuals=residuals,
        block_converged=converged,
        block_densities={
            name: {
                "nodes": np.asarray(d.nodes),
                "weights": np.asarray(d.weights),
                "residuals": np.asarray(d.residuals),
                "converged": np.asarray(d.converged),
                "num_nodes": np.asarray(d.num_nodes),
                "n": int(d.n),
            }
            for name, d in dens.items()
        },
        js_distance=dist,
        grid=grid,
        num_matvecs=int(used),
        seconds=time.perf_counter() - t0,
        seed=seed,
        settings={
            "grouping": grouping,
            "n": op.shape[0],
            "k": k,
            "tol": tol,
            "trace_method": trace_method,
            "num_matvecs": num_matvecs,
            "num_steps": num_steps,
            "num_probes": num_probes,
            "points": points,
            **op.settings,
        },
    )


def _index_sets(op: HessianOperator, members: Mapping[str, list[str]]) -> dict[str, Any]:
    """Each block's coordinates: a slice when its parameters are adjacent, else an index tensor."""
    out: dict[str, Any] = {}
    for name, names in members.items():
        spans = sorted((op.blocks[p].start, op.blocks[p].stop) for p in names)
        if all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False)):
            out[name] = slice(spans[0][0], spans[-1][1])
        else:
            out[name] = torch.cat([torch.arange(a, b) for a, b in spans])
    return out
