"""Top-k eigenpairs of a symmetric operator from its products alone: `eigsh`.

This module is the entry point: it checks the call, opens its run context
(seed, generator, record, checkpoint), hands the checked `EigenProblem` to the
solver of the chosen method and finishes the pairs it returns (true residuals
with ``verify``, the orthogonality test, the result order). The solvers live
beside it, one module each:

- ``"lanczos"`` (`lanczos_driver`): Lanczos (1950) with full
  reorthogonalization and the thick restart of Wu and Simon (2000). The error
  estimate ``min(r, r^2 / gap)`` is the Kato-Temple / Parlett quadratic
  residual bound evaluated with the gap to the nearest other Ritz value; loss
  of orthogonality beyond semi-orthogonality, ``sqrt(eps)`` (Simon 1984), is
  reported and voids the convergence claims.
- ``"block"`` (`block`): block Lanczos, Golub and Underwood 1977.
- ``"power"`` (`power`): PyHessian's deflated power iteration, Yao et al. 2020.
- ``"rqi"`` (`rqi`): a range-finder sketch (Halko, Martinsson and Tropp 2011)
  refined by Rayleigh quotient iteration with MINRES.

A new eigensolver is one module defining a `Solver` and one line in `SOLVERS`
(and its name in `Method`, for type checkers).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from hessian_spectra.algorithms._run import Callback, RunContext
from hessian_spectra.algorithms.eigen import block, lanczos_driver, power, rqi
from hessian_spectra.algorithms.eigen._ritz import (
    TRUE_RESIDUAL_FLOOR,
    EigenProblem,
    RawPairs,
    Solver,
    check_v0,
    error_estimates,
    floor_reported,
    orthogonality_threshold,
    rounding_level,
    verify_pairs,
    warn_unconverged,
)
from hessian_spectra.algorithms.memory import check_memory, dtype_bytes
from hessian_spectra.operators.base import LinearOperator, as_operator, digest
from hessian_spectra.results import WHICH, EigshResult, result_order

Which = Literal["LA", "SA", "LM", "BE"]
Method = Literal["lanczos", "block", "power", "rqi"]
Stop = Literal["residual", "relative_change"]

#: method name -> its solver; the first is the default
SOLVERS: dict[str, Solver] = {
    "lanczos": lanczos_driver.SOLVER,
    "block": block.SOLVER,
    "power": power.SOLVER,
    "rqi": rqi.SOLVER,
}
METHODS = tuple(SOLVERS)
STOPS = ("residual", "relative_change")


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
    callback: Callback | None = None,
    progress: bool = False,
    max_basis: int | None = None,
    stop: Stop = "residual",
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    basis_device: torch.device | str | None = None,
    basis_dtype: torch.dtype | None = None,
    max_memory: float | None = None,
) -> EigshResult:
    """k eigenpairs of a symmetric operator at one end of its spectrum, from products only.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> op = hs.DenseOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
        >>> top = hs.eigsh(op, k=3, seed=0)
        >>> top.eigenvalues.round(4).tolist(), bool(top.converged.all())
        ([100.0, 99.0, 98.0], True)

    A pair counts as converged when its residual ``||H v - theta v||`` is at most
    ``max(tol * |theta|, floor)``, where ``floor = eps(op.dtype) * max |theta|``:
    below the floor a residual is rounding noise, so float32 operators and
    eigenvalues near zero still stop; such pairs are flagged in
    ``precision_limited``. (Residuals computed from a product, as in power
    iteration, RQI and ``verify``, carry that product's rounding: their floor is
    ten times larger.) No residual or error estimate is reported below the
    rounding level ``10 eps max |theta|`` (eps of ``basis_dtype`` when it is
    coarser than the operator's): a smaller one is not a measurement (a Ritz
    value is no more accurate than a few eps ||H||), so it is reported at that
    level and the pair is flagged in ``precision_limited`` too. By the
    Krylov-Bogoliubov bound a converged Ritz value lies within its residual of
    an eigenvalue; the error estimate ``min(r, r^2/gap)`` is usually far
    smaller (it assumes no eigenvalue was missed). Check ``converged``: a run
    that ran out of products returns its best pairs flagged False, with a
    `ConvergenceWarning`, rather than raising.

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
        progress: show a progress bar counting products (up to `max_matvecs`
            when given; without an end when the run stops on convergence).
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
        max_memory: the most bytes the run's basis and vectors may take (see
            `eigsh_memory`). By default the need is checked against the memory
            available on each device (the CPU's ``MemAvailable``, a CUDA
            device's free memory) before anything is allocated; a call that
            would not fit raises `InsufficientMemoryError` naming the options
            that lower it.

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
    if method not in SOLVERS:
        raise ValueError(f"unknown method={method!r}; choose one of {', '.join(METHODS)}")
    solver = SOLVERS[method]
    if stop not in STOPS:
        raise ValueError(f"unknown stop={stop!r}; choose 'residual' or 'relative_change'")
    if stop not in solver.stops:
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
    bounded = max_matvecs is not None  # else the run stops on convergence (or the default cap)
    max_matvecs, basis_cap = _budget(method, k, n, block_size, max_matvecs, max_basis)
    V0 = check_v0(op, v0)
    if not solver.checkpoints and (
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
    basis_bytes, work_bytes = _memory(
        solver, n, k, basis_cap, block_size, max_matvecs, op.dtype, basis_dtype
    )
    check_memory(
        [
            (basis_device if basis_device is not None else op.device, basis_bytes),
            (op.device, work_bytes),
        ],
        what=f"eigsh(method={method!r}, k={k}) on an operator of size n={n}",
        lower=solver.lower_memory.format(max_basis=basis_cap, block_size=block_size),
        max_memory=max_memory,
    )
    problem = EigenProblem(
        op=op,
        k=k,
        which=which,
        tol=float(tol),
        max_matvecs=max_matvecs,
        max_basis=basis_cap,
        block_size=block_size,
        stop=stop,
        v0=V0,
        basis_device=basis_device,
        basis_dtype=basis_dtype,
    )
    ctx = RunContext(
        op,
        f"eigsh {method}",
        seed=seed,
        total=max_matvecs + (k if verify else 0) if bounded else None,
        progress=progress,
        callback=callback,
        checkpoint=checkpoint,
        kind=f"eigsh/{method}",
        fingerprint=lambda: {
            **op.fingerprint(),
            "k": k,
            "which": which,
            "tol": float(tol),
            "max_matvecs": max_matvecs,
            "max_basis": basis_cap,
            "v0": None if V0 is None else digest(V0),
            "basis_dtype": str(basis_dtype or op.dtype),
        },
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    with ctx:
        settings = ctx.settings(
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
        raw = solver.solve(problem, ctx)
        if raw.basis_bytes:
            settings["basis_bytes"] = raw.basis_bytes
            settings["basis_device"] = str(basis_device or op.device)
            settings["basis_dtype"] = str(basis_dtype or op.dtype)
        verified = bool(verify)
        if verify:
            _verify(problem, raw)
        ortho_dtype = op.dtype
        if basis_dtype is not None and torch.finfo(basis_dtype).eps > torch.finfo(op.dtype).eps:
            ortho_dtype = basis_dtype
        if raw.orthogonality_loss > orthogonality_threshold(ortho_dtype):
            raw.converged = np.zeros_like(raw.converged, dtype=bool)
        floor_reported(raw, rounding_level(raw, op.precision_dtype, basis_dtype))
        ctx.finish(f"{int(np.sum(raw.converged))}/{k} converged")
        perm = result_order(raw.values, which)
        seconds = ctx.seconds
        num_matvecs = ctx.matvecs
        history = ctx.history
    warn_unconverged(
        raw,
        f"eigsh(method={method!r}, k={k})",
        num_matvecs=num_matvecs,
        max_matvecs=max_matvecs,
        tol=float(tol),
        orthogonality_limit=orthogonality_threshold(ortho_dtype),
    )
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
        seed=ctx.seed,
        settings=settings,
    )


def _budget(
    method: str, k: int, n: int, block_size: int, max_matvecs: int | None, max_basis: int | None
) -> tuple[int, int]:
    """The product budget and the basis cap of a call (its defaults, and its refusals)."""
    solver = SOLVERS[method]
    need = solver.min_matvecs(k, n, block_size)
    if max_matvecs is None:
        max_matvecs = max(1000, 100 * k, need)
    elif int(max_matvecs) < need:
        raise ValueError(
            f"max_matvecs={max_matvecs} is too small for k={k} with method={method!r}: it "
            f"needs at least {need} products; raise max_matvecs or pass None"
        )
    if max_basis is None:
        return int(max_matvecs), solver.default_max_basis(k, n, block_size)
    floor_basis = solver.min_basis(k, block_size)
    if int(max_basis) < min(n, floor_basis):
        raise ValueError(
            f"max_basis={max_basis} leaves no room to restart with k={k}: pass at least "
            f"{min(n, floor_basis)} (or None for the default)"
        )
    return int(max_matvecs), min(n, int(max_basis))


def _memory(
    solver: Solver,
    n: int,
    k: int,
    basis_cap: int,
    block_size: int,
    max_matvecs: int,
    dtype: torch.dtype,
    basis_dtype: torch.dtype | None,
) -> tuple[int, int]:
    item = dtype_bytes(dtype)
    basis_item = dtype_bytes(basis_dtype) if basis_dtype is not None else item
    return solver.memory(n, k, basis_cap, block_size, max_matvecs, item, basis_item)


def eigsh_memory(
    n: int,
    k: int,
    *,
    method: Method = "lanczos",
    dtype: torch.dtype = torch.float32,
    block_size: int = 8,
    max_basis: int | None = None,
    basis_dtype: torch.dtype | None = None,
    max_matvecs: int | None = None,
) -> int:
    """Bytes `eigsh` allocates for its basis and vectors on an operator of size n.

    What ``eigsh(op, k, ...)`` with the same arguments checks before it starts
    (the basis, the vectors a restart keeps, the returned eigenvectors, the
    dense projected matrix); the operator's own memory (a model's activations)
    is not included. Use it to size a run before building the operator.

    Example:
        >>> from hessian_spectra.algorithms import eigsh_memory
        >>> b = eigsh_memory(270_000, 5000)  # a ResNet-20 sized Hessian, float32
        >>> b > 16e9  # the basis alone: 270000 x 15001 x 4 bytes
        True
        >>> b > eigsh_memory(270_000, 5000, max_basis=6000)
        True

    Args:
        n: the operator's size.
        k, method, block_size, max_basis, basis_dtype, max_matvecs: as for `eigsh`.
        dtype: the operator's dtype.

    Returns:
        The estimate in bytes, an upper bound of what the algorithm holds at once.
    """
    if n < 2 or not 1 <= k < n:
        raise ValueError(f"need 1 <= k < n, got k={k}, n={n}")
    if method not in SOLVERS:
        raise ValueError(f"unknown method={method!r}; choose one of {', '.join(METHODS)}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    block_size = int(min(block_size, n))
    budget, cap = _budget(method, int(k), int(n), block_size, max_matvecs, max_basis)
    basis, work = _memory(
        SOLVERS[method], int(n), int(k), cap, block_size, budget, dtype, basis_dtype
    )
    return basis + work


def _verify(p: EigenProblem, raw: RawPairs) -> None:
    """Replace the residuals by true ones (k products) and judge convergence on them."""
    res_true, _ = verify_pairs(p.op, raw.values, raw.vectors)
    want = p.tol * np.abs(raw.values)
    floor = raw.floor * (1.0 if raw.true_floor else TRUE_RESIDUAL_FLOOR)
    raw.residuals = res_true
    raw.floor, raw.true_floor = floor, True
    raw.converged = res_true <= np.maximum(want, floor)
    raw.precision_limited = want < floor
    raw.error_estimates = error_estimates(raw.values, res_true, raw.values)


__all__ = ["METHODS", "SOLVERS", "Callback", "Method", "Stop", "Which", "eigsh", "eigsh_memory"]
