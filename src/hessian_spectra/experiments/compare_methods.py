"""The study's network-Hessian experiments (its Figures 2-6 and 19), with our methods beside.

On one model and data set: PyHessian-rule power iteration vs Lanczos vs block
Lanczos for the top k with their histories (Figures 3-5), plain Lanczos
without reorthogonalization and its ghost copies (the study's "45 steps"),
sketch errors at sizes 50 and 100 (Figure 19), the sketch's cumulative
spectrum (Figure 6), trace estimates with error bars (sketch, Hutchinson,
Hutch++, XTrace, and PyHessian's stopping rule replayed on the Hutchinson
samples), and the spectral density (Figure 2). Default problem: `digits_cnn`
trained by `train_digits_cnn(seed=0)` on the digits, whose dense Hessian is
small enough to give exact reference eigenvalues. With `--model resnet20
--checkpoint FILE --data cifar10:PATH` it runs on the study's network; the
reference is then a tight-tolerance Lanczos run.

All numerics are the library's (`hs.eigsh`, `hs.lanczos`, `hs.sketch`,
`hs.trace`, `hs.density`); this module builds the problem, calls them, compares
their outputs with the reference and draws them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import hessian_spectra as hs
from hessian_spectra.experiments._io import Claim, machine_info, save_figure, write_json
from hessian_spectra.experiments.ghosts import GhostCount, lanczos_ghosts

if TYPE_CHECKING:
    from hessian_spectra.operators.base import LinearOperator

MODELS = ("digits_cnn", "resnet20")


@dataclass(frozen=True)
class CompareConfig:
    """Settings of `compare-methods` (defaults: the study's choices where it made any).

    Attributes:
        model: "digits_cnn" or "resnet20".
        data: "digits" or "cifar10:PATH".
        checkpoint: a state-dict file for the model (required for resnet20).
        num_samples: data points in the loss (None: all of digits; 128 of CIFAR-10).
        batch_size: samples per batch of the Hessian's data pass.
        dtype: "float64" or "float32" (the operator's precision).
        train_steps: Adam steps of `train_digits_cnn` (digits_cnn only).
        k: eigenvalues wanted (the study: 20).
        which: "LA" (largest) or "LM" (largest magnitude; for indefinite nets).
        tol: residual tolerance of Lanczos and block Lanczos.
        power_tol: PyHessian's relative-change tolerance (its default 1e-3).
        power_max_iter: power iterations allowed per eigenvalue (PyHessian's maxIter, 100).
        power_which: the end power iteration targets; "LM" is what PyHessian's
            unshifted iteration finds.
        block_size: block Lanczos block size.
        plain_steps: steps of plain Lanczos for the ghost count (the study: 45).
        ghost_rtol: relative distance under which a Ritz value is a copy.
        sketch_sizes: sketch sizes (the study: 50 and 100).
        sketch_kinds: sketch kinds.
        trace_matvecs: HVP budget of each trace estimator.
        reference: "exact" (dense Hessian, small models) or "lanczos".
        reference_tol: tolerance of the reference Lanczos run.
        reference_trace_probes: Hutchinson probes of the reference trace when not exact.
        reference_cache: an .npz file keeping the exact reference between runs
            (checked against one HVP of the current operator before use).
        density_steps: Lanczos steps of the density.
        density_probes: probes of the density.
        seed: seed of every random draw.
    """

    model: str = "digits_cnn"
    data: str = "digits"
    checkpoint: str | None = None
    num_samples: int | None = None
    batch_size: int = 2048
    dtype: str = "float64"
    train_steps: int = 200
    k: int = 20
    which: str = "LA"
    tol: float = 1e-4
    power_tol: float = 1e-3
    power_max_iter: int = 100
    power_which: str = "LM"
    block_size: int = 8
    plain_steps: int = 45
    ghost_rtol: float = 1e-3
    sketch_sizes: tuple[int, ...] = (50, 100)
    sketch_kinds: tuple[str, ...] = ("rademacher", "rangefinder", "nystrom")
    trace_matvecs: int = 50
    reference: str = "exact"
    reference_tol: float = 1e-9
    reference_trace_probes: int = 1000
    reference_cache: str | None = None
    density_steps: int = 100
    density_probes: int = 1
    seed: int = 0


# --------------------------------------------------------------------------- problem


def _dtype(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {name!r}")
    return torch.float64 if name == "float64" else torch.float32


def _load_state(model: torch.nn.Module, path: str) -> None:
    """Load a state dict saved by `torch.save` (bare, or under "state_dict"/"model")."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {file} does not exist; pass the path of a state dict")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise ValueError(f"{file} holds a {type(state).__name__}, not a state dict")
    # checkpoints saved from nn.DataParallel prefix every name with "module."
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not match
        raise ValueError(f"{file} does not fit the model: {exc}; check --model") from exc
    if missing or unexpected:
        raise ValueError(
            f"{file} does not fit the model: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}; check --model"
        )


def build_problem(cfg: CompareConfig) -> tuple[LinearOperator, dict[str, Any]]:
    """The Hessian operator of the configured model and data, and a description of it."""
    from hessian_spectra import data as hdata
    from hessian_spectra import models

    dtype = _dtype(cfg.dtype)
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; choose from {', '.join(MODELS)}")
    desc: dict[str, Any] = {"model": cfg.model, "data": cfg.data, "dtype": cfg.dtype}
    if cfg.model == "digits_cnn":
        if cfg.data != "digits":
            raise ValueError("digits_cnn takes --data digits")
        if cfg.checkpoint is not None:
            model = models.digits_cnn(seed=0)
            _load_state(model, cfg.checkpoint)
            desc["checkpoint"] = cfg.checkpoint
        else:
            model = models.train_digits_cnn(seed=0, steps=cfg.train_steps)
            desc["trained"] = f"train_digits_cnn(seed=0, steps={cfg.train_steps})"
        x, y = hdata.digits()
    else:
        if not cfg.data.startswith("cifar10:"):
            raise ValueError("resnet20 takes --data cifar10:PATH (the extracted CIFAR-10 folder)")
        if cfg.checkpoint is None:
            raise ValueError(
                "resnet20 needs --checkpoint FILE (a trained state dict); the study's numbers "
                "come from a trained network"
            )
        model = models.resnet20(seed=0)  # type: ignore[assignment]
        _load_state(model, cfg.checkpoint)
        desc["checkpoint"] = cfg.checkpoint
        ds = hdata.cifar10(Path(cfg.data.split(":", 1)[1]).expanduser(), train=True)
        x, y = ds.tensors
    num = cfg.num_samples
    if num is None:
        num = x.shape[0] if cfg.model == "digits_cnn" else 128
    if not 1 <= num <= x.shape[0]:
        raise ValueError(f"num_samples must be in [1, {x.shape[0]}], got {num}")
    x, y = x[:num].to(dtype), y[:num]
    model = model.to(dtype).eval()
    batches = [
        (x[i : i + cfg.batch_size], y[i : i + cfg.batch_size])
        for i in range(0, num, cfg.batch_size)
    ]
    data: Any = batches[0] if len(batches) == 1 else batches
    op = hs.HessianOperator(model, torch.nn.CrossEntropyLoss(), data)
    desc.update(num_samples=num, num_batches=len(batches), num_parameters=op.shape[0])
    return op, desc


# --------------------------------------------------------------------------- pieces


def reference_spectrum(op: LinearOperator, cfg: CompareConfig) -> dict[str, Any]:
    """Reference eigenvalues (descending, top k or all) and trace.

    "exact" multiplies the identity in blocks (n HVPs) and calls
    `numpy.linalg.eigvalsh`; "lanczos" is `hs.eigsh` at `reference_tol` and a
    `reference_trace_probes`-probe Hutchinson trace.
    """
    n = op.shape[0]
    t0 = time.perf_counter()
    if cfg.reference == "exact" and cfg.reference_cache:
        cached = _cached_reference(op, Path(cfg.reference_cache))
        if cached is not None:
            lam = cached["eigenvalues"]
            return {
                "kind": "exact",
                "eigenvalues": lam,
                "top": _select(lam, cfg.k, cfg.which),
                "top_power": _select(lam, cfg.k, cfg.power_which),
                "min": float(lam[-1]),
                "max": float(lam[0]),
                "num_negative": int(np.sum(lam < 0)),
                "trace": float(cached["trace"]),
                "trace_stderr": 0.0,
                "asymmetry": float(cached["asymmetry"]),
                "num_matvecs": 1,
                "seconds": time.perf_counter() - t0,
                "cache": cfg.reference_cache,
            }
    if cfg.reference == "exact":
        if n > 20000:
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
        if cfg.reference_cache:
            path = Path(cfg.reference_cache)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                path,
                eigenvalues=lam,
                trace=np.trace(H),
                asymmetry=asym,
                probe_hvp=_probe_hvp(op),
            )
        return {
            "kind": "exact",
            "eigenvalues": lam,
            "top": _select(lam, cfg.k, cfg.which),
            "top_power": _select(lam, cfg.k, cfg.power_which),
            "min": float(lam[-1]),
            "max": float(lam[0]),
            "num_negative": int(np.sum(lam < 0)),
            "trace": float(np.trace(H)),
            "trace_stderr": 0.0,
            "asymmetry": asym,
            "num_matvecs": n,
            "seconds": time.perf_counter() - t0,
        }
    if cfg.reference != "lanczos":
        raise ValueError(f"reference must be 'exact' or 'lanczos', got {cfg.reference!r}")
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
    from hessian_spectra.plots import eig_history

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

    Uses the history's per-record `pair` (the index of the eigenvalue being
    iterated); `matvecs` and `seconds` in the records are cumulative, so the
    spectral-bound products taken before the first record count towards pair 1.
    """
    hist = list(result.history)
    if not hist or "pair" not in hist[0]:
        raise ValueError(
            "the power-iteration history does not say which eigenvalue each record belongs to"
        )
    key = "pair"
    per: dict[int, dict[str, Any]] = {}
    prev_mv, prev_s = 0, 0.0
    for rec in hist:
        i = int(rec[key])
        d = per.setdefault(i, {"index": i + 1, "matvecs": 0, "seconds": 0.0})
        d["matvecs"] += int(rec["matvecs"]) - prev_mv
        d["seconds"] += float(rec["seconds"]) - prev_s
        prev_mv, prev_s = int(rec["matvecs"]), float(rec["seconds"])
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


def sketch_errors(
    op: LinearOperator,
    reference: np.ndarray,
    cfg: CompareConfig,
    reference_trace: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Top-k percent errors of each sketch kind and size (the study's Figure 19).

    With the reference trace known, Rademacher entries also carry the upward
    shift the study notes predict, tr(H less its top k) / (d lambda_i), in percent.
    """
    out: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for kind in cfg.sketch_kinds:
        for d in cfg.sketch_sizes:
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
    hutch = None
    for method in ("hutchinson", "hutch++", "xtrace"):
        tr = hs.trace(op, method=method, num_matvecs=cfg.trace_matvecs, seed=cfg.seed)
        out[method] = {
            "estimate": float(tr.estimate),
            "stderr": float(tr.stderr),
            "num_matvecs": int(tr.num_matvecs),
            "seconds": float(tr.seconds),
        }
        if method == "hutchinson":
            hutch = tr
    # PyHessian's rule replayed on a longer run of Hutchinson samples (its cap: 100 probes)
    long = hs.trace(op, method="hutchinson", num_matvecs=100, seed=cfg.seed + 1)
    rule = pyhessian_trace_rule(np.asarray(long.samples))
    rule["note"] = "PyHessian's relative-change rule (tol 1e-3) replayed on 100 Hutchinson samples"
    out["pyhessian_rule"] = rule
    out["running_mean"] = (np.cumsum(long.samples) / np.arange(1, len(long.samples) + 1)).tolist()
    assert hutch is not None
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


