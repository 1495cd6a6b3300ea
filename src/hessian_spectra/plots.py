"""Figures from result records: convergence, densities, sketches, landscapes, layers, monitors.

Every function takes result records (never an operator), returns a
`matplotlib.figure.Figure` built without pyplot (so no global state and no
display is needed), and gives each axis a label with its unit and each figure
a title that says what was run. `save_figure` writes a PNG.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from hessian_spectra.results import select

if TYPE_CHECKING:
    from hessian_spectra.results import (
        EigshResult,
        LandscapeResult,
        MonitorResult,
        Result,
        SketchResult,
        TraceResult,
    )

#: the style every figure is drawn in
STYLE: Any = {
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.labelsize": 9.5,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.4,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "image.cmap": "viridis",
}

HVP_LABEL = "Hessian-vector products (HVPs)"
EIG_LABEL = "eigenvalue λ (loss / parameter²)"


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _styled(fn: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw inside the module's style context."""

    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with mpl.rc_context(STYLE):
            return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write `fig` as a PNG to `path` (folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with mpl.rc_context(STYLE):
        fig.savefig(path, dpi=dpi, format="png")
    return path


def _fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}"


# --------------------------------------------------------------------------- eigsh
_RITZ_KEYS = ("ritz_values", "eigenvalues", "estimates", "theta", "ritz")
_RES_KEYS = ("residuals", "residual", "ritz_residuals")


