"""The measurements of `compare-methods`: methods, ghosts, sketches, trace, density.

Every number comes from the library's public calls (`hs.eigsh`, `hs.lanczos`
through `lanczos_ghosts`, `hs.sketch`, `hs.trace`, `hs.density`); this module
runs them on one operator and compares their outputs with the reference.
`measure` runs them all and returns the JSON-ready record with the raw results
the figures draw.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import hessian_spectra as hs
from hessian_spectra import history
from hessian_spectra.algorithms import BOUND_STEPS
from hessian_spectra.algorithms.sketch import SHIFTED_NYSTROM_WARNING
from hessian_spectra.experiments._io import machine_info
from hessian_spectra.experiments.compare_methods.claims import evaluate_claims
from hessian_spectra.experiments.compare_methods.config import CompareConfig
from hessian_spectra.experiments.compare_methods.costs import (
    deflation_seconds,
    lanczos_steps_seconds,
    probe_variances,
)
from hessian_spectra.experiments.compare_methods.reference import reference_spectrum
from hessian_spectra.experiments.ghosts import GhostCount, lanczos_ghosts
from hessian_spectra.operators import LinearOperator
from hessian_spectra.plots import eig_history

# --------------------------------------------------------------------------- eigenvalues


def relative_errors(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(value - reference) / |reference|, elementwise over the common length."""
    m = min(len(values), len(reference))
    v = np.asarray(values, dtype=np.float64)[:m]
    r = np.asarray(reference, dtype=np.float64)[:m]
    return (v - r) / np.abs(r)


def converged_at(result: Any, tol: float) -> list[int | None]:
    """HVPs after which each wanted pair first met `residual <= tol * |theta|`.

    Read from the eigsh history (Ritz values and residual estimates per step);
    None where a pair never met it in the recorded history.
    """
    mv, est, res = eig_history(result)
    k = len(result.eigenvalues)
    out: list[int | None] = [None] * k
    for m, e, r in zip(mv, est, res, strict=True):
        for i in range(min(k, e.size)):
            if out[i] is None and np.isfinite(r[i]) and r[i] <= tol * abs(e[i]):
                out[i] = int(m)
    return out


def power_per_eigenvalue(result: Any) -> list[dict[str, Any]]:
    """HVPs and seconds spent on each eigenvalue by deflated power iteration.

    Uses the history's per-record `history.PAIR` (the index of the eigenvalue
    being iterated); `MATVECS` and `SECONDS` in the records are cumulative, so the
    spectral-bound products taken before the first record count towards pair 1.
    """
    hist = list(result.history)
    if not hist or history.PAIR not in hist[0]:
        raise ValueError(
            "the power-iteration history does not say which eigenvalue each record belongs to"
        )
    per: dict[int, dict[str, Any]] = {}
    prev_mv, prev_s = 0, 0.0
    for rec in hist:
        i = int(rec[history.PAIR])
        d = per.setdefault(i, {"index": i + 1, "matvecs": 0, "seconds": 0.0})
        mv, sec = int(rec[history.MATVECS]), float(rec[history.SECONDS])
        d["matvecs"] += mv - prev_mv
        d["seconds"] += sec - prev_s
        prev_mv, prev_s = mv, sec
    return [per[i] for i in sorted(per)]


def eig_summary(result: Any, reference: np.ndarray, tol: float | None) -> dict[str, Any]:
    """Eigenvalues, cost and errors of one eigsh run against the reference top k.

    `relative_errors` compare in the order returned; `..._sorted` after sorting
    both by the result's order (descending, by magnitude for "LM"), so that a
    list returned out of order is not charged twice. `out_of_order` counts
    neighbours in the wrong order.
    """
    lam = np.asarray(result.eigenvalues, dtype=np.float64)
    key = np.abs if result.which == "LM" else (lambda v: v)
    err = relative_errors(lam, reference)
    sorted_err = relative_errors(
        lam[np.argsort(-key(lam), kind="stable")],
        np.asarray(reference)[np.argsort(-key(np.asarray(reference)), kind="stable")],
    )
    out: dict[str, Any] = {
        "eigenvalues": lam,
        "num_matvecs": int(result.num_matvecs),
        "seconds": float(result.seconds),
        "seconds_per_matvec": float(result.seconds) / max(int(result.num_matvecs), 1),
        "converged": int(np.sum(np.asarray(result.converged, dtype=bool))),
        "relative_errors": err,
        "max_abs_relative_error": float(np.max(np.abs(err))),
        "max_abs_relative_error_sorted": float(np.max(np.abs(sorted_err))),
        "out_of_order": int(np.sum(np.diff(key(lam)) > 0)),
        "residuals": np.asarray(result.residuals, dtype=np.float64),
        "seed": result.seed,
    }
    if tol is not None:
        out["converged_at"] = converged_at(result, tol)
    return out


# --------------------------------------------------------------------------- sketch, trace, density


