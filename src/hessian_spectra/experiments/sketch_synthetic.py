"""The study's synthetic sketch experiment (its Figures 7-18), for three sketch kinds.

For each fraction of zero eigenvalues, random PSD matrices (`synthetic.py`) are
sketched many times at each sketch-size ratio d / n, and the percent error
100 (sketch - true) / true of the top-k eigenvalues is recorded, for the
study's Rademacher sketch S^T H S and for the range-finder and Nystrom sketches
of `hessian_spectra.sketch`. All numerics are the library's: this module only
generates the matrices, calls `hs.sketch`, and tabulates, tests and draws the
errors.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import hessian_spectra as hs
from hessian_spectra.experiments._io import (
    Claim,
    derive_seed,
    machine_info,
    markdown_table,
    new_figure,
    read_csv,
    save_figure,
    write_csv,
    write_json,
)
from hessian_spectra.experiments.synthetic import num_zero_eigenvalues, synthetic_psd_matrix

KINDS: tuple[str, ...] = ("rademacher", "rangefinder", "nystrom")

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


@dataclass(frozen=True)
class SketchSyntheticConfig:
    """Sizes and counts of the experiment; the defaults are the study's.

    Attributes:
        n: matrix size.
        zero_fractions: fractions of exactly-zero eigenvalues.
        ratios: sketch sizes as fractions of n (d = round(ratio * n)).
        num_matrices: random matrices per zero fraction.
        num_sketches: sketches per matrix and ratio (per kind).
        top_k: eigenvalues compared (fewer where d < top_k).
        kinds: sketch kinds passed to `hs.sketch`.
        seed: the run's seed; every matrix and sketch seed is derived from it.
    """

    n: int = 1000
    zero_fractions: tuple[float, ...] = (0.1, 0.2, 0.4, 0.6, 0.8, 0.9)
    ratios: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4, 0.6)
    num_matrices: int = 3
    num_sketches: int = 10
    top_k: int = 20
    kinds: tuple[str, ...] = KINDS
    seed: int = 0

    def sketch_size(self, ratio: float) -> int:
        return int(round(ratio * self.n))

    def validate(self) -> None:
        """Refuse settings that cannot give a percent error for every compared eigenvalue."""
        if self.n < 2:
            raise ValueError(f"n must be at least 2, got {self.n}")
        if self.num_matrices < 1 or self.num_sketches < 1 or self.top_k < 1:
            raise ValueError("num_matrices, num_sketches and top_k must be at least 1")
        if not self.zero_fractions or not self.ratios or not self.kinds:
            raise ValueError("give at least one zero fraction, one ratio and one kind")
        for kind in self.kinds:
            if kind not in KINDS:
                raise ValueError(f"unknown sketch kind {kind!r}; choose from {', '.join(KINDS)}")
        for f in self.zero_fractions:
            nonzero = self.n - num_zero_eigenvalues(self.n, f)
            if nonzero < self.top_k:
                raise ValueError(
                    f"with zero fraction {f} a {self.n} x {self.n} matrix has only {nonzero} "
                    f"non-zero eigenvalues, fewer than top_k={self.top_k}: the percent error "
                    "of a zero eigenvalue is undefined; lower top_k or the fraction"
                )
        for r in self.ratios:
            d = self.sketch_size(r)
            if not 1 <= d <= self.n:
                raise ValueError(
                    f"ratio {r} gives sketch size {d} for n={self.n}; it must be in [1, n]"
                )

    @property
    def num_sketches_per_kind(self) -> int:
        return len(self.zero_fractions) * self.num_matrices * len(self.ratios) * self.num_sketches


#: A configuration that runs end to end in a few seconds (tests, smoke runs).
SMALL = SketchSyntheticConfig(
    n=200,
    zero_fractions=(0.1, 0.5, 0.9),
    ratios=(0.05, 0.2, 0.5),
    num_matrices=2,
    num_sketches=3,
    top_k=10,
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
                        res = hs.sketch(op, d, kind=kind, seed=sseed)
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


# --------------------------------------------------------------------------- claims

#: Tolerance (percent) under which an error counts as "not above the truth":
#: rounding in a float64 eigensolver, not an over-estimate.
ROUNDING_PERCENT = 1e-7


def _nan_reduce(
    fn: Callable[..., np.ndarray], arr: np.ndarray, axis: tuple[int, ...]
) -> np.ndarray:
    """`fn` (a NumPy nan-reduction) without the warning for all-NaN slices.

    Ranks beyond a sketch's size are NaN in every draw; their reduction is NaN.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(fn(arr, axis=axis))


