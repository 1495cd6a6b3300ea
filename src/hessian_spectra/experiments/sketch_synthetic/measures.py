"""The measurements of `sketch-synthetic`: the sketch errors, and the tables made of them.

`run` draws the matrices (`synthetic.py`), calls `hs.sketch` on each and
records the percent errors of the top k as tidy rows (`COLUMNS`);
`error_array`, `summary_rows` and `summary_markdown` tabulate them.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import hessian_spectra as hs
from hessian_spectra.experiments._io import derive_seed, machine_info, markdown_table, read_csv
from hessian_spectra.experiments.sketch_synthetic.config import SketchSyntheticConfig
from hessian_spectra.experiments.synthetic import synthetic_psd_matrix

#: Columns of the tidy CSV: one row per (kind, matrix, sketch, eigenvalue rank).
COLUMNS: tuple[str, ...] = (
    "kind",
    "zero_fraction",
    "matrix",
    "matrix_seed",
    "ratio",
    "sketch_size",
    "sketch",
    "sketch_seed",
    "rank",
    "true",
    "estimate",
    "percent_error",
    "predicted_shift",
    "num_matvecs",
)


@dataclass
class SketchSyntheticRun:
    """What `run` returns: the tidy rows, timings and the configuration."""

    config: SketchSyntheticConfig
    rows: list[dict[str, Any]]
    seconds: float
    seconds_by_kind: dict[str, float] = field(default_factory=dict)
    seconds_generating: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)


def run(
    config: SketchSyntheticConfig,
    *,
    on_matrix: Callable[[int, int], None] | None = None,
) -> SketchSyntheticRun:
    """Generate the matrices, sketch them and record the top-k percent errors.

    Args:
        config: sizes, counts and seed.
        on_matrix: called as `on_matrix(done, total)` after each matrix (progress).

    Returns:
        The tidy rows (columns `COLUMNS`) and the seconds spent.
    """
    config.validate()
    rows: list[dict[str, Any]] = []
    by_kind = dict.fromkeys(config.kinds, 0.0)
    t_gen = 0.0
    t0 = time.perf_counter()
    total = len(config.zero_fractions) * config.num_matrices
    done = 0
    for fi, frac in enumerate(config.zero_fractions):
        for mi in range(config.num_matrices):
            t1 = time.perf_counter()
            mseed = derive_seed(config.seed, fi, mi)
            mat = synthetic_psd_matrix(config.n, frac, seed=mseed)
            op = hs.DenseOperator(mat.matrix)
            t_gen += time.perf_counter() - t1
            for ri, ratio in enumerate(config.ratios):
                d = config.sketch_size(ratio)
                k = min(config.top_k, d)
                true = mat.eigenvalues[:k]
                # the Rademacher sketch's expected upward shift, in percent of
                # each true eigenvalue: tr(H less its top_k) / d (study notes)
                rest = float(np.sum(mat.eigenvalues[config.top_k :]))
                shift = 100.0 * rest / (d * true)
                for si in range(config.num_sketches):
                    sseed = derive_seed(config.seed, fi, mi, ri, si)
                    for kind in config.kinds:
                        t2 = time.perf_counter()
                        # the matrices are PSD by construction: Nystrom needs no
                        # shift, nor the products that look for one
                        known = {"shift": 0.0} if kind == "nystrom" else {}
                        res = hs.sketch(op, d, kind=kind, seed=sseed, **known)
                        by_kind[kind] += time.perf_counter() - t2
                        est = np.asarray(res.eigenvalues, dtype=np.float64)[:k]
                        err = 100.0 * (est - true) / true
                        for i in range(k):
                            rows.append(
                                {
                                    "kind": kind,
                                    "zero_fraction": float(frac),
                                    "matrix": mi,
                                    "matrix_seed": mseed,
                                    "ratio": float(ratio),
                                    "sketch_size": d,
                                    "sketch": si,
                                    "sketch_seed": sseed,
                                    "rank": i + 1,
                                    "true": float(true[i]),
                                    "estimate": float(est[i]),
                                    "percent_error": float(err[i]),
                                    "predicted_shift": float(shift[i]),
                                    "num_matvecs": int(res.num_matvecs),
                                }
                            )
            done += 1
            if on_matrix is not None:
                on_matrix(done, total)
    return SketchSyntheticRun(
        config=config,
        rows=rows,
        seconds=time.perf_counter() - t0,
        seconds_by_kind=by_kind,
        seconds_generating=t_gen,
        machine=machine_info(),
    )


# --------------------------------------------------------------------------- tables


def load_run(folder: str | Path) -> SketchSyntheticRun:
    """A finished run read back from its folder (`run.json` and `errors.csv`), to redraw it."""
    folder = Path(folder)
    try:
        rec = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"{folder} holds no readable run.json; point --replot at a sketch-synthetic "
            "output folder"
        ) from exc
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in rec["config"].items()
    }
    cfg = SketchSyntheticConfig(**fields)
    return SketchSyntheticRun(
        config=cfg,
        rows=rows_from_csv(folder / "errors.csv"),
        seconds=float(rec["seconds"]),
        seconds_by_kind=dict(rec.get("seconds_by_kind", {})),
        seconds_generating=float(rec.get("seconds_generating", 0.0)),
        machine=dict(rec.get("machine", {})),
    )


def rows_from_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a CSV written by `write_outputs` back into typed rows."""
    ints = {"matrix", "matrix_seed", "sketch_size", "sketch", "sketch_seed", "rank", "num_matvecs"}
    floats = {"zero_fraction", "ratio", "true", "estimate", "percent_error", "predicted_shift"}
    out: list[dict[str, Any]] = []
    for r in read_csv(path):
        row: dict[str, Any] = {}
        for c in COLUMNS:
            v = r[c]
            row[c] = int(v) if c in ints else float(v) if c in floats else v
        out.append(row)
    return out