def _first_key(rec: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in rec and rec[key] is not None:
            return rec[key]
    return None


def eig_history(result: EigshResult) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(HVPs per record, estimates per record, residuals per record) of an eigsh history.

    Each record's estimates are sorted the way the result's `which` orders them;
    records without estimates are skipped.
    """
    mv: list[int] = []
    est: list[np.ndarray] = []
    res: list[np.ndarray] = []
    for rec in result.history:
        vals = _first_key(rec, _RITZ_KEYS)
        if vals is None:
            continue
        v = np.atleast_1d(np.asarray(vals, dtype=np.float64))
        r = _first_key(rec, _RES_KEYS)
        rr = (
            np.atleast_1d(np.asarray(r, dtype=np.float64))
            if r is not None
            else np.full(v.shape, np.nan)
        )
        if rr.shape != v.shape:
            rr = np.full(v.shape, np.nan)
        order = select(v, result.which, v.size)
        mv.append(int(rec["matvecs"]))
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


@_styled
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
    fig = _figure(9.0, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
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
            label=f"tol × min |λ| (tol = {_fmt(float(tol), 2)})",
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


@_styled
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
    fig = _figure(9.0, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
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


# --------------------------------------------------------------------------- density
def _density_grid(den: Any, extra: np.ndarray | None, points: int) -> np.ndarray:
    nodes = np.asarray(den.nodes, dtype=np.float64).ravel()
    lo, hi = float(nodes.min()), float(nodes.max())
    if extra is not None and extra.size:
        lo, hi = min(lo, float(extra.min())), max(hi, float(extra.max()))
    pad = 0.05 * max(hi - lo, 1e-12)
    return np.linspace(lo - pad, hi + pad, points)


@_styled
def plot_density(
    den: Any,
    *,
    eigenvalues: Sequence[float] | np.ndarray | None = None,
    sigma: float | None = None,
    points: int = 1200,
    title: str | None = None,
) -> Figure:
    """The spectral density on a log scale and the cumulative density (the study's Figure 2).

    Args:
        den: a `density` result (``nodes``, ``weights``, ``pdf(grid, sigma)``, ``cdf(x)``).
        eigenvalues: top eigenvalues from `eigsh` to mark along the axis.
        sigma: Gaussian broadening width (default: the result's own choice).
        points: grid points.
        title: the figure title.
    """
    extra = None if eigenvalues is None else np.asarray(eigenvalues, dtype=np.float64)
    grid = _density_grid(den, extra, points)
    pdf = np.asarray(den.pdf(grid, sigma), dtype=np.float64)
    cdf = np.asarray(den.cdf(grid), dtype=np.float64)
    fig = _figure(9.0, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    floor = max(float(pdf.max()) * 1e-9, 1e-300)
    ax1.semilogy(grid, np.maximum(pdf, floor), color="C0")
    ax1.fill_between(grid, floor, np.maximum(pdf, floor), color="C0", alpha=0.15)
    ax1.set_ylim(bottom=max(floor, float(pdf.max()) * 1e-7))
    ax1.set_xlabel(EIG_LABEL)
    ax1.set_ylabel("density (1 / λ unit)")
    ax1.set_title("Spectral density (log scale)")
    # the cumulative density as the fraction of eigenvalues above each value, on a log
    # scale, so that the outliers above the bulk near zero stay visible
    n = getattr(den, "n", None)
    above = np.clip(1.0 - cdf, 0.0, 1.0)
    lowest = 0.5 / n if n else max(float(above[above > 0].min(initial=1.0)) * 0.5, 1e-6)
    ax2.semilogy(grid, np.maximum(above, lowest), color="C2", label="fraction above λ")
    stderr = getattr(den, "cdf_stderr", None)
    if stderr is not None and getattr(den, "num_probes", 1) > 1:
        se = np.nan_to_num(np.asarray(stderr(grid), dtype=np.float64))
        ax2.fill_between(
            grid,
            np.maximum(above - se, lowest),
            np.maximum(above + se, lowest),
            color="C2",
            alpha=0.25,
            label="±1 standard error (probes)",
        )
    ax2.set_ylim(lowest * 0.8, 1.5)
    ax2.set_xlabel(EIG_LABEL)
    ax2.set_ylabel("fraction of eigenvalues above λ")
    ax2.set_title("Cumulative density (log scale)")
    if n:
        sec = ax2.secondary_yaxis("right", functions=(lambda f: f * n, lambda c: c / n))
        sec.set_ylabel(f"number of eigenvalues above λ (of {n:,})")
    if extra is not None:
        for ax in (ax1, ax2):
            for j, lam in enumerate(extra):
                ax.axvline(
                    lam,
                    color="crimson",
                    lw=0.6,
                    alpha=0.6,
                    label="top-k (Lanczos)" if j == 0 else None,
                )
        ax1.legend(frameon=False, loc="upper right")
    ax2.legend(frameon=False, loc="upper right", fontsize=7.5)
    # the share of eigenvalues in the bulk near zero
    nodes = np.asarray(den.nodes, dtype=np.float64)
    span = float(np.max(np.abs(nodes))) if nodes.size else 1.0
    near = float(den.cdf(0.01 * span) - den.cdf(-0.01 * span))
    ax1.text(
        0.97,
        0.55,
        f"{100 * near:.1f}% of eigenvalues lie\nwithin ±{_fmt(0.01 * span, 2)} of 0 "
        "(1% of max |λ|)",
        transform=ax1.transAxes,
        ha="right",
        va="bottom",
        fontsize=8,
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"},
    )
    probes = den.settings.get("num_probes", "?") if hasattr(den, "settings") else "?"
    steps = den.settings.get("num_steps", "?") if hasattr(den, "settings") else "?"
    fig.suptitle(
        title
        or f"Stochastic Lanczos quadrature: {steps} steps × {probes} probe(s), "
        f"{getattr(den, 'num_matvecs', '?')} HVPs"
    )
    return fig


# --------------------------------------------------------------------------- sketch
@_styled
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
    fig = _figure(9.0, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
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


# --------------------------------------------------------------------------- landscapes
def _dir_label(res: LandscapeResult, i: int) -> str:
    if res.kind == "eigen":
        return f"step along eigenvector v{i + 1} (parameter-space distance)"
    if res.kind == "random":
        return f"step along random direction d{i + 1} (× filter norm)"
    if res.kind == "gradient":
        return (
            "step along gradient g/‖g‖ (parameter-space distance)"
            if i == 0
            else ("step along random unit direction ⊥ g (parameter-space distance)")
        )
    return f"step along direction {i + 1} (× its norm {res.direction_norms[i]:.3g})"


@_styled
def plot_landscape(
    res: LandscapeResult,
    *,
    curvatures: Sequence[float] | np.ndarray | None = None,
    title: str | None = None,
) -> Figure:
    """A 1-D loss curve or a 2-D loss surface (contours and a 3-D view).

    Args:
        res: a `loss_landscape` result.
        curvatures: eigenvalues along the directions, to overlay the quadratic
            model ``L0 + s a + lambda a^2 / 2`` on 1-D curves (default: the
            result's own curvatures, for eigenvector directions).
        title: the figure title.
    """
    curv = res.curvatures if curvatures is None else np.asarray(curvatures)
    kind = {
        "eigen": "top Hessian eigenvectors",
        "random": "random filter-normalized directions",
        "gradient": "the gradient",
        "given": "given directions",
    }.get(res.kind, res.kind)
    if res.ndim == 1:
        fig = _figure(5.2, 3.8)
        ax = fig.subplots()
        a = np.asarray(res.coordinates[0])
        ax.plot(a, res.losses, color="C0", lw=1.6, label="loss")
        if curv is not None and len(curv) >= 1:
            s = 0.0 if res.slopes is None else float(res.slopes[0])
            q = res.origin_loss + s * a + 0.5 * float(curv[0]) * a**2
            ax.plot(
                a, q, "--", color="C3", lw=1.1, label=f"quadratic model, λ = {_fmt(float(curv[0]))}"
            )
            lo, hi = float(np.min(res.losses)), float(np.max(res.losses))
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.15 * (hi - lo))
        ax.plot([0.0], [res.origin_loss], "ko", ms=4, label="current parameters")
        ax.set_xlabel(_dir_label(res, 0))
        ax.set_ylabel("loss")
        ax.legend(frameon=False)
        fig.suptitle(title or f"Loss along {kind}")
        return fig
    a, b = (np.asarray(c) for c in res.coordinates)
    Z = np.asarray(res.losses, dtype=np.float64)
    fig = _figure(10.0, 4.2)
    ax1 = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2, projection="3d")
    A, B = np.meshgrid(a, b, indexing="ij")
    zmin, zmax = float(Z.min()), float(Z.max())
    if zmin > 0 and zmax / zmin > 20:
        # losses spanning decades: geometric levels, so the basin is resolved
        levels = np.geomspace(zmin, zmax, 25)
        norm: Any = mpl.colors.LogNorm(vmin=zmin, vmax=zmax)
        scale = "log scale"
    else:
        levels = np.linspace(zmin, zmax if zmax > zmin else zmin + 1e-12, 25)
        norm = None
        scale = "linear scale"
    cs = ax1.contourf(A, B, Z, levels=levels, cmap="viridis", norm=norm)
    ax1.contour(A, B, Z, levels=levels[::3], colors="white", linewidths=0.5, alpha=0.7)
    cbar = fig.colorbar(cs, ax=ax1, shrink=0.9)
    cbar.set_label(f"loss ({scale})")
    if norm is not None:
        ticks = _log_ticks(zmin, zmax)
        cbar.set_ticks(ticks, labels=[_fmt(t, 2) for t in ticks])
    ax1.plot([0.0], [0.0], marker="*", color="crimson", ms=10, mec="white", mew=0.6)
    ax1.set_xlabel(_short_dir(res, 0))
    ax1.set_ylabel(_short_dir(res, 1))
    ax1.set_title("Loss contours (★: current parameters)")
    ax1.set_aspect("equal" if np.isclose(np.ptp(a), np.ptp(b)) else "auto")
    ax1.grid(False)
    ax2.plot_surface(A, B, Z, cmap="viridis", linewidth=0, antialiased=True, rcount=40, ccount=40)
    ax2.set_xlabel(_short_dir(res, 0), labelpad=2)
    ax2.set_ylabel(_short_dir(res, 1), labelpad=2)
    ax2.set_zlabel("loss", labelpad=2)
    ax2.set_title("Loss surface")
    ax2.view_init(elev=30, azim=-60)
    ax2.tick_params(labelsize=7, pad=0)
    for axis in (ax2.xaxis, ax2.yaxis, ax2.zaxis):
        axis.set_major_locator(mpl.ticker.MaxNLocator(4))
    extra = ""
    if curv is not None and len(curv) >= 2:
        extra = f" (λ1 = {_fmt(float(curv[0]), 3)}, λ2 = {_fmt(float(curv[1]), 3)})"
    fig.suptitle(title or f"Loss on the plane of {kind}{extra}")
    return fig


def _log_ticks(lo: float, hi: float) -> list[float]:
    """About five round tick values between lo and hi on a log scale."""
    ticks = [t for t in mpl.ticker.LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(lo, hi)]
    ticks = [t for t in ticks if lo <= t <= hi]
    while len(ticks) > 6:
        ticks = ticks[::2]
    return ticks or [lo, hi]


def _short_dir(res: LandscapeResult, i: int) -> str:
    if res.kind == "eigen":
        return f"α{i + 1} along v{i + 1}"
    if res.kind == "random":
        return f"α{i + 1} along d{i + 1} (× filter norm)"
    if res.kind == "gradient":
        return "α along g/‖g‖" if i == 0 else "β along d ⊥ g"
    return f"α{i + 1} along direction {i + 1}"


@_styled
def plot_landscapes_1d(
    curves: Mapping[str, LandscapeResult],
    *,
    title: str | None = None,
) -> Figure:
    """Several 1-D loss curves on one axis (e.g. along v1, v2 and a random unit direction).

    Curves with a curvature also show their quadratic model as a dashed line.
    """
    fig = _figure(5.6, 3.9)
    ax = fig.subplots()
    lo, hi = np.inf, -np.inf
    for j, (name, res) in enumerate(curves.items()):
        if res.ndim != 1:
            raise ValueError(f"{name}: plot_landscapes_1d takes 1-D landscapes; use plot_landscape")
        a = np.asarray(res.coordinates[0])
        ax.plot(a, res.losses, color=f"C{j}", lw=1.6, label=name)
        lo, hi = min(lo, float(np.min(res.losses))), max(hi, float(np.max(res.losses)))
        if res.curvatures is not None and len(res.curvatures):
            s = 0.0 if res.slopes is None else float(res.slopes[0])
            q = res.origin_loss + s * a + 0.5 * float(res.curvatures[0]) * a**2
            ax.plot(a, q, "--", color=f"C{j}", lw=0.9, alpha=0.8)
    ax.plot([], [], "--", color="0.4", lw=0.9, label="quadratic model L0 + gα + λα²/2")
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.1 * (hi - lo))
    ax.set_xlabel("step along unit direction (parameter-space distance)")
    ax.set_ylabel("loss")
    ax.legend(frameon=False, fontsize=8)
    fig.suptitle(title or "Loss along single directions through the parameters")
    return fig


# --------------------------------------------------------------------------- layers
@_styled
def plot_layer_traces(
    traces: TraceResult | Mapping[str, tuple[float, float] | float],
    *,
    title: str | None = None,
) -> Figure:
    """Per-layer (or per-block) traces as horizontal bars with ±1 standard error bars.

    Args:
        traces: a `trace` result with ``block_estimates`` (and ``block_stderrs``),
            or a mapping name -> (estimate, stderr) or name -> estimate.
        title: the figure title.
    """
    if isinstance(traces, Mapping):
        names = list(traces)
        est, err = [], []
        for n in names:
            v = traces[n]
            if isinstance(v, (tuple, list)):
                est.append(float(v[0]))
                err.append(float(v[1]))
            else:
                est.append(float(v))
                err.append(np.nan)
        total = None
    else:
        if traces.block_estimates is None:
            raise ValueError("this trace result has no per-block estimates: pass blocks= to trace")
        names = list(traces.block_estimates)
        est = [float(traces.block_estimates[n]) for n in names]
        errs = traces.block_stderrs or {}
        err = [float(errs.get(n, np.nan)) for n in names]
        total = (traces.estimate, traces.stderr, traces.num_matvecs)
    fig = _figure(6.4, 0.6 + 0.32 * max(len(names), 3))
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    e = np.asarray(err)
    ax.barh(
        y,
        est,
        color=["C3" if v < 0 else "C0" for v in est],
        alpha=0.85,
        xerr=np.where(np.isfinite(e), e, 0.0),
        error_kw={"ecolor": "0.2", "capsize": 2.5, "lw": 0.9},
    )
    ax.axvline(0.0, color="k", lw=0.7)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_ylabel("layer (parameter block)")
    ax.set_xlabel("trace of the layer's Hessian block (loss / parameter²), ±1 standard error")
    ax.grid(axis="y", visible=False)
    if total is not None:
        sub = f"total {_fmt(total[0])} ± {_fmt(total[1], 2)}, {total[2]} HVPs"
    else:
        sub = f"{len(names)} blocks"
    fig.suptitle(title or f"Per-layer Hessian traces ({sub})")
    return fig


# --------------------------------------------------------------------------- monitor
@_styled
def plot_monitor(
    result: MonitorResult,
    *,
    lr_key: str | None = "lr",
    x_label: str = "training step",
    title: str | None = None,
) -> Figure:
    """A `SpectrumMonitor` series: top eigenvalues (with 2/lr), trace, and HVPs per update.

    Args:
        result: `SpectrumMonitor.result()` or a loaded `MonitorResult`.
        lr_key: recorded value holding the learning rate of plain gradient descent;
            where present, its stability threshold 2 / lr is drawn (None: never).
        x_label: what the steps count.
        title: the figure title.
    """
    recs = list(result.records)
    has_trace = any(r.get("trace") is not None for r in recs)
    fig = _figure(11.0 if has_trace else 7.6, 3.5)
    axes = fig.subplots(1, 3 if has_trace else 2)
    ax1 = axes[0]
    steps = np.asarray([r["step"] for r in recs], dtype=np.float64)
    k = result.k
    for i in range(k):
        vals = np.asarray(
            [r["eigenvalues"][i] if len(r["eigenvalues"]) > i else np.nan for r in recs]
        )
        ax1.plot(steps, vals, marker="o", ms=2.5, lw=1.2, label=f"λ{i + 1}" if k <= 6 else None)
    lrs = [r.get(lr_key) for r in recs] if lr_key else []
    if any(v is not None for v in lrs):
        thr = np.asarray([2.0 / float(v) if v else np.nan for v in lrs])
        ax1.plot(steps, thr, "k--", lw=1.0, label="2 / learning rate")
    ax1.set_xlabel(x_label)
    ax1.set_ylabel(EIG_LABEL)
    ax1.set_title(f"Top-{k} Hessian eigenvalues")
    ax1.legend(frameon=False, fontsize=8)
    ax2 = axes[1]
    if has_trace:
        tsteps = np.asarray([r["step"] for r in recs if r.get("trace") is not None])
        tr = np.asarray([r["trace"] for r in recs if r.get("trace") is not None])
        se = np.asarray([r.get("trace_stderr", 0.0) for r in recs if r.get("trace") is not None])
        ax2.plot(tsteps, tr, color="C2", marker="o", ms=2.5, label="total")
        ax2.fill_between(
            tsteps, tr - se, tr + se, color="C2", alpha=0.25, label="±1 standard error"
        )
        layers = [r.get("layer_traces") or {} for r in recs if r.get("trace") is not None]
        names = list(dict.fromkeys(n for lt in layers for n in lt))
        for j, name in enumerate(names):
            vals = np.asarray([lt[name][0] if name in lt else np.nan for lt in layers])
            ax2.plot(tsteps, vals, lw=0.9, ls="--", color=f"C{(j + 3) % 10}", label=f"layer {name}")
        ax2.set_xlabel(x_label)
        ax2.set_ylabel("trace of the Hessian (loss / parameter²)")
        ax2.set_title("Hessian trace (XTrace)" + (" and per layer" if names else ""))
        ax2.legend(frameon=False, fontsize=8)
        ax3 = axes[2]
    else:
        ax3 = ax2
    warm = np.asarray([r["eig_matvecs"] for r in recs], dtype=np.float64)
    cold = np.asarray(
        [r["cold_matvecs"] if r.get("cold_matvecs") is not None else np.nan for r in recs],
        dtype=np.float64,
    )
    ax3.plot(steps, warm, marker="o", ms=2.5, color="C0", label="used (warm start)")
    if np.isfinite(cold).any():
        ax3.plot(steps, cold, marker="s", ms=2.5, color="C1", ls="--", label="cold start")
    ax3.set_xlabel(x_label)
    ax3.set_ylabel("HVPs per eigensolve")
    saved = result.hvps_saved
    ax3.set_title("Eigensolver cost" + (f" ({saved} HVPs saved)" if saved is not None else ""))
    ax3.set_ylim(bottom=0)
    ax3.legend(frameon=False, fontsize=8)
    fig.suptitle(
        title or f"Spectrum during training: {len(recs)} updates, {result.num_matvecs} HVPs"
    )
    return fig