def _mean_abs_grid(arr: np.ndarray) -> np.ndarray:
    """Mean |percent error| per (fraction, ratio), over matrices, sketches and ranks."""
    return _nan_reduce(np.nanmean, np.abs(arr), (1, 3, 4))


def evaluate_claims(
    rows: Sequence[Mapping[str, Any]], config: SketchSyntheticConfig
) -> list[Claim]:
    """Check the study's claims about Figures 7-18, and ours, on the run's numbers.

    The study's claims are about its Rademacher sketch:
    `always_overestimates` (every error positive), `error_falls_with_size`
    (for every zero fraction, the mean |error| falls at each step up in
    sketch ratio), `error_falls_with_singularity` (at every ratio, the mean
    |error| falls at each step up in zero fraction), and
    `larger_eigenvalues_smaller_error` (in every series the mean error at rank
    1 is below that at the last rank: the over-estimate "decreases for higher
    eigenvalues"). Ours: range finder and Nystrom never over-estimate, and
    each is more accurate than the Rademacher sketch of the same size in every cell.
    """
    claims: list[Claim] = []
    fr = [float(f) for f in config.zero_fractions]
    ra = [float(r) for r in config.ratios]
    if "rademacher" in config.kinds:
        arr = error_array(rows, config, "rademacher")
        finite = arr[np.isfinite(arr)]
        claims.append(
            Claim(
                key="always_overestimates",
                source="study",
                statement="every top-k eigenvalue of every Rademacher sketch is over-estimated",
                holds=bool(np.all(finite > 0)),
                evidence={
                    "num_errors": int(finite.size),
                    "num_negative": int(np.sum(finite <= 0)),
                    "min_percent_error": float(finite.min()),
                    "max_percent_error": float(finite.max()),
                },
            )
        )
        grid = _mean_abs_grid(arr)
        by_size = [bool(np.all(np.diff(grid[fi]) < 0)) for fi in range(len(fr))]
        claims.append(
            Claim(
                key="error_falls_with_size",
                source="study",
                statement="for every zero fraction, mean |error| falls as the sketch ratio grows",
                holds=all(by_size),
                evidence={
                    "zero_fractions": fr,
                    "ratios": ra,
                    "mean_abs_percent_error": grid.tolist(),
                    "monotone_per_zero_fraction": by_size,
                },
            )
        )
        by_sing = [bool(np.all(np.diff(grid[:, ri]) < 0)) for ri in range(len(ra))]
        first_last = [bool(grid[-1, ri] < grid[0, ri]) for ri in range(len(ra))]
        claims.append(
            Claim(
                key="error_falls_with_singularity",
                source="study",
                statement="at every sketch ratio, mean |error| falls as the zero fraction grows",
                holds=all(by_sing),
                evidence={
                    "zero_fractions": fr,
                    "ratios": ra,
                    "mean_abs_percent_error": grid.tolist(),
                    "monotone_per_ratio": by_sing,
                    "most_singular_below_least_singular_per_ratio": first_last,
                },
            )
        )
        series = _nan_reduce(np.nanmean, arr, (1, 3))  # (fraction, ratio, rank)
        cmp: list[list[bool]] = []
        for fi in range(len(fr)):
            row_ok = []
            for ri in range(len(ra)):
                s = series[fi, ri]
                s = s[np.isfinite(s)]
                row_ok.append(bool(s.size >= 2 and s[0] < s[-1]))
            cmp.append(row_ok)
        claims.append(
            Claim(
                key="larger_eigenvalues_smaller_error",
                source="study",
                statement="in every series the mean error at rank 1 is below that at the last rank",
                holds=all(all(r) for r in cmp),
                evidence={"rank1_below_last_rank": cmp},
            )
        )
    for kind in ("rangefinder", "nystrom"):
        if kind not in config.kinds:
            continue
        arr = error_array(rows, config, kind)
        finite = arr[np.isfinite(arr)]
        claims.append(
            Claim(
                key=f"{kind}_never_overestimates",
                source="library",
                statement=f"no {kind} eigenvalue exceeds the true one (beyond rounding)",
                holds=bool(np.all(finite <= ROUNDING_PERCENT)),
                evidence={
                    "num_errors": int(finite.size),
                    "max_percent_error": float(finite.max()),
                    "min_percent_error": float(finite.min()),
                },
            )
        )
    if "rademacher" in config.kinds:
        g_rd = _mean_abs_grid(error_array(rows, config, "rademacher"))
        budgets = {"rangefinder": "2d HVPs (two passes)", "nystrom": "d HVPs, as the Rademacher"}
        for kind in ("rangefinder", "nystrom"):
            if kind not in config.kinds:
                continue
            g = _mean_abs_grid(error_array(rows, config, kind))
            claims.append(
                Claim(
                    key=f"{kind}_beats_rademacher",
                    source="library",
                    statement=f"at every (zero fraction, ratio) the {kind} sketch's mean |error| "
                    f"is below the Rademacher sketch's at the same size d ({budgets[kind]})",
                    holds=bool(np.all(g < g_rd)),
                    evidence={f"{kind}_mean_abs": g.tolist(), "rademacher_mean_abs": g_rd.tolist()},
                )
            )
    return claims


