"""What `compare-methods` measures beyond the methods' own results.

- Hutchinson probes: Rademacher against Gaussian on the same operator, as
  per-probe variances of v^T H v (sampled, and exact where the dense reference
  gives the diagonal: 2 (||H||_F^2 - sum h_ii^2) and 2 ||H||_F^2).
- The time of a fixed number of Lanczos steps, to set beside a sketch of the
  same size (the study: "comparable, the sketch a little longer").
- The time of power iteration's deflation (two Gram-Schmidt passes against the
  k - 1 eigenvectors already found) against the time of one HVP.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

import hessian_spectra as hs
from hessian_spectra.operators import LinearOperator


def _probes(kind: str, n: int, m: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(n, m, generator=gen, dtype=torch.float64).to(dtype)
    signs = torch.randint(0, 2, (n, m), generator=gen, dtype=torch.int64)
    return (2.0 * signs - 1.0).to(dtype)


def probe_variances(
    op: LinearOperator,
    num_probes: int,
    seed: int,
    ref: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-probe variance of Hutchinson's v^T H v for Rademacher and Gaussian probes.

    `num_probes` products of each kind (`2 num_probes` HVPs), drawn from one
    seeded generator. Where `ref` holds the dense reference's eigenvalues and
    diagonal, the exact variances are recorded beside the sampled ones:
    2 (||H||_F^2 - sum_i h_ii^2) for Rademacher, 2 ||H||_F^2 for Gaussian
    (a Rademacher probe's squared entries are exactly 1, so the diagonal adds
    nothing to its variance).
    """
    n = op.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, Any] = {"num_probes": int(num_probes)}
    for kind in ("rademacher", "gaussian"):
        V = _probes(kind, n, num_probes, gen, op.dtype).to(op.device)
        HV = op.matmat(V)
        samples = (V.double() * HV.double()).sum(dim=0).cpu().numpy()
        out[kind] = {
            "estimate": float(np.mean(samples)),
            "sample_variance": float(np.var(samples, ddof=1)),
            "stderr": float(np.std(samples, ddof=1) / np.sqrt(num_probes)),
        }
    out["sampled_variance_ratio_gaussian_over_rademacher"] = (
        out["gaussian"]["sample_variance"] / out["rademacher"]["sample_variance"]
    )
    lam = None if ref is None else ref.get("eigenvalues")
    diag = None if ref is None else ref.get("diagonal")
    if lam is not None and diag is not None:
        fro2 = float(np.sum(np.asarray(lam, dtype=np.float64) ** 2))
        diag2 = float(np.sum(np.asarray(diag, dtype=np.float64) ** 2))
        out["exact"] = {
            "frobenius_squared": fro2,
            "diagonal_squared": diag2,
            "rademacher_variance": 2.0 * (fro2 - diag2),
            "gaussian_variance": 2.0 * fro2,
            "variance_ratio_gaussian_over_rademacher": fro2 / (fro2 - diag2),
            "diagonal_share_of_frobenius": diag2 / fro2,
        }
    return out


def lanczos_steps_seconds(op: LinearOperator, num_steps: int, seed: int) -> dict[str, Any]:
    """Seconds of `num_steps` Lanczos steps with full reorthogonalization (no stopping test)."""
    gen = torch.Generator().manual_seed(int(seed))
    v0 = torch.randn(op.shape[0], generator=gen, dtype=torch.float64).to(op.dtype)
    t0 = time.perf_counter()
    hs.lanczos(op, v0.to(op.device), num_steps, reorth="full")
    sec = time.perf_counter() - t0
    return {"num_steps": int(num_steps), "seconds": sec, "seconds_per_step": sec / num_steps}


def deflation_seconds(
    op: LinearOperator, num_vectors: int, seconds_per_hvp: float, repeats: int = 50
) -> dict[str, Any]:
    """Seconds of one deflation of power iteration against `num_vectors` eigenvectors.

    Power iteration (PyHessian's and ours) orthogonalizes its vector against
    every eigenvector already found before each product; with k wanted, the
    last eigenvalue pays two Gram-Schmidt passes against k - 1 vectors per
    HVP. Timed on random orthonormal vectors of the operator's size and dtype.
    """
    n = op.shape[0]
    gen = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(n, max(num_vectors, 1), generator=gen, dtype=torch.float64))[0]
    U = U.to(op.dtype)
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(op.dtype)
    t0 = time.perf_counter()
    for _ in range(repeats):
        w = v
        for _ in range(2):
            w = w - U @ (U.T @ w)
    sec = (time.perf_counter() - t0) / repeats
    return {
        "num_vectors": int(num_vectors),
        "seconds": sec,
        "seconds_per_hvp": float(seconds_per_hvp),
        "fraction_of_hvp": sec / seconds_per_hvp,
    }