# --------------------------------------------------------------------------- claims

#: "Minimal" gain from doubling the sketch (the study's words): mean |error|
#: falling by less than this fraction.
MINIMAL_GAIN = 0.25
#: The relative trace error granted to PyHessian's rule (ten times its tol).
TRACE_RULE_RTOL = 1e-2


def evaluate_claims(record: Mapping[str, Any], cfg: CompareConfig) -> list[Claim]:
    """The study's claims about its Figures 3-6 and 19, and ours, checked on this run."""
    claims: list[Claim] = []
    m = record["methods"]
    g = record["ghosts"]["none"]
    claims.append(
        Claim(
            key="plain_lanczos_gives_k_distinct",
            source="study",
            statement=f"{cfg.plain_steps} plain Lanczos steps give the top {cfg.k} eigenvalues "
            "(each once)",
            holds=bool(g["distinct"] == cfg.k and g["ghosts"] == 0),
            evidence={
                "distinct": g["distinct"],
                "top_copies": g["top_copies"],
                "ghosts": g["ghosts"],
                "unmatched": g["unmatched"],
                "copies": g["copies"],
                "full_reorth_distinct": record["ghosts"]["full"]["distinct"],
            },
        )
    )
    claims.append(
        Claim(
            key="lanczos_fewer_hvps_than_power",
            source="study",
            statement="Lanczos needs far fewer HVPs than power iteration for the top k",
            holds=bool(m["lanczos"]["num_matvecs"] < m["power"]["num_matvecs"]),
            evidence={
                name: {
                    "num_matvecs": v["num_matvecs"],
                    "max_abs_relative_error_sorted": v["max_abs_relative_error_sorted"],
                }
                for name, v in m.items()
            },
        )
    )
    p = m["power"]
    claims.append(
        Claim(
            key="power_rule_accurate",
            source="study",
            statement=f"power iteration with PyHessian's rule (tol {cfg.power_tol}) gives "
            "eigenvalues accurate to that tolerance, in order (the study used them as truth)",
            holds=bool(
                p["max_abs_relative_error_sorted"] <= cfg.power_tol and p["out_of_order"] == 0
            ),
            evidence={
                "max_abs_relative_error_sorted": p["max_abs_relative_error_sorted"],
                "out_of_order": p["out_of_order"],
                "num_matvecs": p["num_matvecs"],
            },
        )
    )
    rad = {e["size"]: e for e in record["sketches"].values() if e["kind"] == "rademacher"}
    if rad:
        claims.append(
            Claim(
                key="sketch_overestimates_top_k",
                source="study",
                statement=f"the Rademacher sketch over-estimates every one of the top {cfg.k}",
                holds=bool(all(e["min_percent_error"] > 0 for e in rad.values())),
                evidence={
                    str(d): {"min": e["min_percent_error"], "max": e["max_percent_error"]}
                    for d, e in rad.items()
                },
            )
        )
    if len(rad) >= 2:
        small, large = min(rad), max(rad)
        e_small = float(np.mean(np.abs(rad[small]["percent_errors"])))
        e_large = float(np.mean(np.abs(rad[large]["percent_errors"])))
        claims.append(
            Claim(
                key="sketch_doubling_minimal_gain",
                source="study",
                statement=f"a larger Rademacher sketch ({large} vs {small}) gains little: mean "
                f"|error| falls by less than {100 * MINIMAL_GAIN:.0f}%",
                holds=bool(e_large > (1 - MINIMAL_GAIN) * e_small),
                evidence={"mean_abs_percent_error": {str(small): e_small, str(large): e_large}},
            )
        )
    tr = record["trace"]
    same = f"sketch d={cfg.trace_matvecs}"
    if same in tr and tr[same].get("stderr") is not None:
        others = {k: tr[k]["stderr"] for k in ("hutchinson", "hutch++", "xtrace")}
        claims.append(
            Claim(
                key="sketch_trace_optimal",
                source="study",
                statement="the sketch's trace is optimally accurate: its standard error is the "
                f"smallest of the estimators at {cfg.trace_matvecs} HVPs",
                holds=bool(tr[same]["stderr"] <= min(others.values())),
                evidence={"sketch_stderr": tr[same]["stderr"], "others_stderr": others},
            )
        )
    ref_tr = record["reference"].get("trace")
    rule = tr["pyhessian_rule"]
    if ref_tr is not None:
        err = abs(rule["estimate"] - ref_tr) / abs(ref_tr)
        claims.append(
            Claim(
                key="pyhessian_trace_rule_accurate",
                source="study",
                statement="Hutchinson stopped by PyHessian's relative-change rule is within "
                f"{100 * TRACE_RULE_RTOL:g}% of the trace",
                holds=bool(rule.get("stopped", False) and err <= TRACE_RULE_RTOL),
                evidence={**rule, "reference": ref_tr, "relative_error": err},
            )
        )
    for kind in ("rangefinder", "nystrom"):
        es = [e for e in record["sketches"].values() if e["kind"] == kind]
        if es:
            worst = max(e["max_percent_error"] for e in es)
            claims.append(
                Claim(
                    key=f"{kind}_never_overestimates",
                    source="library",
                    statement=f"no {kind} eigenvalue exceeds the reference (beyond 1e-6 relative)",
                    holds=bool(worst <= 1e-4),
                    evidence={"max_percent_error": worst},
                )
            )
    return claims


