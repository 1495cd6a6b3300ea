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


@styled
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
    has_trace = any(r.get(Key.TRACE) is not None for r in recs)
    fig, axes = new_figure(11.0 if has_trace else 7.6, 3.5, ncols=3 if has_trace else 2)
    ax1 = axes[0]
    steps = np.asarray([r[Key.STEP] for r in recs], dtype=np.float64)
    k = result.k
    for i in range(k):
        vals = np.asarray(
            [r[Key.EIGENVALUES][i] if len(r[Key.EIGENVALUES]) > i else np.nan for r in recs]
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
        ax3 = axes[2]
    else:
        ax3 = ax2
    warm = np.asarray([r[Key.EIG_MATVECS] for r in recs], dtype=np.float64)
    cold = np.asarray(
        [r[Key.COLD_MATVECS] if r.get(Key.COLD_MATVECS) is not None else np.nan for r in recs],
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
