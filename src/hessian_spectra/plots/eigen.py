"""Eigensolver figures: Ritz values per HVP, several methods side by side, sketches vs Lanczos."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from hessian_spectra import history
from hessian_spectra.figures import new_figure, styled
from hessian_spectra.plots._common import EIG_LABEL, HVP_LABEL, fmt
from hessian_spectra.results import EigshResult, Result, SketchResult, select


def eig_history(result: EigshResult) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(HVPs per record, estimates per record, residuals per record) of an eigsh history.

    Every eigensolver writes `history.RITZ_VALUES` and `history.RESIDUALS` in
    each record (and always has, so older files read the same). Each record's
    estimates are sorted the way the result's `which` orders them; records
    without estimates are skipped, and missing residuals are NaN.
    """
    mv: list[int] = []
    est: list[np.ndarray] = []
    res: list[np.ndarray] = []
    for rec in result.history:
        vals = rec.get(history.RITZ_VALUES)
        if vals is None:
            continue
        v = np.atleast_1d(np.asarray(vals, dtype=np.float64))
        r = rec.get(history.RESIDUALS)
        rr = np.full(v.shape, np.nan) if r is None else np.atleast_1d(np.asarray(r, np.float64))
        if rr.shape != v.shape:
            rr = np.full(v.shape, np.nan)
        order = select(v, result.which, v.size)
        mv.append(int(rec[history.MATVECS]))
        est.append(v[order])
        res.append(rr[order])
    return np.asarray(mv), est, res


def _method_name(result: Result) -> str:
    method = str(getattr(result, "method", "") or result.settings.get("method", ""))
    names = {
        "lanczos": "Lanczos",
        "block": "block Lanczos",
        "power": "power iteration",
        "rqi": "sketch + RQI",
    }
    name = names.get(method, method or type(result).__name__)
    stop = result.settings.get("stop")
    if method == "power" and stop == "relative_change":
        name += " (PyHessian rule)"
    return name


@styled
def plot_convergence(
    result: EigshResult,
    *,
    reference: Sequence[float] | np.ndarray | None = None,
    k: int | None = None,
    title: str | None = None,
) -> Figure:
    """Ritz values and their residuals per iteration, against HVPs (the study's Figure 4).

    Args:
        result: an `eigsh` result with a history.
        reference: exact eigenvalues to draw as dotted lines, where known.
        k: how many leading values to follow (default: the result's k).
        title: the figure title (default: method, k, tolerance, HVPs and seconds).
    """
    k = int(k or len(result.eigenvalues))
    mv, est, res = eig_history(result)
    fig, (ax1, ax2) = new_figure(9.0, 3.6, ncols=2)
    cmap = mpl.colormaps["viridis"]
    colors = [cmap(x) for x in np.linspace(0.0, 0.9, max(k, 2))]
    if len(mv) == 0:
        ax1.text(
            0.5, 0.5, "no per-iteration history recorded", ha="center", transform=ax1.transAxes
        )
    for i in range(k):
        pts = [(m, e[i], r[i]) for m, e, r in zip(mv, est, res, strict=True) if e.size > i]
        if not pts:
            continue
        x, y, r = (np.asarray(a) for a in zip(*pts, strict=True))
        ax1.plot(
            x,
            y,
            color=colors[i],
            lw=1.2,
            marker="o",
            ms=2.0,
            label=f"λ{i + 1}" if k <= 10 else None,
        )
        good = np.isfinite(r) & (r > 0)
        if good.any():
            ax2.semilogy(x[good], r[good], color=colors[i], lw=1.1)
    if reference is not None:
        for lam in np.asarray(reference, dtype=np.float64)[:k]:
            ax1.axhline(lam, color="0.35", ls=":", lw=0.8)
    x_final = int(mv[-1]) if len(mv) else result.num_matvecs
    ax1.scatter(
        np.full(len(result.eigenvalues[:k]), x_final),
        np.asarray(result.eigenvalues[:k]),
        color="crimson",
        s=14,
        zorder=3,
        label="final",
    )
    ax1.set_xlabel(HVP_LABEL)
    ax1.set_ylabel(EIG_LABEL)
    ax1.set_title("Ritz values per iteration")
    if k <= 10:
        ax1.legend(ncol=2, frameon=False, loc="best")
    tol = result.settings.get("tol")
    if tol is not None:
        lam = np.abs(np.asarray(result.eigenvalues[:k], dtype=np.float64))
        ax2.axhline(
            float(tol) * float(lam.min()),
            color="0.3",
            ls="--",
            lw=0.9,
            label=f"tol × min |λ| (tol = {fmt(float(tol), 2)})",
        )
        ax2.legend(frameon=False, loc="upper right")
    dtype = str(result.settings.get("operator", {}).get("dtype", ""))
    if dtype in ("torch.float32", "torch.float64", "torch.float16", "torch.bfloat16"):
        eps = {"torch.float32": 2.0**-23, "torch.float64": 2.0**-52}.get(dtype, 2.0**-10)
        floor = eps * float(np.max(np.abs(np.asarray(result.eigenvalues, dtype=np.float64))))
        if floor > 0:
            ax2.axhline(floor, color="0.55", ls=":", lw=0.9, label="precision floor ε·max|λ|")
            ax2.set_ylim(bottom=floor * 1e-2)
            ax2.legend(frameon=False, loc="upper right")
    ax2.set_xlabel(HVP_LABEL)
    ax2.set_ylabel("residual ‖Hv − θv‖ (loss / parameter²)")
    ax2.set_title("Residual of each Ritz pair")
    fig.suptitle(
        title
        or f"{_method_name(result)}: top-{k} eigenvalues, {result.num_matvecs} HVPs, "
        f"{result.seconds:.2f} s"
    )
    return fig