def error_array(
    rows: Sequence[Mapping[str, Any]],
    config: SketchSyntheticConfig,
    kind: str,
    column: str = "percent_error",
) -> np.ndarray:
    """Percent errors (or another column) of one kind as an array (fraction, matrix,
    ratio, sketch, rank).

    Ranks beyond a sketch's size are NaN.
    """
    F, M, R, S, K = (
        len(config.zero_fractions),
        config.num_matrices,
        len(config.ratios),
        config.num_sketches,
        config.top_k,
    )
    arr = np.full((F, M, R, S, K), np.nan)
    fidx = {float(f): i for i, f in enumerate(config.zero_fractions)}
    ridx = {float(r): i for i, r in enumerate(config.ratios)}
    for row in rows:
        if row["kind"] != kind:
            continue
        arr[
            fidx[float(row["zero_fraction"])],
            int(row["matrix"]),
            ridx[float(row["ratio"])],
            int(row["sketch"]),
            int(row["rank"]) - 1,
        ] = float(row[column])
    return arr


def summary_rows(
    rows: Sequence[Mapping[str, Any]], config: SketchSyntheticConfig
) -> list[dict[str, Any]]:
    """Per (kind, zero fraction, ratio): mean, median, min, max percent error, share positive."""
    out: list[dict[str, Any]] = []
    for kind in config.kinds:
        arr = error_array(rows, config, kind)
        pred = error_array(rows, config, kind, "predicted_shift")
        for fi, f in enumerate(config.zero_fractions):
            for ri, r in enumerate(config.ratios):
                e = arr[fi, :, ri].ravel()
                e = e[np.isfinite(e)]
                p = pred[fi, :, ri].ravel()
                out.append(
                    {
                        "kind": kind,
                        "zero_fraction": f,
                        "ratio": r,
                        "sketch_size": config.sketch_size(r),
                        "count": int(e.size),
                        "mean": float(np.mean(e)),
                        "median": float(np.median(e)),
                        "min": float(np.min(e)),
                        "max": float(np.max(e)),
                        "mean_abs": float(np.mean(np.abs(e))),
                        "percent_positive": float(100.0 * np.mean(e > 0)),
                        "mean_predicted_shift": float(np.mean(p[np.isfinite(p)])),
                    }
                )
    return out


SUMMARY_COLUMNS: tuple[str, ...] = (
    "kind",
    "zero_fraction",
    "ratio",
    "sketch_size",
    "count",
    "mean",
    "median",
    "min",
    "max",
    "mean_abs",
    "percent_positive",
    "mean_predicted_shift",
)


def summary_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a markdown table (percent errors, 1 decimal)."""
    body = [
        (
            s["kind"],
            f"{100 * s['zero_fraction']:.0f}%",
            s["ratio"],
            s["sketch_size"],
            f"{s['mean']:+.1f}",
            f"{s['median']:+.1f}",
            f"{s['min']:+.1f}",
            f"{s['max']:+.1f}",
            f"{s['percent_positive']:.0f}%",
            f"{s['mean_predicted_shift']:+.1f}" if s["kind"] == "rademacher" else "",
        )
        for s in summary
    ]
    header = (
        "kind",
        "zeros",
        "ratio",
        "d",
        "mean %err",
        "median",
        "min",
        "max",
        "share > 0",
        "tr(H less top k)/(d λ) %",
    )
    return markdown_table(body, header)


def nan_reduce(fn: Callable[..., np.ndarray], arr: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """`fn` (a NumPy nan-reduction) without the warning for all-NaN slices.

    Ranks beyond a sketch's size are NaN in every draw; their reduction is NaN.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(fn(arr, axis=axis))


def mean_abs_grid(arr: np.ndarray) -> np.ndarray:
    """Mean |percent error| per (fraction, ratio), over matrices, sketches and ranks."""
    return nan_reduce(np.nanmean, np.abs(arr), (1, 3, 4))
