"""The reference spectrum `compare-methods` measures every method against.

"exact": the dense Hessian from n HVPs (identity columns in blocks) and
`numpy.linalg.eigvalsh`, optionally kept in an .npz cache that is checked
against one HVP of the operator before reuse. "lanczos": a tight-tolerance
`hs.eigsh` run and a long Hutchinson trace, for operators too large to form.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hessian_spectra as hs
from hessian_spectra._atomic import atomic_open
from hessian_spectra.experiments.compare_methods.config import CompareConfig
from hessian_spectra.operators import LinearOperator

#: The largest operator whose dense Hessian an exact reference forms.
EXACT_MAX_N = 20000


def reference_spectrum(op: LinearOperator, cfg: CompareConfig) -> dict[str, Any]:
    """Reference eigenvalues (descending, top k or all) and trace.

    "exact" multiplies the identity in blocks (n HVPs) and calls
    `numpy.linalg.eigvalsh`; "lanczos" is `hs.eigsh` at `reference_tol` and a
    `reference_trace_probes`-probe Hutchinson trace.
    """
    t0 = time.perf_counter()
    if cfg.reference == "exact":
        if cfg.reference_cache:
            cached = _cached_reference(op, Path(cfg.reference_cache))
            if cached is not None:
                out = _exact_record(
                    cached["eigenvalues"], float(cached["trace"]), float(cached["asymmetry"]), cfg
                )
                # caches written before the diagonal was kept have none
                out["diagonal"] = cached.get("diagonal")
                out.update(num_matvecs=1, seconds=time.perf_counter() - t0)
                out["cache"] = cfg.reference_cache
                return out
        lam, diag, asym = _dense_spectrum(op)
        trace = float(np.sum(diag))
        if cfg.reference_cache:
            arrays: dict[str, Any] = {
                "eigenvalues": lam,
                "diagonal": diag,
                "trace": trace,
                "asymmetry": asym,
                "probe_hvp": _probe_hvp(op),
            }
            with atomic_open(Path(cfg.reference_cache), "wb") as fh:
                np.savez(fh, **arrays)
        out = _exact_record(lam, trace, asym, cfg)
        out["diagonal"] = diag
        out.update(num_matvecs=op.shape[0], seconds=time.perf_counter() - t0)
        return out
    if cfg.reference != "lanczos":
        raise ValueError(f"reference must be 'exact' or 'lanczos', got {cfg.reference!r}")
    return _lanczos_reference(op, cfg)


def _dense_spectrum(op: LinearOperator) -> tuple[np.ndarray, np.ndarray, float]:
    """All eigenvalues (descending), the diagonal and max |H - H^T| of the dense operator."""
    n = op.shape[0]
    if n > EXACT_MAX_N:
        raise ValueError(
            f"an exact reference needs the dense {n} x {n} Hessian; use --reference lanczos"
        )
    cols = []
    step = 256
    for j in range(0, n, step):
        E = torch.zeros((n, min(step, n - j)), dtype=op.dtype, device=op.device)
        E[j : j + E.shape[1]].fill_diagonal_(1.0)
        cols.append(op.matmat(E).detach().cpu().double().numpy())
    H = np.concatenate(cols, axis=1)
    asym = float(np.max(np.abs(H - H.T)))
    H = (H + H.T) / 2
    lam = np.sort(np.linalg.eigvalsh(H))[::-1]
    return lam, np.diag(H).copy(), asym


def _exact_record(lam: np.ndarray, trace: float, asym: float, cfg: CompareConfig) -> dict[str, Any]:
    return {
        "kind": "exact",
        "eigenvalues": lam,
        "top": _select(lam, cfg.k, cfg.which),
        "top_power": _select(lam, cfg.k, cfg.power_which),
        "min": float(lam[-1]),
        "max": float(lam[0]),
        "num_negative": int(np.sum(lam < 0)),
        "trace": trace,
        "trace_stderr": 0.0,
        "asymmetry": asym,
    }


def _lanczos_reference(op: LinearOperator, cfg: CompareConfig) -> dict[str, Any]:
    res = hs.eigsh(op, cfg.k, which=cfg.which, tol=cfg.reference_tol, seed=cfg.seed + 1000)
    out: dict[str, Any] = {
        "kind": "lanczos",
        "eigenvalues": None,
        "top": np.asarray(res.eigenvalues, dtype=np.float64),
        "tol": cfg.reference_tol,
        "converged": int(np.sum(res.converged)),
        "num_matvecs": res.num_matvecs,
        "seconds": res.seconds,
    }
    if cfg.power_which == cfg.which:
        out["top_power"] = out["top"]
    else:
        rp = hs.eigsh(op, cfg.k, which=cfg.power_which, tol=cfg.reference_tol, seed=cfg.seed + 1001)
        out["top_power"] = np.asarray(rp.eigenvalues, dtype=np.float64)
        out["num_matvecs"] += rp.num_matvecs
    if cfg.reference_trace_probes > 0:
        tr = hs.trace(
            op, method="hutchinson", num_matvecs=cfg.reference_trace_probes, seed=cfg.seed + 1000
        )
        out.update(trace=float(tr.estimate), trace_stderr=float(tr.stderr))
        out["num_matvecs"] += tr.num_matvecs
    else:
        out.update(trace=None, trace_stderr=None)
    return out


def _probe_hvp(op: LinearOperator) -> np.ndarray:
    """H v for a fixed seeded v: the fingerprint of an operator (one HVP)."""
    gen = torch.Generator().manual_seed(12345)
    v = torch.randn(op.shape[0], generator=gen, dtype=torch.float64)
    return op.matvec(v.to(op.dtype)).detach().cpu().double().numpy()


def _cached_reference(op: LinearOperator, path: Path) -> dict[str, Any] | None:
    """The exact reference stored at `path`, if it belongs to this operator; None if absent."""
    if not path.is_file():
        return None
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    hv = _probe_hvp(op)
    stored = data.get("probe_hvp")
    if (
        stored is None
        or stored.shape != hv.shape
        or not np.allclose(
            hv, stored, rtol=1e-8, atol=1e-12 * max(float(np.abs(stored).max()), 1e-300)
        )
    ):
        raise ValueError(
            f"the reference cache {path} was computed for another operator (model, data or "
            "dtype differ); delete it or pass another --reference-cache"
        )
    return data


def _select(lam_desc: np.ndarray, k: int, which: str) -> np.ndarray:
    if which == "LM":
        order = np.argsort(-np.abs(lam_desc), kind="stable")
        return lam_desc[order][:k]
    return lam_desc[:k]