@styled
def plot_method_comparison(
    results: Mapping[str, EigshResult],
    *,
    reference: Sequence[float] | np.ndarray | None = None,
    title: str | None = None,
) -> Figure:
    """Eigenvalues found and their cost, for several eigensolvers on the same Hessian.

    Left: each method's eigenvalues by index (and the reference, where given);
    right: HVPs and wall seconds per method.
    """
    fig, (ax1, ax2) = new_figure(9.0, 3.6, ncols=2)
    markers = ["o", "s", "^", "D", "v", "P"]
    names = list(results)
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        ax1.plot(np.arange(1, ref.size + 1), ref, "k_", ms=14, mew=1.5, label="reference")
    for j, name in enumerate(names):
        r = results[name]
        lam = np.asarray(r.eigenvalues, dtype=np.float64)
        conv = np.asarray(r.converged, dtype=bool)
        idx = np.arange(1, lam.size + 1) + (j - (len(names) - 1) / 2) * 0.12
        ax1.plot(idx, lam, markers[j % len(markers)], ms=5, mfc="none", label=name, color=f"C{j}")
        if (~conv).any():
            ax1.plot(idx[~conv], lam[~conv], "x", color="crimson", ms=6)
    ax1.set_xlabel("index i (descending)")
    ax1.set_ylabel(EIG_LABEL)
    ax1.set_title("Eigenvalues found (× : not converged)")
    ax1.legend(frameon=False)
    pos = np.arange(len(names))
    hvps = [results[n].num_matvecs for n in names]
    secs = [results[n].seconds for n in names]
    bars = ax2.bar(pos - 0.18, hvps, width=0.36, color="C0", label="HVPs")
    ax2.bar_label(bars, labels=[str(h) for h in hvps], fontsize=8, padding=2)
    ax2.set_ylabel(HVP_LABEL)
    ax2.set_xlabel("method")
    ax2.set_xticks(pos, names)
    ax2.grid(axis="x", visible=False)
    ax3 = ax2.twinx()
    ax3.spines["right"].set_visible(True)
    bars2 = ax3.bar(pos + 0.18, secs, width=0.36, color="C1", label="seconds")
    ax3.bar_label(bars2, labels=[f"{s:.1f} s" for s in secs], fontsize=8, padding=2)
    ax3.set_ylabel("wall time (s)")
    ax3.grid(False)
    ax2.set_ylim(0, max(hvps) * 1.2 if hvps else 1)
    ax3.set_ylim(0, max(secs) * 1.2 if secs else 1)
    ax2.set_title("Cost (blue: HVPs, orange: seconds)")
    k = max(len(r.eigenvalues) for r in results.values()) if results else 0
    short = [n.split("\n")[0] for n in names]
    fig.suptitle(title or f"Top-{k} eigenvalues: " + " vs ".join(short))
    return fig


@styled
def plot_sketch(
    sketches: Mapping[str, SketchResult],
    exact: EigshResult | Sequence[float] | np.ndarray,
    *,
    k: int | None = None,
    title: str | None = None,
) -> Figure:
    """Top-k eigenvalues of sketches against the exact ones, and their relative error.

    Args:
        sketches: label -> `sketch` result.
        exact: the reference top-k (an `eigsh` result or the values, descending).
        k: how many leading eigenvalues to compare (default: all reference values).
        title: the figure title.
    """
    ref = np.asarray(getattr(exact, "eigenvalues", exact), dtype=np.float64)
    k = int(k or ref.size)
    ref = ref[:k]
    idx = np.arange(1, k + 1)
    fig, (ax1, ax2) = new_figure(9.0, 3.6, ncols=2)
    ax1.plot(idx, ref, "k-", marker="o", ms=4, lw=1.2, label="Lanczos (reference)")
    markers = ["s", "^", "D", "v", "P"]
    for j, (name, sk) in enumerate(sketches.items()):
        lam = np.asarray(sk.eigenvalues, dtype=np.float64)[:k]
        m = min(lam.size, k)
        label = f"{name} (d={len(sk.eigenvalues)}, {sk.num_matvecs} HVPs)"
        ax1.plot(idx[:m], lam[:m], marker=markers[j % 5], ms=4, lw=0.9, color=f"C{j}", label=label)
        err = 100.0 * (lam[:m] - ref[:m]) / np.abs(ref[:m])
        ax2.plot(idx[:m], err, marker=markers[j % 5], ms=4, lw=0.9, color=f"C{j}", label=name)
    ax2.axhline(0.0, color="k", lw=0.8)
    ax1.set_xlabel("index i (descending)")
    ax1.set_ylabel(EIG_LABEL)
    ax1.set_title("Top eigenvalues: sketch vs Lanczos")
    ax1.legend(frameon=False, fontsize=7.5)
    ax2.set_xlabel("index i (descending)")
    ax2.set_ylabel("relative error (sketch − exact) / |exact| (%)")
    ax2.set_title("Relative error of each eigenvalue")
    ax2.legend(frameon=False)
    fig.suptitle(title or f"Hessian sketches vs Lanczos: top-{k} eigenvalues")
    return fig
