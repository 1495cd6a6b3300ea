"""Spectral density by stochastic Lanczos quadrature (SLQ).

For a unit probe v, the spectral measure mu_v = sum_k (q_k^T v)^2 delta(lambda_k)
has expectation (1/n) sum_k delta(lambda_k) over random v, the spectral
density. m Lanczos steps from v give the m-point Gauss quadrature rule of mu_v
(Golub and Meurant 1994/2010, "Matrices, Moments and Quadrature"): nodes are
the eigenvalues of the tridiagonal T, weights the squared first components of
its eigenvectors. Averaging over probes gives SLQ (Lin, Saad, Yang 2016,
"Approximating spectral densities of large matrices", SIAM Review; Ubaru,
Chen, Saad 2017 for the analysis; Ghorbani, Krishnan, Xiao 2019 and Yao et al.
2020 (PyHessian) for network Hessians).

Each probe runs the shared Lanczos kernel with full reorthogonalization and
stops at its first breakdown (beta below sqrt(eps) |T|): the Krylov space is
then invariant, so the Gauss rule of that size is exact for mu_v, while the
kernel's restart vector would start a block of T that has nothing to do with
v, and the steps after a near breakdown would only explore rounding errors
(on a rank-deficient operator, e.g. 90% zero eigenvalues, breakdown is
likely). The saved products are not spent.

Probes run in lockstep, each its own `LanczosProcess` (the shared kernel),
with their products taken together in one block (`matmat`): one pass over
the data per step for all probes of a block, on a Hessian operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hessian_spectra.algorithms._linalg import rademacher
from hessian_spectra.algorithms._run import Callback, RunContext
from hessian_spectra.algorithms.lanczos import LanczosProcess, tridiagonal_eigh
from hessian_spectra.algorithms.memory import check_memory, dtype_bytes
from hessian_spectra.history import ACTIVE, STEP
from hessian_spectra.operators.base import LinearOperator, as_operator
from hessian_spectra.results import DensityResult


class _Relay(LinearOperator):
    """Hands each Lanczos process the product already computed for its vector.

    Several independent Lanczos runs advance in lockstep: their next vectors
    are multiplied together in one `matmat` of the real operator (one pass
    over the data for a Hessian), and each process's own `matvec` then gets
    its column from here. A vector that is not the one loaded is multiplied
    directly, so the relay can never return a wrong product. The real
    operator checks its products (finite, symmetric); the relay does not again.
    """

    check_finite = False
    check_symmetry = False

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op = op
        self._v: torch.Tensor | None = None
        self._hv: torch.Tensor | None = None

    def load(self, v: torch.Tensor, hv: torch.Tensor) -> None:
        self._v, self._hv = v, hv

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        v, hv = self._v, self._hv
        self._v = self._hv = None
        if v is not None and hv is not None and V.shape[1] == 1 and torch.equal(V[:, 0], v):
            return hv[:, None].clone()
        return self.op.matmat(V)


def _finished(proc: LanczosProcess, rtol: float) -> bool:
    """Whether a probe's run is over: its basis is full or its Krylov space invariant."""
    return proc.done or _broke_down(proc, rtol)


def _broke_down(proc: LanczosProcess, rtol: float) -> bool:
    """Whether the run has reached an (exact or near) invariant Krylov space.

    The kernel declares a breakdown only when beta is at rounding level; a
    beta below `rtol` times |T| already makes the Krylov space invariant to
    that accuracy (every Ritz pair has a residual below it), and the steps
    after it would explore rounding errors and create spurious nodes.
    """
    if proc.breakdowns:
        return True
    scale = max(max(abs(a) for a in proc.alpha), max(proc.beta))
    return proc.beta[-1] <= rtol * scale


