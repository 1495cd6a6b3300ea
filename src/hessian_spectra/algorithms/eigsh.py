"""Top-k eigenpairs of a symmetric operator from its products alone: `eigsh`.

``method="lanczos"`` (default) is the Lanczos method (Lanczos 1950) with full
reorthogonalization, its Ritz values computed after every step from the
tridiagonal matrix, and the thick restart of Wu and Simon (2000) with locking of
converged pairs when the basis reaches `max_basis`. The residual of a Ritz pair
comes free from the recurrence: ``||H y - theta y|| = beta_m |s_mi|`` (Paige
1971; Parlett, *The Symmetric Eigenvalue Problem*, 1980, ch. 13). The error
estimate ``min(r, r^2 / gap)`` is the Kato-Temple / Parlett quadratic residual
bound evaluated with the gap to the nearest other Ritz value. Loss of
orthogonality beyond semi-orthogonality, ``sqrt(eps)`` (Simon 1984), is
reported and voids the convergence claims.

The other methods live beside this module: ``"block"`` (block Lanczos, Golub
and Underwood 1977, in `block_lanczos`), ``"power"`` (PyHessian's deflated power
iteration, Yao et al. 2020, in `power`) and ``"rqi"`` (a range-finder sketch,
Halko, Martinsson and Tropp 2011, refined by Rayleigh quotient iteration with
MINRES, in `rqi`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hessian_spectra.algorithms._common import Callback, Recorder, gaussian, resolve_seed
from hessian_spectra.algorithms.lanczos import LanczosProcess
from hessian_spectra.checkpoint import (
    RunCheckpoint,
    generator_state,
    guarded,
    open_run,
    resolve_resumed_seed,
    tensor_digest,
)
from hessian_spectra.operators.base import LinearOperator, as_operator
from hessian_spectra.results import WHICH, EigshResult, priority, result_order, select

Which = Literal["LA", "SA", "LM", "BE"]
Method = Literal["lanczos", "block", "power", "rqi"]
Stop = Literal["residual", "relative_change"]

METHODS = ("lanczos", "block", "power", "rqi")
STOPS = ("residual", "relative_change")


# --------------------------------------------------------------------------- shared helpers
TRUE_RESIDUAL_FLOOR = 10.0


def thresholds(
    values: np.ndarray,
    tol: float,
    dtype: torch.dtype,
    scale: float | None = None,
    *,
    true_residuals: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Residual thresholds ``max(tol |theta|, floor)``, precision-limited flags, and the floor.

    The floor is the operator's machine epsilon times the largest magnitude in
    play (`scale`, default the largest |value|): a residual cannot be trusted
    below it, so pairs whose ``tol |theta|`` lies under it stop on the floor and
    are flagged as limited by precision (float32 operators, eigenvalues near 0).
    Residuals computed from a product (``true_residuals``: power iteration,
    RQI, ``verify``) carry that product's own rounding, a few eps ||H||, so
    their floor is `TRUE_RESIDUAL_FLOOR` (10) times larger; the Lanczos
    recurrence's estimates have no such noise.
    """
    v = np.abs(np.asarray(values, dtype=np.float64))
    if scale is None:
        scale = float(v.max()) if v.size else 0.0
    floor = float(torch.finfo(dtype).eps) * scale
    if true_residuals:
        floor *= TRUE_RESIDUAL_FLOOR
    want = tol * v
    return np.maximum(want, floor), want < floor, floor


def error_estimates(values: np.ndarray, residuals: np.ndarray, others: np.ndarray) -> np.ndarray:
    """``min(r, r^2 / gap)``, gap to the nearest other Ritz value.

    An estimate, not a bound: an eigenvalue not yet found can sit in the gap.
    """
    vals = np.asarray(values, dtype=np.float64)
    res = np.asarray(residuals, dtype=np.float64)
    pool = np.asarray(others, dtype=np.float64)
    out = res.copy()
    for i, (t, r) in enumerate(zip(vals, res, strict=True)):
        d = np.abs(pool - t)
        d = d[d > 0]  # drop the value itself (and exact copies, which have no gap)
        if d.size and d.min() > 0:
            out[i] = min(r, r * r / d.min())
    return out