# --------------------------------------------------------------------------- figures


def _pct(x: float) -> str:
    return f"{100 * x:g}%"


def plot_family(
    rows: Sequence[Mapping[str, Any]],
    config: SketchSyntheticConfig,
    kind: str,
    out: Path,
    *,
    by: str,
) -> list[Path]:
    """One figure per zero fraction (`by="zero_fraction"`, the study's Figures 7-12) or
    per ratio (`by="ratio"`, Figures 13-18), plus a panel of all of them.

    Each series is the mean percent error over matrices and sketches at each
    rank, with a band from the smallest to the largest error.
    """
    arr = error_array(rows, config, kind)  # (F, M, R, S, K)
    mean = _nan_reduce(np.nanmean, arr, (1, 3))
    lo = _nan_reduce(np.nanmin, arr, (1, 3))
    hi = _nan_reduce(np.nanmax, arr, (1, 3))
    ranks = np.arange(1, config.top_k + 1)
    if by == "zero_fraction":
        panels, series = list(config.zero_fractions), list(config.ratios)
        first_fig = 7

        def pick(a: np.ndarray, p: int, s: int) -> np.ndarray:
            return a[p, s]

        def ptitle(p: float) -> str:
            return f"{_pct(p)} zero eigenvalues"

        def slabel(s: float) -> str:
            return f"ratio {s:g} (d={config.sketch_size(s)})"

    elif by == "ratio":
        panels, series = list(config.ratios), list(config.zero_fractions)
        first_fig = 13

        def pick(a: np.ndarray, p: int, s: int) -> np.ndarray:
            return a[s, p]

        def ptitle(p: float) -> str:
            return f"sketch ratio {p:g} (d={config.sketch_size(p)})"

        def slabel(s: float) -> str:
            return f"{_pct(s)} zeros"

    else:
        raise ValueError(f"by must be 'zero_fraction' or 'ratio', got {by!r}")

    tag = "zero" if by == "zero_fraction" else "ratio"
    subtitle = (
        f"{kind} sketch, n={config.n}, {config.num_matrices} matrices x "
        f"{config.num_sketches} sketches, seed {config.seed}"
    )
    paths: list[Path] = []

    def draw(ax: Any, p: int) -> dict[str, Any]:
        drawn: dict[str, Any] = {}
        for s, sval in enumerate(series):
            m = pick(mean, p, s)
            ok = np.isfinite(m)
            (line,) = ax.plot(ranks[ok], m[ok], marker="o", ms=3, label=slabel(sval))
            ax.fill_between(
                ranks[ok],
                pick(lo, p, s)[ok],
                pick(hi, p, s)[ok],
                color=line.get_color(),
                alpha=0.08,
            )
            drawn[str(sval)] = {
                "rank": ranks[ok].tolist(),
                "mean": m[ok].tolist(),
                "min": pick(lo, p, s)[ok].tolist(),
                "max": pick(hi, p, s)[ok].tolist(),
            }
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("eigenvalue rank (1 = largest)")
        ax.set_ylabel("error (sketch - true) / true [%]")
        return drawn

    panel_data: dict[str, Any] = {}
    for p, pval in enumerate(panels):
        fig, ax = new_figure()
        drawn = draw(ax, p)
        ax.set_title(f"Fig. {first_fig + p} analogue: {ptitle(pval)}\n{subtitle}", fontsize=9)
        ax.legend(fontsize=7)
        name = f"fig{first_fig + p:02d}_{kind}_{tag}{pval:g}"
        paths.append(
            save_figure(
                fig,
                out / f"{name}.png",
                {"kind": kind, "panel": pval, "by": by, "series": drawn},
            )
        )
        panel_data[str(pval)] = drawn
    ncols = 3
    nrows = -(-len(panels) // ncols)
    fig, axes = new_figure(12.0, 3.2 * nrows, nrows=nrows, ncols=ncols, squeeze=False)
    for p, pval in enumerate(panels):
        ax = axes[p // ncols][p % ncols]
        draw(ax, p)
        ax.set_title(ptitle(pval), fontsize=9)
        if p == 0:
            ax.legend(fontsize=6)
    for q in range(len(panels), nrows * ncols):
        axes[q // ncols][q % ncols].set_visible(False)
    last = first_fig + len(panels) - 1
    fig.suptitle(
        f"Figs. {first_fig}-{last} analogue: top-{config.top_k} percent error by "
        f"{'zero fraction' if by == 'zero_fraction' else 'sketch ratio'}; {subtitle}",
        fontsize=10,
    )
    paths.append(
        save_figure(
            fig,
            out / f"figs{first_fig:02d}-{last:02d}_{kind}_panel.png",
            {"kind": kind, "by": by, "panels": panel_data},
            dpi=64,
        )
    )
    return paths


def plot_kinds_overview(
    rows: Sequence[Mapping[str, Any]], config: SketchSyntheticConfig, out: Path
) -> Path:
    """Mean |error| against sketch ratio for each kind, one panel per kind, lines per fraction."""
    from matplotlib.ticker import NullFormatter

    fig, axes = new_figure(4.0 * len(config.kinds), 3.4, ncols=len(config.kinds), squeeze=False)
    data: dict[str, Any] = {}
    for ki, kind in enumerate(config.kinds):
        ax = axes[0][ki]
        grid = _mean_abs_grid(error_array(rows, config, kind))
        data[kind] = {str(f): grid[fi].tolist() for fi, f in enumerate(config.zero_fractions)}
        for fi, f in enumerate(config.zero_fractions):
            (line,) = ax.plot(config.ratios, grid[fi], marker="o", ms=3, label=f"{_pct(f)} zeros")
            if kind == "rademacher":
                pred = _nan_reduce(
                    np.nanmean, error_array(rows, config, kind, "predicted_shift")[fi], (0, 2, 3)
                )
                ax.plot(config.ratios, pred, ls="--", lw=0.8, color=line.get_color())
                data.setdefault("rademacher_predicted_shift", {})[str(f)] = pred.tolist()
        if kind == "rademacher":
            ax.plot([], [], "k--", lw=0.8, label="tr(H less top k) / (d λ)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(config.ratios), [f"{r:g}" for r in config.ratios])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("sketch ratio d / n")
        ax.set_ylabel("mean |error| of top-k [%]")
        ax.set_title(kind, fontsize=9)
        if ki == 0:
            ax.legend(fontsize=6)
    fig.suptitle(
        f"Mean |percent error| of the top {config.top_k}, n={config.n}, "
        f"{config.num_matrices} matrices x {config.num_sketches} sketches, seed {config.seed}",
        fontsize=10,
    )
    return save_figure(
        fig,
        out / "sketch_kinds_overview.png",
        {"ratios": list(config.ratios), "mean_abs": data},
        dpi=64,
    )


# --------------------------------------------------------------------------- outputs


def write_outputs(
    result: SketchSyntheticRun, out: str | Path, *, plots: bool = True
) -> dict[str, Any]:
    """Write the CSV, summary (CSV and markdown), claims JSON and figures under `out`.

    Returns:
        A JSON-ready record of the run: configuration, timings, claims, files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = result.config
    write_csv(out / "errors.csv", result.rows, COLUMNS)
    summary = summary_rows(result.rows, cfg)
    write_csv(out / "summary.csv", summary, SUMMARY_COLUMNS)
    (out / "summary.md").write_text(summary_markdown(summary))
    claims = evaluate_claims(result.rows, cfg)
    files = ["errors.csv", "summary.csv", "summary.md", "claims.json", "run.json"]
    if plots:
        for kind in cfg.kinds:
            for by in ("zero_fraction", "ratio"):
                files += [p.name for p in plot_family(result.rows, cfg, kind, out, by=by)]
        files.append(plot_kinds_overview(result.rows, cfg, out).name)
    record = {
        "experiment": "sketch-synthetic",
        "config": asdict(cfg),
        "num_rows": len(result.rows),
        "num_sketches_per_kind": cfg.num_sketches_per_kind,
        "seconds": result.seconds,
        "seconds_by_kind": result.seconds_by_kind,
        "seconds_generating": result.seconds_generating,
        "machine": result.machine,
        "files": files,
    }
    write_json(out / "claims.json", {"claims": [asdict(c) for c in claims]})
    write_json(out / "run.json", record)
    record["claims"] = [asdict(c) for c in claims]
    return record


# --------------------------------------------------------------------------- command line


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.1,0.5, got {text!r}"
        ) from exc
    if not vals:
        raise argparse.ArgumentTypeError("give at least one value")
    return vals


def _kinds(text: str) -> tuple[str, ...]:
    vals = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [v for v in vals if v not in KINDS]
    if bad or not vals:
        raise argparse.ArgumentTypeError(f"kinds must be among {', '.join(KINDS)}, got {text!r}")
    return vals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `experiment sketch-synthetic`."""
    d = SketchSyntheticConfig()
    parser.add_argument("--out", help="output folder (default out/sketch-synthetic)")
    parser.add_argument(
        "--replot",
        metavar="DIR",
        help="redraw the tables, claims and figures of a finished run from DIR's run.json and "
        "errors.csv, without sketching again (written to --out, default DIR)",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="a seconds-long configuration (n=200, 3 fractions, 3 ratios, 2 x 3 sketches, "
        "top 10); the options below override it",
    )
    parser.add_argument("--n", type=int, help=f"matrix size (default {d.n})")
    parser.add_argument(
        "--zero-fractions", type=_floats, help="comma-separated (default 0.1,0.2,0.4,0.6,0.8,0.9)"
    )
    parser.add_argument(
        "--ratios", type=_floats, help="comma-separated d/n (default 0.02,0.05,0.1,0.2,0.4,0.6)"
    )
    parser.add_argument(
        "--matrices", type=int, help=f"matrices per fraction (default {d.num_matrices})"
    )
    parser.add_argument(
        "--sketches", type=int, help=f"sketches per matrix and ratio (default {d.num_sketches})"
    )
    parser.add_argument("--top-k", type=int, help=f"eigenvalues compared (default {d.top_k})")
    parser.add_argument("--kinds", type=_kinds, help="comma-separated (default all three)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    parser.add_argument("--no-plots", action="store_true", help="write tables only")


def config_from_args(args: argparse.Namespace) -> SketchSyntheticConfig:
    base = SMALL if args.small else SketchSyntheticConfig()
    over: dict[str, Any] = {"seed": args.seed}
    for attr, key in (
        ("n", "n"),
        ("zero_fractions", "zero_fractions"),
        ("ratios", "ratios"),
        ("matrices", "num_matrices"),
        ("sketches", "num_sketches"),
        ("top_k", "top_k"),
        ("kinds", "kinds"),
    ):
        val = getattr(args, attr, None)
        if val is not None:
            over[key] = val
    fields = asdict(base)
    fields.update(over)
    cfg = SketchSyntheticConfig(**fields)
    cfg.validate()
    return cfg


def report(record: Mapping[str, Any]) -> str:
    """A short text summary of a finished run (for the command line)."""
    lines = [
        f"sketch-synthetic: {record['num_sketches_per_kind']} sketches per kind, "
        f"{record['num_rows']} rows, {record['seconds']:.1f} s",
    ]
    for c in record["claims"]:
        verdict = "holds" if c["holds"] else "does not hold"
        lines.append(f"  [{c['source']}] {c['key']}: {verdict}")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    """Entry point of `experiment sketch-synthetic`; returns the exit code."""
    import sys

    if args.replot:
        result = load_run(args.replot)
        out = Path(args.out or args.replot)
    else:
        from hessian_spectra._progress import outer_progress

        config = config_from_args(args)
        total = len(config.zero_fractions) * config.num_matrices
        # one bar over the matrices rather than one per sketch
        with outer_progress(total, "sketch-synthetic", unit="matrix") as bar:
            result = run(config, on_matrix=lambda done, _total: bar.update(done - bar.n))
        out = Path(args.out or "out/sketch-synthetic")
    record = write_outputs(result, out, plots=not args.no_plots)
    sys.stdout.write(report(record))
    sys.stdout.write(f"outputs in {out.resolve()}\n")
    return 0