def density_memory(
    n: int,
    *,
    num_steps: int = 100,
    num_probes: int = 1,
    block_size: int = 10,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Bytes `density` allocates for its probes' Lanczos bases on an operator of size n.

    What ``density(op, ...)`` with the same arguments checks before its first
    product: `block_size` probes run at once, each with an n x (num_steps + 1)
    basis, beside the num_probes starting vectors (the operator's own memory
    is not included).

    Example:
        >>> from hessian_spectra.algorithms import density_memory
        >>> density_memory(1_000_000, num_steps=100, num_probes=10) // 10**9  # float32, GB
        4

    Args:
        n: the operator's size.
        num_steps, num_probes, block_size: as for `density`.
        dtype: the operator's dtype.
    """
    if n < 1 or num_steps < 1 or num_probes < 1 or block_size < 1:
        raise ValueError(
            f"n, num_steps, num_probes and block_size must be at least 1, got n={n}, "
            f"num_steps={num_steps}, num_probes={num_probes}, block_size={block_size}"
        )
    steps = min(int(num_steps), int(n))
    b = min(int(block_size), int(num_probes))
    return int(n) * (b * (steps + 4) + int(num_probes) + 2 * b) * dtype_bytes(dtype)


def density(
    op: LinearOperator | torch.Tensor | np.ndarray,
    *,
    num_steps: int = 100,
    num_probes: int = 1,
    seed: int | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    block_size: int = 10,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    max_memory: float | None = None,
) -> DensityResult:
    """Estimate the eigenvalue density by stochastic Lanczos quadrature.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> op = hs.DenseOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
        >>> den = hs.density(op, num_steps=30, num_probes=4, seed=0)
        >>> round(den.count_above(50.5))  # eigenvalues 51, ..., 100
        50

    Args:
        op: a symmetric `LinearOperator` (or a dense symmetric matrix).
        num_steps: Lanczos steps per probe (products per probe, at most n);
            a probe whose Krylov space becomes invariant stops early.
        num_probes: independent Rademacher probes; with more than one the
            result also gives the probe-to-probe spread.
        seed: the random seed (drawn and recorded when None).
        progress: show a progress bar.
        callback: called with the history record of each step; returning True
            stops every probe there (each still gives a valid, shorter Gauss rule).
        block_size: probes run together, their products taken in one block
            (`matmat`); each keeps an (n, num_steps) basis, so this bounds memory.
        checkpoint: a file to save the run's state to (the running probes'
            Lanczos bases and coefficients, the finished probes' quadrature
            coefficients, the generator state, the product count, the history),
            written atomically every `checkpoint_every` steps and when the call
            is left by an exception (KeyboardInterrupt included) at a consistent
            point; removed when the call returns. Only rank 0 writes it.
        checkpoint_every: lockstep steps (one block product each) between saves
            (default 10).
        resume: continue the run saved in `checkpoint` (start afresh when there
            is no file): the same result, to the bit, as an uninterrupted call
            with the same arguments. Without it an existing file is refused;
            a file of another computation, a truncated or a foreign file raise
            `CheckpointError`.
        max_memory: the most bytes the probes' Lanczos bases may take (see
            `density_memory`); by default they are checked against the memory
            available on the operator's device before any product, and a call
            that would not fit raises `InsufficientMemoryError`.

    Returns:
        A `DensityResult` with `nodes` and `weights` (num_probes, num_steps),
        `pdf`, `cdf`, `count_above` and their per-probe spread.
    """
    op = as_operator(op)
    n = op.shape[0]
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if num_probes < 1:
        raise ValueError(f"num_probes must be at least 1, got {num_probes}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    steps = min(int(num_steps), n)
    check_memory(
        [
            (
                op.device,
                density_memory(
                    n, num_steps=steps, num_probes=num_probes, block_size=block_size, dtype=op.dtype
                ),
            )
        ],
        what=f"density(num_steps={num_steps}, num_probes={num_probes}) on an operator of "
        f"size n={n}",
        lower=(
            f"lower block_size (now {block_size}: probes run together, each keeping an "
            f"n x (num_steps + 1) basis) or num_steps"
        ),
        max_memory=max_memory,
    )
    ctx = RunContext(
        op,
        "density (SLQ)",
        seed=seed,
        total=steps * num_probes,
        progress=progress,
        callback=callback,
        checkpoint=checkpoint,
        kind="density/slq",
        fingerprint=lambda: {
            **op.fingerprint(),
            "num_steps": int(num_steps),
            "num_probes": int(num_probes),
            "block_size": int(block_size),
        },
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    gen = ctx.generator
    # A Ritz value counts as converged (an eigenvalue located, see
    # DensityResult.count_above) when its residual is below this fraction of
    # the spectrum's scale: sqrt(eps) of the operator's precision. The same
    # fraction of |T| in beta ends a probe's run.
    conv_rtol = float(torch.finfo(op.dtype).eps) ** 0.5
    starts = rademacher(op, num_probes, gen)
    relay = _Relay(op)

    def new_process(p: int) -> LanczosProcess:
        return LanczosProcess(relay, starts[:, p], steps, reorth="full", generator=gen)

    # the run's state: the first probe of the running group, its processes, and
    # the tridiagonal coefficients (alpha, beta) of the probes already finished
    loop: dict[str, Any] = {"lo": 0, "group": [], "finished": []}
    settings = {"num_steps": num_steps, "num_probes": num_probes, "block_size": block_size}
    with ctx:
        restored = ctx.saved is not None
        if ctx.saved is not None:
            saved = ctx.saved
            loop["lo"] = int(saved["lo"])
            loop["finished"] = [(list(a), list(b)) for a, b in saved["finished"]]
            group = []
            for j, proc_state in enumerate(saved["group"]):
                proc = new_process(loop["lo"] + j)
                proc.load_state_dict(proc_state)
                group.append(proc)
            loop["group"] = group
        ctx.track(
            lambda: {
                "lo": loop["lo"],
                "group": [p.state_dict() for p in loop["group"]],
                "finished": [(list(a), list(b)) for a, b in loop["finished"]],
            }
        )
        stop = False
        while loop["lo"] < num_probes:
            lo = loop["lo"]
            if restored:
                restored = False
                group = loop["group"]
                active = [p for p in group if not p.num_steps or not _finished(p, conv_rtol)]
            else:
                group = [new_process(p) for p in range(lo, min(num_probes, lo + block_size))]
                loop["group"] = group
                active = list(group)
                ctx.boundary(periodic=False)
            while active and not stop:
                V = torch.stack([proc.next_vector for proc in active], 1)
                HV = op.matmat(V)
                ctx.dirty()
                for j, proc in enumerate(active):
                    relay.load(V[:, j], HV[:, j])
                    proc.step()
                active = [p for p in active if not _finished(p, conv_rtol)]
                stop = ctx.record(
                    {STEP: group[0].num_steps if group else 0, ACTIVE: len(active)},
                    postfix=f"probes {lo + 1}-{lo + len(group)}",
                )
            ctx.dirty()
            loop["finished"].extend((list(p.alpha), list(p.beta)) for p in group)
            loop["group"] = []
            loop["lo"] = lo + len(group)
            if stop:
                break
        ctx.finish(f"{len(loop['finished'])} probes")
        seconds, used, history = ctx.seconds, ctx.matvecs, ctx.history
        all_settings = ctx.settings(**settings)

    nodes, weights, residuals, counts = [], [], [], []
    for alpha, beta in loop["finished"]:
        theta, S = tridiagonal_eigh(np.array(alpha), np.array(beta[:-1]))
        assert S is not None
        w = S[0, :] ** 2
        nodes.append(theta)
        weights.append(w / w.sum())
        residuals.append(abs(float(beta[-1])) * np.abs(S[-1, :]))
        counts.append(theta.size)
    # Probes that stopped early are padded with zero-weight copies of their
    # largest node, so that nodes and weights are rectangular.
    width = max(counts)
    P = len(nodes)
    N = np.empty((P, width))
    Wt = np.zeros((P, width))
    Rs = np.zeros((P, width))
    for i, (th, w, r) in enumerate(zip(nodes, weights, residuals, strict=True)):
        k = th.size
        N[i, :k], N[i, k:] = th, th[-1]
        Wt[i, :k] = w
        Rs[i, :k] = r
    scale = max(float(np.abs(N).max()), 1e-300)
    conv = Rs <= conv_rtol * scale
    for i, k in enumerate(counts):
        conv[i, k:] = False
    return DensityResult(
        nodes=N,
        weights=Wt,
        residuals=Rs,
        converged=conv,
        num_nodes=np.asarray(counts, dtype=np.int64),
        n=n,
        num_matvecs=used,
        seconds=seconds,
        history=history,
        seed=ctx.seed,
        settings=all_settings,
    )