# --------------------------------------------------------------------------- figures


def _style() -> Any:
    import matplotlib as mpl

    from hessian_spectra.plots import STYLE

    return mpl.rc_context(STYLE)  # type: ignore[arg-type]


def _fig(width: float, height: float, **kw: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**kw) if kw else fig.subplots()


def _symlog_x(ax: Any, linthresh: float, span: float) -> None:
    """A symmetric-log x axis with a labelled tick every other decade (no crowding at 0)."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("symlog", linthresh=linthresh)
    lo, hi = int(np.floor(np.log10(linthresh))), int(np.ceil(np.log10(span)))
    decades = [10.0**e for e in range(hi, lo - 1, -2)]
    ticks = sorted([-x for x in decades] + [0.0] + decades)
    ax.set_xticks(ticks, ["0" if t == 0 else f"{t:.0e}" for t in ticks], fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())


def figure3(record: Mapping[str, Any], title: str, out: Path) -> Path:
    """HVPs and seconds per eigenvalue of power iteration, and when each method had eigenvalue i."""
    per = record["methods"]["power"]["per_eigenvalue"]
    with _style():
        fig, (ax1, ax2) = _fig(10.0, 3.8, ncols=2)
        idx = [p["index"] for p in per]
        ax1.bar(
            idx, [p["matvecs"] for p in per], color="C0", alpha=0.7, label="HVPs on eigenvalue i"
        )
        ax1.set_xlabel("eigenvalue index i (order found)")
        ax1.set_ylabel("HVPs spent on eigenvalue i")
        ax1b = ax1.twinx()
        ax1b.plot(idx, np.cumsum([p["seconds"] for p in per]), color="C1", marker="o", ms=3)
        ax1b.set_ylabel("cumulative wall time (s)", color="C1")
        ax1.set_title("Power iteration, PyHessian rule: cost per eigenvalue")
        for name, color in (("power", "C0"), ("lanczos", "C2"), ("block", "C3")):
            m = record["methods"][name]
            if name == "power":
                y = np.cumsum([p["matvecs"] for p in per])
                ax2.plot(idx, y, marker="o", ms=3, color=color, label="power (PyHessian rule)")
            else:
                ca = m.get("converged_at") or []
                pts = [(i + 1, c) for i, c in enumerate(ca) if c is not None]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax2.plot(xs, ys, marker="o", ms=3, color=color, label=f"{name} (residual rule)")
                ax2.axhline(m["num_matvecs"], color=color, ls=":", lw=0.8)
        ax2.set_xlabel("eigenvalue index i")
        ax2.set_ylabel("cumulative HVPs until eigenvalue i is done")
        ax2.set_yscale("log")
        ax2.set_title("HVPs to reach eigenvalue i (dotted: total)")
        ax2.legend(frameon=False)
        fig.suptitle(f"Fig. 3 analogue: {title}")
    data = {
        "power_per_eigenvalue": per,
        "lanczos_converged_at": record["methods"]["lanczos"].get("converged_at"),
        "block_converged_at": record["methods"]["block"].get("converged_at"),
        "totals": {k: v["num_matvecs"] for k, v in record["methods"].items()},
    }
    return save_figure(fig, out / "fig03_power_cost.png", data)


def figure4(plain: GhostCount, reference: np.ndarray, title: str, out: Path) -> Path:
    """Top Ritz values of plain Lanczos per iteration against the reference (study's Figure 4)."""
    with _style():
        fig, ax = _fig(7.0, 4.2)
        for rec in plain.history:
            ax.plot(np.full(len(rec["ritz_top"]), rec["step"]), rec["ritz_top"], "k.", ms=2.5)
        steps = plain.num_steps
        ax.plot(
            np.full(reference.size, steps + 2),
            reference,
            "o",
            color="crimson",
            ms=4,
            label="reference eigenvalues",
        )
        ax.plot([], [], "k.", label=f"top-{len(plain.ritz_top)} Ritz values, plain Lanczos")
        ax.set_xlabel("Lanczos iteration (= HVPs)")
        ax.set_ylabel("eigenvalue (loss / parameter²)")
        ax.set_yscale("log")
        ax.legend(frameon=False, loc="lower left")
        ax.set_title(
            f"Fig. 4 analogue: {title}\nplain Lanczos (no reorthogonalization): at step {steps} "
            f"the top {len(plain.ritz_top)} hold {plain.top_copies} copies of λ1 and "
            f"{plain.distinct} distinct eigenvalues",
            fontsize=9,
        )
    data = {"history": plain.history, "reference": reference, "ghosts": plain.to_dict()}
    return save_figure(fig, out / "fig04_plain_lanczos.png", data)


def figure5(
    record: Mapping[str, Any], lanczos_res: Any, plain: GhostCount, title: str, out: Path
) -> Path:
    """Wall time per iteration of Lanczos (ours and plain) and of power iteration."""
    with _style():
        fig, (ax1, ax2) = _fig(10.0, 3.8, ncols=2)
        series = {}
        hist = [r for r in lanczos_res.history if "seconds" in r]
        mv = [int(r["matvecs"]) for r in hist]
        sec = [float(r["seconds"]) for r in hist]
        series["lanczos (full reorth.)"] = (mv, sec)
        series["plain Lanczos"] = (
            [r["matvecs"] for r in plain.history],
            [r["seconds"] for r in plain.history],
        )
        for j, (name, (x, y)) in enumerate(series.items()):
            ax1.plot(x, y, marker="o", ms=2, color=f"C{j}", label=name)
            if len(x) > 1:
                dt = np.diff(np.concatenate([[0.0], y])) / np.maximum(
                    np.diff(np.concatenate([[0], x])), 1
                )
                ax2.plot(x, 1e3 * dt, color=f"C{j}", lw=1.0, label=name)
        ax1.set_xlabel("iteration (HVPs)")
        ax1.set_ylabel("cumulative wall time (s)")
        ax1.set_title("Time against iterations")
        ax1.legend(frameon=False)
        ax2.set_xlabel("iteration (HVPs)")
        ax2.set_ylabel("wall time per HVP (ms)")
        ax2.set_title("Time per iteration")
        fig.suptitle(f"Fig. 5 analogue: {title}")
    data = {name: {"matvecs": x, "seconds": y} for name, (x, y) in series.items()}
    return save_figure(fig, out / "fig05_lanczos_time.png", data)


def figure6(entry: Mapping[str, Any], reference: np.ndarray, title: str, out: Path) -> Path:
    """Cumulative spectrum of a sketch's eigenvalues (the study's Figure 6)."""
    lam = np.sort(np.asarray(entry["eigenvalues"], dtype=np.float64))
    frac_above = 1.0 - np.arange(1, lam.size + 1) / lam.size
    with _style():
        fig, ax = _fig(7.0, 4.0)
        ax.step(
            lam,
            frac_above,
            where="post",
            color="C0",
            label=f"{entry['kind']} sketch, d={entry['size']}",
        )
        for j, r in enumerate(reference):
            ax.axvline(
                r, color="crimson", lw=0.6, alpha=0.5, label="reference top-k" if j == 0 else None
            )
        ax.axvline(0.0, color="black", lw=0.8)
        _symlog_x(ax, float(np.max(np.abs(lam))) * 1e-3, float(np.max(np.abs(lam))))
        ax.set_xlabel("eigenvalue λ (loss / parameter²)")
        ax.set_ylabel("fraction of sketch eigenvalues > λ")
        ax.legend(frameon=False)
        ax.set_title(
            f"Fig. 6 analogue: {title}\n{entry['num_negative']} of {lam.size} sketch eigenvalues "
            f"negative; max {lam[-1]:.4g} (true λ1 {reference[0]:.4g})",
            fontsize=9,
        )
    data = {"eigenvalues": lam, "fraction_above": frac_above, "reference": reference}
    return save_figure(fig, out / f"fig06_sketch_cdf_d{entry['size']}.png", data)


def figure2_cdf(den: Any, ref: Mapping[str, Any], title: str, out: Path) -> Path:
    """Fraction of eigenvalues above lambda: SLQ and, where known, exact (the study's Figure 2)."""
    nodes = np.asarray(den.nodes, dtype=np.float64).ravel()
    lam = ref.get("eigenvalues")
    lo = float(min(nodes.min(), np.min(lam) if lam is not None else nodes.min()))
    hi = float(max(nodes.max(), np.max(lam) if lam is not None else nodes.max()))
    span = max(abs(lo), abs(hi))
    pos = np.geomspace(span * 1e-6, span * 1.05, 400)
    grid = np.concatenate([-pos[::-1], [0.0], pos])
    grid = grid[(grid >= lo - 0.05 * span) & (grid <= hi + 0.05 * span)]
    slq_above = 1.0 - np.asarray(den.cdf(grid), dtype=np.float64)
    data: dict[str, Any] = {"grid": grid, "slq_fraction_above": slq_above}
    with _style():
        fig, ax = _fig(7.0, 4.0)
        ax.plot(grid, slq_above, color="C2", label=f"SLQ ({den.num_matvecs} HVPs)")
        if lam is not None:
            lam = np.sort(np.asarray(lam, dtype=np.float64))
            exact_above = 1.0 - np.searchsorted(lam, grid, side="right") / lam.size
            ax.plot(grid, exact_above, color="black", ls="--", lw=1.0, label="exact")
            data["exact_fraction_above"] = exact_above
        _symlog_x(ax, span * 1e-6, span)
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue λ (loss / parameter²)")
        ax.set_ylabel("fraction of eigenvalues > λ")
        ax.legend(frameon=False)
        ax.set_title(f"Fig. 2 analogue: cumulative spectrum\n{title}", fontsize=9)
    return save_figure(fig, out / "fig02_cdf.png", data)


def figure_trace(tr: Mapping[str, Any], ref: Mapping[str, Any], title: str, out: Path) -> Path:
    """Trace estimates with +-2 standard errors, and PyHessian's running mean and stop."""
    names = [k for k in tr if k not in ("pyhessian_rule", "running_mean")]
    with _style():
        fig, (ax1, ax2) = _fig(10.0, 3.8, ncols=2)
        for j, name in enumerate(names):
            e = tr[name]
            se = e.get("stderr")
            ax1.errorbar(
                j,
                e["estimate"],
                yerr=None if se is None else 2 * se,
                fmt="o",
                capsize=4,
                color=f"C{j}",
            )
        ax1.set_xticks(
            range(len(names)), [f"{n}\n({tr[n]['num_matvecs']} HVPs)" for n in names], fontsize=7
        )
        if ref.get("trace") is not None:
            ax1.axhline(
                ref["trace"],
                color="black",
                ls="--",
                lw=0.9,
                label=f"reference ({ref['kind']}) {ref['trace']:.5g}",
            )
            ax1.legend(frameon=False)
        ax1.set_ylabel("trace estimate (loss / parameter²), ±2 s.e.")
        ax1.set_title("Trace estimates at one budget")
        rm = np.asarray(tr["running_mean"])
        ax2.plot(np.arange(1, rm.size + 1), rm, color="C0", label="Hutchinson running mean")
        rule = tr["pyhessian_rule"]
        if rule.get("stopped"):
            ax2.axvline(
                rule["probes"], color="C3", ls=":", label=f"PyHessian rule stops ({rule['probes']})"
            )
        if ref.get("trace") is not None:
            ax2.axhline(ref["trace"], color="black", ls="--", lw=0.9, label="reference")
        ax2.set_xlabel("probes (HVPs)")
        ax2.set_ylabel("running mean of v·Hv (loss / parameter²)")
        ax2.set_title("PyHessian's stopping rule replayed")
        ax2.legend(frameon=False)
        fig.suptitle(f"Trace: {title}")
    return save_figure(
        fig, out / "trace_estimates.png", {"trace": tr, "reference_trace": ref.get("trace")}
    )


# --------------------------------------------------------------------------- run


def run(
    op: LinearOperator,
    cfg: CompareConfig,
    out: str | Path,
    *,
    problem: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Run every comparison on `op` and write figures and `compare_methods.json` under `out`."""
    from hessian_spectra import plots as hplots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
        "reference": {k: v for k, v in ref.items() if k != "eigenvalues"},
    }
    from hessian_spectra.algorithms.power import BOUND_STEPS  # the bound's HVPs, for "LA"

    power = hs.eigsh(
        op,
        cfg.k,
        which=cfg.power_which,
        method="power",
        stop="relative_change",
        tol=cfg.power_tol,
        max_matvecs=cfg.power_max_iter * cfg.k + (0 if cfg.power_which == "LM" else BOUND_STEPS),
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
    record["ghosts"] = {}
    plain = None
    for reorth in ("none", "full"):
        g = lanczos_ghosts(
            op,
            top,
            num_steps=cfg.plain_steps,
            k=cfg.k,
            reorth=reorth,
            rtol=cfg.ghost_rtol,
            seed=cfg.seed,
        )
        record["ghosts"][reorth] = {k: v for k, v in g.to_dict().items() if k != "history"}
        if reorth == "none":
            plain = g
    assert plain is not None
    sk, sk_results = sketch_errors(op, top, cfg, ref.get("trace"))
    record["sketches"] = sk
    record["trace"] = trace_estimates(op, sk, cfg)
    den, record["density"] = density_summary(op, ref, cfg)
    record["claims"] = [asdict(c) for c in evaluate_claims(record, cfg)]
    record["seconds"] = time.perf_counter() - t_start

    if plots:
        title = _title(record)
        figs = [
            figure3(record, title, out),
            figure4(plain, top, title, out),
            figure5(record, lan, plain, title, out),
            figure_trace(record["trace"], record["reference"], title, out),
        ]
        rad = [e for e in sk.values() if e["kind"] == "rademacher"]
        for e in rad:
            figs.append(figure6(e, top, title, out))
        fig = hplots.plot_convergence(
            lan,
            reference=top,
            title=f"Fig. 4 (ours): Lanczos, full reorth., tol {cfg.tol}: {title}",
        )
        figs.append(
            save_figure(
                fig,
                out / "fig04_lanczos_ours.png",
                {"reference": top, "history": list(lan.history)},
            )
        )
        fig = hplots.plot_method_comparison(
            {"power (PyHessian rule)": power, "Lanczos": lan, "block Lanczos": blk},
            reference=top,
            title=f"Top-{cfg.k}: {title}",
        )
        figs.append(
            save_figure(
                fig,
                out / "methods_comparison.png",
                {"methods": record["methods"], "reference": top},
            )
        )
        fig = hplots.plot_sketch(
            {f"{e['kind']} d={e['size']}": sk_results[key] for key, e in sk.items()},
            top,
            k=cfg.k,
            title=f"Fig. 19 analogue: sketch errors, {title}",
        )
        figs.append(
            save_figure(fig, out / "fig19_sketch_errors.png", {"sketches": sk, "reference": top})
        )
        figs.append(figure2_cdf(den, ref, title, out))
        fig = hplots.plot_density(
            den,
            eigenvalues=top,
            title=f"Fig. 2 analogue: SLQ density, {cfg.density_steps} steps x "
            f"{cfg.density_probes} probe(s), {title}",
        )
        figs.append(save_figure(fig, out / "fig02_density.png", record["density"]))
        record["figures"] = [p.name for p in figs]
    write_json(out / "compare_methods.json", record)
    return record


def _title(record: Mapping[str, Any]) -> str:
    p = record["problem"]
    if "model" in p:
        return (
            f"{p['model']} on {p['data']} ({p.get('num_samples')} samples), "
            f"n={record['n']}, seed {record['config']['seed']}"
        )
    return f"{p.get('operator')}, n={record['n']}, seed {record['config']['seed']}"


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `experiment compare-methods`."""
    d = CompareConfig()
    a = parser.add_argument
    a("--model", choices=MODELS, default=d.model, help="default digits_cnn")
    a("--data", default=d.data, help="digits (default) or cifar10:PATH")
    a("--checkpoint", help="state dict of the model (required for resnet20)")
    a("--num-samples", type=int, help="data points in the loss (default: all digits / 128 CIFAR)")
    a(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"samples per batch (default {d.batch_size})",
    )
    a("--dtype", choices=("float64", "float32"), default=d.dtype, help="operator precision")
    a("--train-steps", type=int, default=d.train_steps, help="Adam steps for digits_cnn")
    a("--k", type=int, default=d.k, help=f"eigenvalues wanted (default {d.k})")
    a("--which", choices=("LA", "LM"), default=d.which, help="LA (default) or LM")
    a("--tol", type=float, default=d.tol, help=f"Lanczos residual tolerance (default {d.tol})")
    a("--power-tol", type=float, default=d.power_tol, help="PyHessian's relative-change tolerance")
    a("--power-max-iter", type=int, default=d.power_max_iter, help="power HVPs per eigenvalue")
    a("--power-which", choices=("LM", "LA"), default=d.power_which, help="LM (PyHessian) or LA")
    a(
        "--block-size",
        type=int,
        default=d.block_size,
        help=f"block Lanczos size (default {d.block_size})",
    )
    a("--plain-steps", type=int, default=d.plain_steps, help="plain Lanczos steps (default 45)")
    a("--ghost-rtol", type=float, default=d.ghost_rtol, help="relative distance of a ghost copy")
    a("--sketch-sizes", default="50,100", help="comma-separated sketch sizes (default 50,100)")
    a("--sketch-kinds", default="rademacher,rangefinder,nystrom", help="comma-separated kinds")
    a("--trace-matvecs", type=int, default=d.trace_matvecs, help="HVPs per trace estimator")
    a("--reference", choices=("exact", "lanczos"), help="default: exact for n <= 20000")
    a("--reference-tol", type=float, default=d.reference_tol, help="reference Lanczos tolerance")
    a(
        "--reference-cache",
        metavar="FILE",
        help="keep the exact reference (n HVPs and a dense eigensolve) in this .npz between "
        "runs; checked against one HVP of the current operator before use",
    )
    a(
        "--reference-trace-probes",
        type=int,
        default=d.reference_trace_probes,
        help="Hutchinson probes of the reference trace (lanczos reference)",
    )
    a("--density-steps", type=int, default=d.density_steps, help="SLQ Lanczos steps")
    a("--density-probes", type=int, default=d.density_probes, help="SLQ probes")
    a("--seed", type=int, default=d.seed, help="seed of every random draw (default 0)")
    a("--out", default="out/compare-methods", help="output folder")
    a("--no-plots", action="store_true", help="write the JSON only")


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    def ints(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError as exc:
            raise ValueError(f"expected comma-separated integers, got {text!r}") from exc

    reference = args.reference or ("exact" if args.model == "digits_cnn" else "lanczos")
    return CompareConfig(
        model=args.model,
        data=args.data,
        checkpoint=args.checkpoint,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        dtype=args.dtype,
        train_steps=args.train_steps,
        k=args.k,
        which=args.which,
        tol=args.tol,
        power_tol=args.power_tol,
        power_max_iter=args.power_max_iter,
        power_which=args.power_which,
        block_size=args.block_size,
        plain_steps=args.plain_steps,
        ghost_rtol=args.ghost_rtol,
        sketch_sizes=ints(args.sketch_sizes),
        sketch_kinds=tuple(x.strip() for x in args.sketch_kinds.split(",") if x.strip()),
        trace_matvecs=args.trace_matvecs,
        reference=reference,
        reference_tol=args.reference_tol,
        reference_trace_probes=args.reference_trace_probes,
        reference_cache=args.reference_cache,
        density_steps=args.density_steps,
        density_probes=args.density_probes,
        seed=args.seed,
    )


def report(record: Mapping[str, Any]) -> str:
    """A short text summary of a finished run (for the command line)."""
    lines = [f"compare-methods on n={record['n']} ({record['seconds']:.1f} s)"]
    for name, m in record["methods"].items():
        lines.append(
            f"  {name:8s} {m['num_matvecs']:6d} HVPs {m['seconds']:8.2f} s  "
            f"max rel. error {m['max_abs_relative_error']:.2e}  converged {m['converged']}"
        )
    g = record["ghosts"]["none"]
    lines.append(
        f"  plain Lanczos, {g['num_steps']} steps: {g['top_copies']} copies of the top "
        f"eigenvalue, {g['distinct']} distinct of the top {len(g['ritz_top'])}"
    )
    for key, e in record["sketches"].items():
        lines.append(
            f"  sketch {key:16s} mean error {e['mean_percent_error']:+.1f}%  "
            f"range [{e['min_percent_error']:+.1f}, {e['max_percent_error']:+.1f}]%"
        )
    ref_tr = record["reference"].get("trace")
    for name, e in record["trace"].items():
        if name in ("running_mean",):
            continue
        se = e.get("stderr")
        se_txt = f" +- {se:.4g}" if se is not None else ""
        lines.append(f"  trace {name:14s} {e['estimate']:.6g}{se_txt}")
    if ref_tr is not None:
        lines.append(f"  trace reference      {ref_tr:.6g}")
    for c in record.get("claims", []):
        verdict = "holds" if c["holds"] else "does not hold"
        lines.append(f"  [{c['source']}] {c['key']}: {verdict}")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    """Entry point of `experiment compare-methods`; returns the exit code."""
    import sys

    cfg = config_from_args(args)
    op, problem = build_problem(cfg)
    record = run(op, cfg, args.out, problem=problem, plots=not args.no_plots)
    sys.stdout.write(report(record))
    sys.stdout.write(f"outputs in {Path(args.out).resolve()}\n")
    return 0