def orthogonality_threshold(dtype: torch.dtype) -> float:
    """Semi-orthogonality, sqrt(eps): beyond it Ritz residual estimates are not reliable."""
    return math.sqrt(float(torch.finfo(dtype).eps))


def check_v0(op: LinearOperator, v0: Any) -> torch.Tensor | None:
    """`v0` as an (n, b) tensor in the operator's dtype/device, or None; refuses bad ones."""
    if v0 is None:
        return None
    n = op.shape[0]
    V = torch.as_tensor(v0)
    if V.ndim == 1:
        V = V[:, None]
    if V.ndim != 2 or V.shape[0] != n or V.shape[1] < 1:
        raise ValueError(
            f"v0 must have shape ({n},) or ({n}, b) for this operator, got {tuple(V.shape)}"
        )
    V = V.to(dtype=op.dtype, device=op.device)
    if not bool(torch.isfinite(V).all()):
        raise ValueError("v0 holds NaN or inf: pass finite starting vectors")
    if float(torch.linalg.matrix_norm(V.double())) == 0.0:
        raise ValueError(
            "v0 is zero: pass a non-zero starting vector (or v0=None for a random one)"
        )
    return V


def combine_columns(V: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One starting vector from an (n, b) block: a random Gaussian combination of its columns."""
    if V.shape[1] == 1:
        return V[:, 0].clone()
    w = torch.randn(V.shape[1], generator=generator, dtype=torch.float64)
    norms = torch.linalg.vector_norm(V.double(), dim=0)
    w = torch.where(norms > 0, w / norms.clamp_min(1e-300), torch.zeros_like(w))
    return (V.double() @ w.to(V.device)).to(V.dtype)


def verify_pairs(
    op: LinearOperator, values: np.ndarray, vectors: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """True residual norms ``||H v - theta v||`` (one block product) and Rayleigh quotients."""
    if vectors.shape[1] == 0:
        return np.empty(0), np.empty(0)
    HV = op.matmat(vectors)
    theta = torch.as_tensor(values, dtype=vectors.dtype, device=vectors.device)
    R = (HV - vectors * theta).double()
    rq = (vectors.double() * HV.double()).sum(0)
    return (
        torch.linalg.vector_norm(R, dim=0).cpu().numpy(),
        rq.cpu().numpy(),
    )


@dataclass
class RawPairs:
    """What a method returns to `eigsh` before the common finishing steps."""

    values: np.ndarray
    vectors: torch.Tensor
    residuals: np.ndarray
    converged: np.ndarray
    precision_limited: np.ndarray
    error_estimates: np.ndarray
    orthogonality_loss: float
    stop_reason: str
    restarts: int = 0
    floor: float = 0.0
    true_floor: bool = False  # whether `floor` is already the true-residual floor
    basis_bytes: int = 0  # memory held by the basis (Lanczos)


# --------------------------------------------------------------------------- Lanczos
def _lanczos(
    op: LinearOperator,
    k: int,
    which: str,
    tol: float,
    max_matvecs: int,
    capacity: int,
    v0: torch.Tensor,
    generator: torch.Generator,
    rec: Recorder,
    *,
    run: RunCheckpoint | None = None,
    basis_device: torch.device | str | None = None,
    basis_dtype: torch.dtype | None = None,
) -> RawPairs:
    """Lanczos with full reorthogonalization, convergence tested after every product.

    Each iteration is: one step (one product), the Ritz pairs, one history
    record, then the stopping tests and, when the basis is full, a thick
    restart. A checkpoint is taken right after the record (`pending`: the tests
    are still to do) or after a restart; a resumed run continues from there.
    """
    n = op.shape[0]
    proc = LanczosProcess(
        op,
        v0,
        capacity,
        reorth="full",
        generator=generator,
        basis_device=basis_device,
        basis_dtype=basis_dtype,
    )
    eps_dtype = op.dtype
    stop_reason = "max_matvecs"
    # loop state beside the process: the largest orthogonality loss seen before
    # restarts, and whether the stopping tests of the last step are still to do
    loop: dict[str, Any] = {"ortho_loss": 0.0, "pending": False}
    if run is not None:
        if run.state is not None:
            proc.load_state_dict(run.state["process"])
            loop.update(run.state["loop"])
            rec.load_state_dict(run.state["recorder"])
            generator.set_state(run.state["generator"])
        proc.on_update = run.dirty
        rec.on_record = run.boundary
        run.bind(
            state=lambda: {"process": proc.state_dict(), "loop": dict(loop)},
            snapshot=lambda: {
                "recorder": rec.state_dict(),
                "generator": generator_state(generator),
            },
        )
        run.boundary(periodic=False)

    def evaluate() -> tuple[Any, ...]:
        theta, S, res = proc.ritz()
        vals = np.concatenate([proc.locked_values, theta])
        resid = np.concatenate([proc.locked_residuals, res])
        kk = min(k, vals.size)
        sel = select(vals, which, kk)
        thr, limited, floor = thresholds(vals, tol, eps_dtype)
        conv = resid[sel] <= thr[sel]
        done = kk == k and bool(conv.all())
        return S, vals, resid, sel, thr, limited, floor, conv, done

    resuming = run is not None and run.resumed and proc.num_matvecs > 0
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
            loop["pending"] = True
            stop = rec.record(
                postfix=f"{nconv}/{k} converged",
                ritz_values=vals[sel],
                residuals=resid[sel],
                num_converged=nconv,
                all_ritz_values=vals[asc],
                all_residuals=resid[asc],
                basis_size=proc.num_locked + proc.num_steps,
                restarts=proc.restarts,
            )
        if loop["pending"]:
            if done:
                stop_reason = "converged"
                break
            if stop:
                stop_reason = "callback"
                break
            if proc.num_matvecs >= max_matvecs:
                break
            if proc.num_locked + proc.num_steps >= n:
                stop_reason = "exhausted"
                break
            if proc.done:
                if run is not None:
                    run.dirty()
                loop["ortho_loss"] = max(loop["ortho_loss"], proc.orthogonality_loss())
                _thick_restart(proc, vals, resid, thr, which, k, capacity)
                loop["pending"] = False
                if run is not None:
                    run.boundary(periodic=False)
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


def _thick_restart(
    proc: LanczosProcess,
    vals: np.ndarray,
    resid: np.ndarray,
    thr: np.ndarray,
    which: str,
    k: int,
    capacity: int,
) -> None:
    """Keep the wanted Ritz vectors (locking converged ones) and a buffer of the next ones."""
    o = proc.num_locked
    order = priority(vals, which)
    wanted = order[:k]
    conv = resid <= thr
    lock_ids = [int(i) - o for i in wanted if i >= o and conv[i]]
    keep_ids = [int(i) - o for i in wanted if i >= o and not conv[i]]
    extra = [int(i) - o for i in order[k:] if i >= o]
    room = capacity - (o + len(lock_ids)) - len(keep_ids)
    n_extra = max(0, min(len(extra), room // 2, room - 2))
    keep = lock_ids + keep_ids + extra[:n_extra]
    lock = [True] * len(lock_ids) + [False] * (len(keep) - len(lock_ids))
    proc.restart(keep, lock)


# --------------------------------------------------------------------------- public entry
def _min_matvecs(method: str, k: int, n: int, block_size: int) -> int:
    if method == "block":
        b = min(block_size, n)
        return min(n, b * math.ceil(k / b))
    if method == "power":
        return 2 * k
    if method == "rqi":
        return 2 * min(n, rqi_sketch_size(k, n)) + 2 * k
    return k


def rqi_sketch_size(k: int, n: int) -> int:
    """Columns of the range finder that seeds method="rqi": max(2k, k + 10), at most n."""
    return min(n, max(2 * k, k + 10))


def default_max_basis(method: str, k: int, n: int, block_size: int) -> int:
    """The basis cap used when `max_basis` is None."""
    if method == "block":
        return min(n, max(3 * k, k + 4 * block_size))
    return min(n, max(3 * k, k + 32))


def eigsh(
    op: LinearOperator | torch.Tensor | np.ndarray,
    k: int,
    *,
    which: Which = "LA",
    method: Method = "lanczos",
    tol: float = 1e-4,
    max_matvecs: int | None = None,
    seed: int | None = None,
    v0: torch.Tensor | np.ndarray | None = None,
    block_size: int = 8,
    verify: bool = False,
    callback: Callable[[Mapping[str, Any]], bool | None] | None = None,
    progress: bool = False,
    max_basis: int | None = None,
    stop: Stop = "residual",
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    basis_device: torch.device | str | None = None,
    basis_dtype: torch.dtype | None = None,
) -> EigshResult:
    """k eigenpairs of a symmetric operator at one end of its spectrum, from products only.

    A pair counts as converged when its residual ``||H v - theta v||`` is at most
    ``max(tol * |theta|, floor)``, where ``floor = eps(op.dtype) * max |theta|``:
    below the floor a residual is rounding noise, so float32 operators and
    eigenvalues near zero still stop; such pairs are flagged in
    ``precision_limited``. (Residuals computed from a product, as in power
    iteration, RQI and ``verify``, carry that product's rounding: their floor is
    ten times larger.) By the Krylov-Bogoliubov bound a converged Ritz value
    lies within its residual of an eigenvalue; the error estimate
    ``min(r, r^2/gap)`` is usually far smaller (it assumes no eigenvalue was
    missed). Check ``converged``: a run that ran out of products returns its
    best pairs flagged False rather than raising.

    Single-vector Lanczos cannot see multiplicity: in exact arithmetic the Krylov
    space of one vector holds one direction of each eigenspace, so a repeated
    eigenvalue is found once (further copies only from rounding, late). Use
    ``method="block"`` with ``block_size`` at least the multiplicity to get every
    copy.

    Args:
        op: the symmetric operator (or a dense symmetric matrix).
        k: how many eigenpairs, 1 <= k < n.
        which: "LA" largest algebraic, "SA" smallest algebraic, "LM" largest
            magnitude, "BE" both ends (ceil(k/2) largest, floor(k/2) smallest).
        method: "lanczos" (default), "block" (block Lanczos on `matmat`; finds
            multiplicities up to `block_size`, and is faster where a block product
            costs less per column), "power" (PyHessian's deflated power iteration,
            for comparison; "LM" natively, "LA"/"SA" through a spectral shift found
            by 10 Lanczos steps) or "rqi" (a range-finder sketch of
            max(2k, k+10) columns, then `refine`).
        tol: relative residual tolerance.
        max_matvecs: the most operator columns to multiply (default
            max(1000, 100 k)); the run stops there, unconverged pairs flagged
            (``verify`` adds k). Power iteration and RQI give each pair an equal
            share; a callback stop returns the pairs they finished so far.
        seed: seed of the random start (drawn and recorded when None).
        v0: (n,) starting vector, or (n, b) block (e.g. previous eigenvectors,
            for a warm start). Lanczos starts from a random Gaussian combination
            of the columns; block Lanczos uses the columns as its first block
            (filled with random columns up to `block_size`, or random
            combinations of them when b > block_size); power iteration starts
            eigenvector i from column i; "rqi" puts them in its sketch.
        block_size: block size of method="block".
        verify: multiply the k returned vectors once more (k products) and report
            true residuals; convergence is then judged on them.
        callback: called with each history record; returning True stops the run.
        progress: show a progress bar counting products.
        max_basis: the most basis vectors held at once (memory: n * max_basis
            numbers). When reached, Lanczos and block Lanczos thick-restart,
            keeping the wanted Ritz vectors and locking converged ones. Default
            max(3k, k+32) (block: max(3k, k + 4 block_size)).
        stop: power iteration's rule: "residual" (default, the rule above) or
            "relative_change" (PyHessian's: two successive Rayleigh quotients
            within tol relatively, tol=1e-3 in PyHessian; it can stop with a
            large residual). Other methods accept only "residual".
        checkpoint: a file to save the run's state to (method="lanczos"): the
            basis, the tridiagonal (and restart) coefficients, the generator
            state, the product count and the history, written atomically every
            `checkpoint_every` steps and when the call is left by an exception
            (KeyboardInterrupt included) at a consistent point; otherwise the
            last periodic save stays. The file is removed when the call returns.
            Only rank 0 of a distributed run writes it.
        checkpoint_every: steps (products) between saves (default 10).
        resume: continue the run saved in `checkpoint` (start afresh when the
            file does not exist, so a job that may be preempted can always pass
            it). The continued run is the identical computation: the same
            result, to the bit, as an uninterrupted call with the same
            arguments. Without it an existing checkpoint file is refused. A
            file from another computation (other settings, operator size or
            seed), a truncated or a foreign file raise `CheckpointError`.
        basis_device: where the Lanczos basis is kept (method="lanczos"), e.g.
            "cpu" while the operator runs on a GPU (default: the operator's device).
        basis_dtype: the Lanczos basis's dtype, e.g. torch.float32 under a
            float64 operator (default: the operator's). The basis memory,
            ``n * (max_basis + 1)`` values, is reported in
            ``settings["basis_bytes"]``. A lower precision bounds the accuracy
            of the pairs to about eps(basis_dtype) * ||H||, and convergence is
            then judged against that dtype's semi-orthogonality.

    Returns:
        An `EigshResult`: eigenvalues in the order of `which`, eigenvectors (n, k),
        residuals, converged and precision_limited flags, error estimates, the
        basis's orthogonality loss, products, seconds, history and seed.
    """
    op = as_operator(op)
    n = op.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got k={k}")
    if k >= n:
        raise ValueError(
            f"k={k} must be below the operator size n={n}; for all eigenvalues of a small "
            "operator form it densely and use numpy.linalg.eigh"
        )
    if which not in WHICH:
        raise ValueError(f"unknown which={which!r}; choose one of {', '.join(WHICH)}")
    if method not in METHODS:
        raise ValueError(f"unknown method={method!r}; choose one of {', '.join(METHODS)}")
    if stop not in STOPS:
        raise ValueError(f"unknown stop={stop!r}; choose 'residual' or 'relative_change'")
    if stop != "residual" and method != "power":
        raise ValueError(
            f"stop={stop!r} is power iteration's rule; method={method!r} stops on residuals "
            "only: drop stop or pass method='power'"
        )
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    block_size = int(min(block_size, n))
    need = _min_matvecs(method, k, n, block_size)
    if max_matvecs is None:
        max_matvecs = max(1000, 100 * k, need)
    elif int(max_matvecs) < need:
        raise ValueError(
            f"max_matvecs={max_matvecs} is too small for k={k} with method={method!r}: it "
            f"needs at least {need} products; raise max_matvecs or pass None"
        )
    max_matvecs = int(max_matvecs)
    if max_basis is not None:
        floor_basis = k + (2 * block_size if method == "block" else 2)
        if int(max_basis) < min(n, floor_basis):
            raise ValueError(
                f"max_basis={max_basis} leaves no room to restart with k={k}: pass at least "
                f"{min(n, floor_basis)} (or None for the default)"
            )
        basis_cap = min(n, int(max_basis))
    else:
        basis_cap = default_max_basis(method, k, n, block_size)
    V0 = check_v0(op, v0)
    if method != "lanczos" and (
        checkpoint is not None or basis_device is not None or basis_dtype is not None
    ):
        raise ValueError(
            f"checkpoint, basis_device and basis_dtype are options of method='lanczos'; "
            f"method={method!r} does not take them"
        )
    if basis_dtype is not None and not (
        isinstance(basis_dtype, torch.dtype) and basis_dtype.is_floating_point
    ):
        raise ValueError(f"basis_dtype must be a floating torch dtype, got {basis_dtype!r}")
    run = open_run(
        checkpoint,
        f"eigsh/{method}",
        lambda: {
            **op.fingerprint(),
            "k": k,
            "which": which,
            "tol": float(tol),
            "max_matvecs": max_matvecs,
            "max_basis": basis_cap,
            "v0": None if V0 is None else tensor_digest(V0),
            "basis_dtype": str(basis_dtype or op.dtype),
        },
        every=checkpoint_every,
        resume=resume,
    )
    seed, gen = resolve_seed(resolve_resumed_seed(seed, run), op)
    if run is not None:
        run.extra["seed"] = seed

    with (
        guarded(run),
        Recorder(
            op, f"eigsh {method}", total=max_matvecs, progress=progress, callback=callback
        ) as rec,
    ):
        settings = rec.settings(
            k=k,
            which=which,
            method=method,
            tol=float(tol),
            max_matvecs=max_matvecs,
            block_size=block_size,
            max_basis=basis_cap,
            stop=stop,
            verify=bool(verify),
            warm_start=V0 is not None,
        )
        raw = _dispatch(
            op,
            k,
            which,
            method,
            float(tol),
            max_matvecs,
            basis_cap,
            V0,
            gen,
            rec,
            block_size=block_size,
            stop=stop,
            run=run,
            basis_device=basis_device,
            basis_dtype=basis_dtype,
        )
        if raw.basis_bytes:
            settings["basis_bytes"] = raw.basis_bytes
            settings["basis_device"] = str(basis_device or op.device)
            settings["basis_dtype"] = str(basis_dtype or op.dtype)
        verified = False
        if verify:
            res_true, _ = verify_pairs(op, raw.values, raw.vectors)
            want = float(tol) * np.abs(raw.values)
            floor = raw.floor * (1.0 if raw.true_floor else TRUE_RESIDUAL_FLOOR)
            raw.residuals = res_true
            raw.converged = res_true <= np.maximum(want, floor)
            raw.precision_limited = want < floor
            raw.error_estimates = error_estimates(raw.values, res_true, raw.values)
            verified = True
        ortho_dtype = op.dtype
        if basis_dtype is not None and torch.finfo(basis_dtype).eps > torch.finfo(op.dtype).eps:
            ortho_dtype = basis_dtype
        if raw.orthogonality_loss > orthogonality_threshold(ortho_dtype):
            raw.converged = np.zeros_like(raw.converged, dtype=bool)
        perm = result_order(raw.values, which)
        seconds = rec.seconds
        num_matvecs = rec.matvecs
        history = rec.history
    if run is not None:
        run.finish()
    return EigshResult(
        eigenvalues=np.asarray(raw.values, dtype=np.float64)[perm],
        eigenvectors=raw.vectors[:, torch.as_tensor(perm, device=raw.vectors.device)],
        residuals=np.asarray(raw.residuals, dtype=np.float64)[perm],
        converged=np.asarray(raw.converged, dtype=bool)[perm],
        error_estimates=np.asarray(raw.error_estimates, dtype=np.float64)[perm],
        precision_limited=np.asarray(raw.precision_limited, dtype=bool)[perm],
        orthogonality_loss=float(raw.orthogonality_loss),
        verified=verified,
        which=which,
        method=method,
        restarts=int(raw.restarts),
        stop_reason=raw.stop_reason,
        num_matvecs=num_matvecs,
        seconds=seconds,
        history=history,
        seed=seed,
        settings=settings,
    )


def _dispatch(
    op: LinearOperator,
    k: int,
    which: str,
    method: str,
    tol: float,
    max_matvecs: int,
    basis_cap: int,
    V0: torch.Tensor | None,
    gen: torch.Generator,
    rec: Recorder,
    *,
    block_size: int,
    stop: str,
    run: RunCheckpoint | None = None,
    basis_device: torch.device | str | None = None,
    basis_dtype: torch.dtype | None = None,
) -> RawPairs:
    if method == "lanczos":
        v = combine_columns(V0, gen) if V0 is not None else gaussian(op, 1, gen)[:, 0]
        capacity = min(op.shape[0], basis_cap, max_matvecs)
        return _lanczos(
            op,
            k,
            which,
            tol,
            max_matvecs,
            capacity,
            v,
            gen,
            rec,
            run=run,
            basis_device=basis_device,
            basis_dtype=basis_dtype,
        )
    if method == "block":
        from hessian_spectra.algorithms.block_lanczos import block_lanczos_eigsh

        return block_lanczos_eigsh(
            op, k, which, tol, max_matvecs, basis_cap, block_size, V0, gen, rec
        )
    if method == "power":
        from hessian_spectra.algorithms.power import power_eigsh

        return power_eigsh(op, k, which, tol, max_matvecs, stop, V0, gen, rec)
    from hessian_spectra.algorithms.rqi import rqi_eigsh

    return rqi_eigsh(op, k, which, tol, max_matvecs, V0, gen, rec)


__all__ = ["eigsh", "Callback"]
