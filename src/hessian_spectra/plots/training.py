"""Curvature by layer and over training: per-layer traces and a `SpectrumMonitor` series."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from hessian_spectra.figures import new_figure, styled
from hessian_spectra.plots._common import EIG_LABEL, fmt
from hessian_spectra.results import MonitorKeys as Key
from hessian_spectra.results import MonitorResult, TraceResult


@styled
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
    fig, ax = new_figure(6.4, 0.6 + 0.32 * max(len(names), 3))
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
        sub = f"total {fmt(total[0])} ± {fmt(total[1], 2)}, {total[2]} HVPs"
    else:
        sub = f"{len(names)} blocks"
    fig.suptitle(title or f"Per-layer Hessian traces ({sub})")
    return fig


def threshold_from_lr(lr: float, beta1: float = 0.0) -> float:
    """The edge-of-stability threshold ``(2 + 2 beta1) / ((1 - beta1) lr)`` (Cohen et al. 2022).

    2 / lr for gradient descent (``beta1 = 0``); 38 / lr for Adam with
    ``beta1 = 0.9``, where it bounds the preconditioned sharpness.

    Example:
        >>> threshold_from_lr(0.1), round(threshold_from_lr(1e-3, 0.9))
        (20.0, 38000)
    """
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def _threshold_series(
    recs: list, lr_key: str | None, beta1_key: str | None
) -> tuple[np.ndarray, str, bool] | None:
    """(values, label, preconditioned) of the threshold the records hold or imply, or None."""
    if any(r.get(Key.THRESHOLD) is not None for r in recs):
        vals = np.asarray([r.get(Key.THRESHOLD) or np.nan for r in recs], dtype=np.float64)
        labels = [r[Key.THRESHOLD_LABEL] for r in recs if r.get(Key.THRESHOLD_LABEL)]
        label = labels[-1].replace("lr", "learning rate") if labels else "stability threshold"
        pre = any(r.get(Key.THRESHOLD_OF) == "preconditioned" for r in recs)
        return vals, label, pre
    lrs = [r.get(lr_key) for r in recs] if lr_key else []
    if not any(v is not None for v in lrs):
        return None
    betas = [float(r.get(beta1_key) or 0.0) if beta1_key else 0.0 for r in recs]
    vals = np.asarray(
        [threshold_from_lr(float(v), b) if v else np.nan for v, b in zip(lrs, betas, strict=True)]
    )
    b = betas[-1]
    if b == 0.0:
        return vals, "2 / learning rate", False
    coef = fmt((2.0 + 2.0 * b) / (1.0 - b), 3)
    return vals, f"{coef} / learning rate (β1 = {fmt(b, 3)})", True


def _eigen_panel(ax, steps, recs, key: str, k: int, threshold, title: str, x_label: str) -> None:
    for i in range(k):
        vals = np.asarray([r[key][i] if len(r.get(key) or []) > i else np.nan for r in recs])
        ax.plot(steps, vals, marker="o", ms=2.5, lw=1.2, label=f"λ{i + 1}" if k <= 6 else None)
    if threshold is not None:
        ax.plot(steps, threshold[0], "k--", lw=1.0, label=threshold[1])
    ax.set_xlabel(x_label)
    ax.set_ylabel(EIG_LABEL)
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)


@styled
def plot_monitor(
    result: MonitorResult,
    *,
    lr_key: str | None = "lr",
    beta1_key: str | None = "beta1",
    x_label: str = "training step",
    title: str | None = None,
) -> Figure:
    """A `SpectrumMonitor` series: top eigenvalues against the stability threshold, trace, HVPs.

    With an adaptive optimizer the preconditioned eigenvalues get a panel of
    their own. The threshold drawn is the one the monitor recorded from its
    optimizer (``threshold``: 2 / lr for SGD, 38 / lr for Adam with beta1 = 0.9,
    on the preconditioned panel for Adam), else ``(2 + 2 beta1) / ((1 - beta1) lr)``
    from recorded ``lr`` and ``beta1`` values (2 / lr without ``beta1``).

    Args:
        result: `SpectrumMonitor.result()` or a loaded `MonitorResult`.
        lr_key: recorded value holding the learning rate, used when no threshold
            was recorded (None: never draw one from it).
        beta1_key: recorded value holding Adam's beta1 (or None).
        x_label: what the steps count.
        title: the figure title.
    """
    recs = list(result.records)
    has_trace = any(r.get(Key.TRACE) is not None for r in recs)
    has_pre = any(r.get(Key.PRECONDITIONED_EIGENVALUES) for r in recs)
    ncols = 2 + int(has_trace) + int(has_pre)
    fig, axes = new_figure(3.7 * ncols, 3.5, ncols=ncols)
    steps = np.asarray([r[Key.STEP] for r in recs], dtype=np.float64)
    k = result.k
    threshold = _threshold_series(recs, lr_key, beta1_key)
    pre_threshold = raw_threshold = None
    if threshold is not None and threshold[2] and has_pre:
        pre_threshold = threshold
    elif threshold is not None and threshold[2]:  # no preconditioned series to set it against
        raw_threshold = (threshold[0], f"{threshold[1]}, bounds P^-1/2 H P^-1/2", True)
    elif threshold is not None:
        raw_threshold = threshold
    _eigen_panel(
        axes[0],
        steps,
        recs,
        Key.EIGENVALUES,
        k,
        raw_threshold,
        f"Top-{k} Hessian eigenvalues",
        x_label,
    )
    col = 1
    if has_pre:
        _eigen_panel(
            axes[1],
            steps,
            recs,
            Key.PRECONDITIONED_EIGENVALUES,
            k,
            pre_threshold,
            "Preconditioned: P^-1/2 H P^-1/2",
            x_label,
        )
        col = 2
    if has_trace:
        ax2 = axes[col]
        col += 1
        traced = [r for r in recs if r.get(Key.TRACE) is not None]
        tsteps = np.asarray([r[Key.STEP] for r in traced])
        tr = np.asarray([r[Key.TRACE] for r in traced])
        se = np.asarray([r.get(Key.TRACE_STDERR, 0.0) for r in traced])
        ax2.plot(tsteps, tr, color="C2", marker="o", ms=2.5, label="total")
        ax2.fill_between(
            tsteps, tr - se, tr + se, color="C2", alpha=0.25, label="±1 standard error"
        )
        layers = [r.get(Key.LAYER_TRACES) or {} for r in traced]
        names = list(dict.fromkeys(n for lt in layers for n in lt))
        for j, name in enumerate(names):
            vals = np.asarray([lt[name][0] if name in lt else np.nan for lt in layers])
            ax2.plot(tsteps, vals, lw=0.9, ls="--", color=f"C{(j + 3) % 10}", label=f"layer {name}")
        ax2.set_xlabel(x_label)
        ax2.set_ylabel("trace of the Hessian (loss / parameter²)")
        ax2.set_title("Hessian trace (XTrace)" + (" and per layer" if names else ""))
        ax2.legend(frameon=False, fontsize=8)
    ax3 = axes[col]
    warm = np.asarray([r[Key.EIG_MATVECS] for r in recs], dtype=np.float64)
    cold = np.asarray(
        [r[Key.COLD_MATVECS] if r.get(Key.COLD_MATVECS) is not None else np.nan for r in recs],
        dtype=np.float64,
    )
    ax3.plot(steps, warm, marker="o", ms=2.5, color="C0", label="used (warm start)")
    if np.isfinite(cold).any():
        ax3.plot(steps, cold, marker="s", ms=2.5, color="C1", ls="--", label="cold start")
    if has_pre:
        pre = [r.get(Key.PRECONDITIONED_MATVECS) for r in recs]
        ax3.plot(
            steps,
            np.asarray([np.nan if v is None else v for v in pre], dtype=np.float64),
            marker="^",
            ms=2.5,
            color="C4",
            label="preconditioned (warm start)",
        )
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
