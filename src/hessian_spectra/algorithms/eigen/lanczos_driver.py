"""``eigsh(method="lanczos")``: restarted Lanczos with convergence tested after every product.

The Lanczos method (Lanczos 1950) with full reorthogonalization, driven one
step at a time through the shared kernel (`LanczosProcess`): after every step
the Ritz values come from the tridiagonal matrix and the residual of a Ritz
pair comes free from the recurrence, ``||H y - theta y|| = beta_m |s_mi|``
(Paige 1971; Parlett, *The Symmetric Eigenvalue Problem*, 1980, ch. 13). When
the basis reaches `max_basis` it is thick-restarted (Wu and Simon 2000),
keeping the wanted Ritz vectors and locking converged ones. The run can be
checkpointed after any step and resumed to the bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hessian_spectra.algorithms._linalg import gaussian
from hessian_spectra.algorithms._run import RunContext
from hessian_spectra.algorithms.eigen._ritz import (
    ROUNDING_LEVEL,
    EigenProblem,
    RawPairs,
    Solver,
    combine_columns,
    error_estimates,
    precision_ratio,
    restart_choice,
    restart_keep,
    thresholds,
)
from hessian_spectra.algorithms.lanczos import LanczosProcess
from hessian_spectra.history import (
    ALL_RESIDUALS,
    ALL_RITZ_VALUES,
    BASIS_SIZE,
    NUM_CONVERGED,
    RESIDUALS,
    RESTARTS,
    RITZ_VALUES,
)
from hessian_spectra.results import select


def lanczos_eigsh(p: EigenProblem, ctx: RunContext) -> RawPairs:
    """Lanczos with full reorthogonalization, convergence tested after every product.

    Each iteration is: one step (one product), the Ritz pairs, one history
    record, then the stopping tests and, when the basis is full, a thick
    restart. A checkpoint is taken right after the record (`pending`: the tests
    are still to do) or after a restart; a resumed run continues from there.
    """
    op, k, which, tol = p.op, p.k, p.which, p.tol
    n = op.shape[0]
    generator = ctx.generator
    v0 = combine_columns(p.v0, generator) if p.v0 is not None else gaussian(op, 1, generator)[:, 0]
    capacity = min(n, p.max_basis, p.max_matvecs)
    proc = LanczosProcess(
        op,
        v0,
        capacity,
        reorth="full",
        generator=generator,
        basis_device=p.basis_device,
        basis_dtype=p.basis_dtype,
    )
    stop_reason = "max_matvecs"
    # loop state beside the process: the largest orthogonality loss seen before
    # restarts, and whether the stopping tests of the last step are still to do
    loop: dict[str, Any] = {"ortho_loss": 0.0, "pending": False}
    if ctx.saved is not None:
        proc.load_state_dict(ctx.saved["process"])
        loop.update(ctx.saved["loop"])
    if ctx.checkpoint is not None:
        proc.on_update = ctx.dirty
    ctx.track(lambda: {"process": proc.state_dict(), "loop": dict(loop)})

    def evaluate() -> tuple[Any, ...]:
        theta, S, res = proc.ritz()
        vals = np.concatenate([proc.locked_values, theta])
        resid = np.concatenate([proc.locked_residuals, res])
        kk = min(k, vals.size)
        sel = select(vals, which, kk)
        thr, limited, floor = thresholds(vals, tol, op.precision_dtype)
        conv = resid[sel] <= thr[sel]
        done = kk == k and bool(conv.all())
        return S, vals, resid, sel, thr, limited, floor, conv, done

    resuming = ctx.resumed and proc.num_matvecs > 0
    while True:
        stop = False
        if resuming:
            S, vals, resid, sel, thr, limited, floor, conv, done = evaluate()
            resuming = False
        else:
            proc.step()
            S, vals, resid, sel, thr, limited, floor, conv, done = evaluate()
            nconv = int(conv.sum())
            asc = np.argsort(vals)
            # reported no lower than at the end (see rounding_level)
            level = ROUNDING_LEVEL * floor * precision_ratio(op.dtype, p.basis_dtype)
            loop["pending"] = True
            stop = ctx.record(
                {
                    RITZ_VALUES: vals[sel],
                    RESIDUALS: np.maximum(resid[sel], level),
                    NUM_CONVERGED: nconv,
                    ALL_RITZ_VALUES: vals[asc],
                    ALL_RESIDUALS: np.maximum(resid[asc], level),
                    BASIS_SIZE: proc.num_locked + proc.num_steps,
                    RESTARTS: proc.restarts,
                },
                postfix=f"{nconv}/{k} converged",
            )
        if loop["pending"]:
            if done:
                stop_reason = "converged"
                break
            if stop:
                stop_reason = "callback"
                break
            if proc.num_matvecs >= p.max_matvecs:
                break
            if proc.num_locked + proc.num_steps >= n:
                stop_reason = "exhausted"
                break
            if proc.done:
                ctx.dirty()
                loop["ortho_loss"] = max(loop["ortho_loss"], proc.orthogonality_loss())
                keep, lock = restart_choice(
                    vals, resid, thr, which, k, proc.num_locked, capacity - proc.num_locked, 2
                )
                proc.restart(keep, lock)
                loop["pending"] = False
                ctx.boundary(periodic=False)
            loop["pending"] = False
    ortho_loss = max(loop["ortho_loss"], proc.orthogonality_loss())
    o = proc.num_locked
    locked_sel = sel[sel < o]
    active_sel = sel[sel >= o] - o
    parts = {
        int(i): proc.locked_basis[:, int(i)].to(device=op.device, dtype=op.dtype)
        for i in locked_sel
    }
    Y = proc.combine(S[:, active_sel])
    for j, i in enumerate(active_sel):
        parts[int(i) + o] = Y[:, j]
    vectors = torch.stack([parts[int(i)] for i in sel], dim=1)
    return RawPairs(
        values=vals[sel],
        vectors=vectors,
        residuals=resid[sel],
        converged=resid[sel] <= thr[sel],
        precision_limited=limited[sel],
        error_estimates=error_estimates(vals[sel], resid[sel], vals),
        orthogonality_loss=ortho_loss,
        stop_reason=stop_reason,
        restarts=proc.restarts,
        floor=floor,
        basis_bytes=proc.basis_bytes,
    )


def _memory(
    n: int, k: int, capacity: int, block_size: int, max_matvecs: int, item: int, basis_item: int
) -> tuple[int, int]:
    """The basis (n, cap + 1); beside it the vectors a restart keeps or the k returned
    (each made, then copied into place), the dense projected matrix and its eigenvectors,
    and the recurrence's few vectors."""
    cap = max(1, min(n, capacity, max_matvecs))
    basis = n * (cap + 1) * basis_item
    vectors = 2 * n * max(restart_keep(k, cap), k) * item
    return basis, vectors + 2 * cap * cap * 8 + 8 * n * item


SOLVER = Solver(
    lanczos_eigsh,
    checkpoints=True,
    memory=_memory,
    lower_memory=(
        "lower max_basis (now {max_basis}: the basis holds n x (max_basis + 1) numbers), keep "
        "the basis in a smaller dtype (basis_dtype=torch.float32, or torch.bfloat16 at a "
        "cost in accuracy) or on another device (basis_device='cpu'), or ask for fewer "
        "pairs (k)"
    ),
)