def sketch_errors(
    op: LinearOperator,
    reference: np.ndarray,
    cfg: CompareConfig,
    reference_trace: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Top-k percent errors of each sketch kind and size (the study's Figure 19).

    With the reference trace known, Rademacher entries also carry the upward
    shift the study notes predict, tr(H less its top k) / (d lambda_i), in percent.

    Returns:
        (a JSON-ready entry per "kind:size", the sketch results by the same keys).
    """
    out: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for kind in cfg.sketch_kinds:
        for d in cfg.sketch_sizes:
            with warnings.catch_warnings():
                # the one-pass Nystrom sketch of a shifted Hessian is measured here on
                # purpose; its errors are what this experiment reports
                warnings.filterwarnings("ignore", message=SHIFTED_NYSTROM_WARNING)
                sk = hs.sketch(op, d, kind=kind, seed=cfg.seed)
            lam = np.asarray(sk.eigenvalues, dtype=np.float64)
            err = 100.0 * relative_errors(lam, reference)
            key = f"{kind}:{d}"
            results[key] = sk
            entry: dict[str, Any] = {
                "kind": kind,
                "size": d,
                "eigenvalues": lam,
                "percent_errors": err,
                "mean_percent_error": float(np.mean(err)),
                "median_percent_error": float(np.median(err)),
                "max_abs_percent_error": float(np.max(np.abs(err))),
                "min_percent_error": float(np.min(err)),
                "max_percent_error": float(np.max(err)),
                "trace": float(sk.trace),
                "num_matvecs": int(sk.num_matvecs),
                "seconds": float(sk.seconds),
                "num_negative": int(np.sum(lam < 0)),
            }
            if kind == "rademacher" and reference_trace is not None:
                rest = reference_trace - float(np.sum(reference))
                pred = 100.0 * rest / (d * np.asarray(reference, dtype=np.float64))
                entry["predicted_shift_percent"] = pred
                entry["mean_predicted_shift_percent"] = float(np.mean(pred))
            if kind == "rademacher" and sk.matrix is not None:
                # d times the diagonal are the d Hutchinson samples of the probes
                samples = d * np.diag(np.asarray(sk.matrix, dtype=np.float64))
                entry["trace_stderr"] = float(np.std(samples, ddof=1) / np.sqrt(d))
            out[key] = entry
    return out, results


def pyhessian_trace_rule(samples: np.ndarray, tol: float = 1e-3) -> dict[str, Any]:
    """Replay PyHessian's `trace()` stopping rule on a sequence of Hutchinson samples.

    PyHessian stops at the first probe whose running mean differs from the
    previous running mean by less than `tol` relative (|m_i - m_{i-1}| /
    (|m_{i-1}| + 1e-6) < tol): a test of two consecutive means, not of the
    estimator's variance.
    """
    s = np.asarray(samples, dtype=np.float64)
    means = np.cumsum(s) / np.arange(1, s.size + 1)
    for i in range(1, s.size):
        if abs(means[i] - means[i - 1]) / (abs(means[i - 1]) + 1e-6) < tol:
            se = float(np.std(s[: i + 1], ddof=1) / np.sqrt(i + 1))
            return {"stopped": True, "probes": i + 1, "estimate": float(means[i]), "stderr": se}
    return {"stopped": False, "probes": int(s.size), "estimate": float(means[-1])}


def trace_estimates(
    op: LinearOperator, sketches: Mapping[str, Any], cfg: CompareConfig
) -> dict[str, Any]:
    """Trace from the Rademacher sketches, Hutchinson, Hutch++ and XTrace at one budget."""
    out: dict[str, Any] = {}
    for entry in sketches.values():
        if entry["kind"] == "rademacher":
            out[f"sketch d={entry['size']}"] = {
                "estimate": entry["trace"],
                "stderr": entry.get("trace_stderr"),
                "num_matvecs": entry["num_matvecs"],
            }
    for method in ("hutchinson", "hutch++", "xtrace"):
        tr = hs.trace(op, method=method, num_matvecs=cfg.trace_matvecs, seed=cfg.seed)
        out[method] = {
            "estimate": float(tr.estimate),
            "stderr": float(tr.stderr),
            "num_matvecs": int(tr.num_matvecs),
            "seconds": float(tr.seconds),
        }
    # PyHessian's rule replayed on a longer run of Hutchinson samples (its cap: 100 probes)
    long = hs.trace(op, method="hutchinson", num_matvecs=100, seed=cfg.seed + 1)
    rule = pyhessian_trace_rule(np.asarray(long.samples))
    rule["note"] = "PyHessian's relative-change rule (tol 1e-3) replayed on 100 Hutchinson samples"
    out["pyhessian_rule"] = rule
    out["running_mean"] = (np.cumsum(long.samples) / np.arange(1, len(long.samples) + 1)).tolist()
    return out


def density_summary(
    op: LinearOperator, ref: Mapping[str, Any], cfg: CompareConfig
) -> tuple[Any, dict[str, Any]]:
    """SLQ density, and its CDF at a few points beside the exact one where known."""
    den = hs.density(op, num_steps=cfg.density_steps, num_probes=cfg.density_probes, seed=cfg.seed)
    out: dict[str, Any] = {
        "num_matvecs": int(den.num_matvecs),
        "seconds": float(den.seconds),
        "nodes": np.asarray(den.nodes, dtype=np.float64).ravel(),
        "weights": np.asarray(den.weights, dtype=np.float64).ravel(),
    }
    top = float(np.max(out["nodes"]))
    points = {"0": 0.0, "0.01 top": 0.01 * top, "0.1 top": 0.1 * top, "-0.01 top": -0.01 * top}
    out["cdf_points"] = {name: {"x": x, "slq": float(den.cdf(x))} for name, x in points.items()}
    lam = ref.get("eigenvalues")
    if lam is not None:
        lam = np.asarray(lam)
        for name, x in points.items():
            out["cdf_points"][name]["exact"] = float(np.mean(lam <= x))
    return den, out


# --------------------------------------------------------------------------- all of them


@dataclass(frozen=True)
class Measurements:
    """What `measure` returns: the JSON-ready record and the raw results the figures draw.

    Attributes:
        record: everything measured, with the claims checked on it.
        reference: the full reference (with all eigenvalues where exact).
        top: the reference top k in the order `cfg.which` asks for.
        power, lanczos, block: the three `hs.eigsh` results.
        plain: the plain-Lanczos ghost count.
        sketches: the `hs.sketch` results by "kind:size".
        density: the `hs.density` result.
    """

    record: dict[str, Any]
    reference: dict[str, Any]
    top: np.ndarray
    power: Any
    lanczos: Any
    block: Any
    plain: GhostCount
    sketches: dict[str, Any]
    density: Any


def measure(
    op: LinearOperator, cfg: CompareConfig, problem: Mapping[str, Any] | None = None
) -> Measurements:
    """Run every comparison of `compare-methods` on `op` and check the claims on the numbers."""
    if cfg.k < 1 or cfg.k >= op.shape[0]:
        raise ValueError(f"k must be in [1, n-1] = [1, {op.shape[0] - 1}], got {cfg.k}")
    if cfg.which not in ("LA", "LM"):
        raise ValueError(f"which must be 'LA' or 'LM', got {cfg.which!r}")
    t_start = time.perf_counter()
    ref = reference_spectrum(op, cfg)
    top = np.asarray(ref["top"], dtype=np.float64)
    top_power = np.asarray(ref["top_power"], dtype=np.float64)
    record: dict[str, Any] = {
        "experiment": "compare-methods",
        "config": asdict(cfg),
        "problem": dict(problem or {"operator": repr(op)}),
        "n": op.shape[0],
        "machine": machine_info(),
        "reference": {k: v for k, v in ref.items() if k not in ("eigenvalues", "diagonal")},
    }
    # PyHessian's budget per eigenvalue; "LA" first spends the spectral bound's HVPs
    bound = 0 if cfg.power_which == "LM" else BOUND_STEPS
    power = hs.eigsh(
        op,
        cfg.k,
        which=cfg.power_which,
        method="power",
        stop="relative_change",
        tol=cfg.power_tol,
        max_matvecs=cfg.power_max_iter * cfg.k + bound,
        seed=cfg.seed,
    )
    lan = hs.eigsh(op, cfg.k, which=cfg.which, method="lanczos", tol=cfg.tol, seed=cfg.seed)
    blk = hs.eigsh(
        op,
        cfg.k,
        which=cfg.which,
        method="block",
        tol=cfg.tol,
        block_size=cfg.block_size,
        seed=cfg.seed,
    )
    record["methods"] = {
        "power": {
            **eig_summary(power, top_power, None),
            "which": cfg.power_which,
            "per_eigenvalue": power_per_eigenvalue(power),
        },
        "lanczos": {**eig_summary(lan, top, cfg.tol), "which": cfg.which},
        "block": {**eig_summary(blk, top, cfg.tol), "which": cfg.which},
    }
    ghosts = {
        reorth: lanczos_ghosts(
            op,
            top,
            num_steps=cfg.plain_steps,
            k=cfg.k,
            reorth=reorth,
            rtol=cfg.ghost_rtol,
            seed=cfg.seed,
        )
        for reorth in ("none", "full")
    }
    record["ghosts"] = {
        reorth: {k: v for k, v in g.to_dict().items() if k != "history"}
        for reorth, g in ghosts.items()
    }
    sk, sk_results = sketch_errors(op, top, cfg, ref.get("trace"))
    record["sketches"] = sk
    record["trace"] = trace_estimates(op, sk, cfg)
    if cfg.probe_compare > 0:
        record["probes"] = probe_variances(op, cfg.probe_compare, cfg.seed + 2, ref)
    d_small = min(cfg.sketch_sizes)
    record["timing"] = {
        "lanczos_steps": lanczos_steps_seconds(op, d_small, cfg.seed),
        "deflation": deflation_seconds(
            op, cfg.k - 1, record["methods"]["power"]["seconds_per_matvec"]
        ),
    }
    den, record["density"] = density_summary(op, ref, cfg)
    record["claims"] = [c.to_dict() for c in evaluate_claims(record, cfg)]
    record["seconds"] = time.perf_counter() - t_start
    return Measurements(
        record=record,
        reference=ref,
        top=top,
        power=power,
        lanczos=lan,
        block=blk,
        plain=ghosts["none"],
        sketches=sk_results,
        density=den,
    )
