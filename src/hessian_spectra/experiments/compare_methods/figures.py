"""The figures of `compare-methods`: analogues of the study's Figures 2-6 and 19, and ours.

Each figure is drawn from the record and raw results of `measures.measure`
with `hessian_spectra.figures` (and the library's `plots` where one exists),
and saved with the numbers it draws in a JSON file beside the PNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import NullLocator

from hessian_spectra import history
from hessian_spectra import plots as hplots
from hessian_spectra.experiments._io import FIGURE_DPI
from hessian_spectra.experiments.compare_methods.config import CompareConfig
from hessian_spectra.experiments.compare_methods.measures import Measurements
from hessian_spectra.experiments.ghosts import GhostCount
from hessian_spectra.figures import new_figure, save_figure, styled


def _symlog_x(ax: Any, linthresh: float, span: float) -> None:
    """A symmetric-log x axis with a labelled tick every other decade (no crowding at 0).

    The axis label says that it is symmetric-log and where it is linear.
    """
    ax.set_xscale("symlog", linthresh=linthresh)
    lo, hi = int(np.floor(np.log10(linthresh))), int(np.ceil(np.log10(span)))
    decades = [10.0**e for e in range(hi, lo - 1, -2)]
    ticks = sorted([-x for x in decades] + [0.0] + decades)
    ax.set_xticks(ticks, ["0" if t == 0 else f"{t:.0e}" for t in ticks], fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(
        f"eigenvalue λ (loss / parameter²); symmetric-log axis, linear within ±{linthresh:.0e}"
    )


@styled
def figure3(record: Mapping[str, Any], title: str, out: Path) -> Path:
    """HVPs and seconds per eigenvalue of power iteration, and when each method had eigenvalue i."""
    per = record["methods"]["power"]["per_eigenvalue"]
    fig, (ax1, ax2) = new_figure(10.0, 3.8, ncols=2)
    idx = [p["index"] for p in per]
    ax1.bar(idx, [p["matvecs"] for p in per], color="C0", alpha=0.7, label="HVPs on eigenvalue i")
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
    return save_figure(fig, out / "fig03_power_cost.png", data, dpi=FIGURE_DPI, palette=True)


def reference_label(ref: Mapping[str, Any]) -> str:
    """What the reference eigenvalues are, for a legend."""
    if ref.get("kind") == "exact":
        return "exact eigenvalues (dense Hessian)"
    return f"Lanczos reference (tol {ref.get('tol', '?')})"


@styled
def figure4(
    plain: GhostCount,
    reference: np.ndarray,
    title: str,
    out: Path,
    *,
    ref_label: str = "reference eigenvalues",
) -> Path:
    """Top Ritz values of plain Lanczos per iteration against the reference (study's Figure 4).

    At the last step the Ritz values that copy one eigenvalue are drawn side by
    side (one marker per copy) with their count, so that ghost copies, which
    coincide to many digits, can be seen and counted.
    """
    fig, ax = new_figure(8.5, 4.6)
    for rec in plain.history[:-1]:
        ax.plot(np.full(len(rec["ritz_top"]), rec["step"]), rec["ritz_top"], "k.", ms=2.5)
    steps = plain.num_steps
    last = np.asarray(plain.ritz_top, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    # group the last step's Ritz values by the reference eigenvalue they copy
    used = np.zeros(last.size, dtype=bool)
    for j, r in enumerate(ref):
        near = np.flatnonzero(~used & (np.abs(last - r) <= plain.rtol * abs(r)))
        if near.size == 0:
            continue
        used[near] = True
        ax.plot(steps + 0.9 * np.arange(near.size), last[near], "o", mfc="none", mec="C0", ms=4)
        if near.size > 1:
            ax.annotate(
                f"{near.size} copies" if j == 0 else f"×{near.size}",
                (steps + 0.9 * (near.size - 1) + 0.8, r),
                va="center",
                fontsize=9,
                color="C0",
            )
    if np.any(~used):
        ax.plot(np.full(int(np.sum(~used)), steps), last[~used], "kx", ms=4)
    x_ref = steps + 9
    ax.plot(np.full(ref.size, x_ref), ref, "o", color="crimson", ms=4, label=ref_label)
    ax.plot([], [], "k.", label=f"top-{len(plain.ritz_top)} Ritz values, plain Lanczos")
    ax.plot([], [], "o", mfc="none", mec="C0", label=f"step {steps}: copies side by side, counted")
    ax.set_xlim(-1, x_ref + 2)
    ax.set_xlabel("Lanczos iteration (= HVPs)")
    ax.set_ylabel("eigenvalue (loss / parameter²), log axis")
    ax.set_yscale("log")
    # below the axes: no data point is covered
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=9)
    ax.set_title(
        f"Fig. 4 analogue: {title}\nplain Lanczos (no reorthogonalization): at step {steps} "
        f"the top {len(plain.ritz_top)} hold {plain.top_copies} copies of λ1 and "
        f"{plain.distinct} distinct eigenvalues",
        fontsize=9,
    )
    data = {"history": plain.history, "reference": reference, "ghosts": plain.to_dict()}
    return save_figure(fig, out / "fig04_plain_lanczos.png", data, dpi=FIGURE_DPI, palette=True)


@styled
def figure5(
    record: Mapping[str, Any], lanczos_res: Any, plain: GhostCount, title: str, out: Path
) -> Path:
    """Wall time per iteration of Lanczos (ours and plain) and of power iteration."""
    fig, (ax1, ax2) = new_figure(10.0, 3.8, ncols=2)
    series = {}
    hist = [r for r in lanczos_res.history if history.SECONDS in r]
    mv = [int(r[history.MATVECS]) for r in hist]
    sec = [float(r[history.SECONDS]) for r in hist]
    series["lanczos (full reorth.)"] = (mv, sec)
    series["plain Lanczos"] = (
        [r[history.MATVECS] for r in plain.history],
        [r[history.SECONDS] for r in plain.history],
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
    return save_figure(fig, out / "fig05_lanczos_time.png", data, dpi=FIGURE_DPI, palette=True)


@styled
def figure6(
    entry: Mapping[str, Any],
    reference: np.ndarray,
    title: str,
    out: Path,
    *,
    ref_label: str = "reference eigenvalues",
) -> Path:
    """Cumulative spectrum of a sketch's eigenvalues (the study's Figure 6)."""
    lam = np.sort(np.asarray(entry["eigenvalues"], dtype=np.float64))
    frac_above = 1.0 - np.arange(1, lam.size + 1) / lam.size
    fig, ax = new_figure(7.0, 4.0)
    ax.step(
        lam,
        frac_above,
        where="post",
        color="C0",
        label=f"{entry['kind']} sketch, d={entry['size']}",
    )
    for j, r in enumerate(reference):
        ax.axvline(
            r,
            color="crimson",
            lw=0.6,
            alpha=0.5,
            label=f"{ref_label}, top {len(reference)}" if j == 0 else None,
        )
    ax.axvline(0.0, color="black", lw=0.8)
    _symlog_x(ax, float(np.max(np.abs(lam))) * 1e-3, float(np.max(np.abs(lam))))
    ax.set_ylabel("fraction of sketch eigenvalues > λ")
    ax.legend(frameon=False)
    ax.set_title(
        f"Fig. 6 analogue: {title}\n{entry['num_negative']} of {lam.size} sketch eigenvalues "
        f"negative; max {lam[-1]:.4g} (true λ1 {reference[0]:.4g})",
        fontsize=9,
    )
    data = {"eigenvalues": lam, "fraction_above": frac_above, "reference": reference}
    return save_figure(
        fig, out / f"fig06_sketch_cdf_d{entry['size']}.png", data, dpi=FIGURE_DPI, palette=True
    )


@styled
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
    fig, ax = new_figure(7.0, 4.0)
    ax.plot(grid, slq_above, color="C2", label=f"SLQ ({den.num_matvecs} HVPs)")
    if lam is not None:
        lam = np.sort(np.asarray(lam, dtype=np.float64))
        exact_above = 1.0 - np.searchsorted(lam, grid, side="right") / lam.size
        ax.plot(grid, exact_above, color="black", ls="--", lw=1.0, label="exact")
        data["exact_fraction_above"] = exact_above
    _symlog_x(ax, span * 1e-6, span)
    ax.set_yscale("log")
    ax.set_ylabel("fraction of eigenvalues > λ")
    ax.legend(frameon=False)
    ax.set_title(f"Fig. 2 analogue: cumulative spectrum\n{title}", fontsize=9)
    return save_figure(fig, out / "fig02_cdf.png", data, dpi=FIGURE_DPI, palette=True)


@styled
def figure_trace(tr: Mapping[str, Any], ref: Mapping[str, Any], title: str, out: Path) -> Path:
    """Trace estimates with +-2 standard errors, and PyHessian's running mean and stop."""
    names = [k for k in tr if k not in ("pyhessian_rule", "running_mean")]
    fig, (ax1, ax2) = new_figure(10.0, 3.8, ncols=2)
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
            label=(
                f"exact trace (dense Hessian) {ref['trace']:.5g}"
                if ref.get("kind") == "exact"
                else f"reference: Hutchinson, {ref.get('reference_trace_probes', 'many')} "
                f"probes, {ref['trace']:.5g}"
            ),
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
        ax2.axhline(
            ref["trace"],
            color="black",
            ls="--",
            lw=0.9,
            label="exact trace" if ref.get("kind") == "exact" else "reference trace",
        )
    ax2.set_xlabel("probes (HVPs)")
    ax2.set_ylabel("running mean of v·Hv (loss / parameter²)")
    ax2.set_title("PyHessian's stopping rule replayed")
    ax2.legend(frameon=False)
    fig.suptitle(f"Trace: {title}")
    data = {"trace": tr, "reference_trace": ref.get("trace")}
    return save_figure(fig, out / "trace_estimates.png", data, dpi=FIGURE_DPI, palette=True)


@styled
def figure19(
    sketches: Mapping[str, Any], top: np.ndarray, ref_label: str, title: str, out: Path
) -> Path:
    """Top-k eigenvalues of each sketch against the reference, and their percent errors.

    The eigenvalue panel has a log axis, so that the k values are spread over
    its height rather than squeezed under a well separated top eigenvalue;
    colour is the sketch kind, the line style its size; the legend sits below
    the panels, over no data.
    """
    top = np.asarray(top, dtype=np.float64)
    idx = np.arange(1, top.size + 1)
    fig, (ax1, ax2) = new_figure(11.0, 5.0, ncols=2)
    ax1.plot(idx, top, "k-", marker="o", ms=4, lw=1.4, label=ref_label, zorder=3)
    kinds = list(dict.fromkeys(e["kind"] for e in sketches.values()))
    sizes = sorted({e["size"] for e in sketches.values()})
    styles = ["-", "--", ":", "-."]
    markers = {"rademacher": "s", "rangefinder": "D", "nystrom": "^"}
    for e in sketches.values():
        lam = np.asarray(e["eigenvalues"], dtype=np.float64)[: top.size]
        err = np.asarray(e["percent_errors"], dtype=np.float64)
        kw = {
            "color": f"C{kinds.index(e['kind'])}",
            "ls": styles[sizes.index(e["size"]) % len(styles)],
            "marker": markers.get(e["kind"], "o"),
            "ms": 3.5,
            "lw": 1.0,
        }
        label = f"{e['kind']} d={e['size']} ({e['num_matvecs']} HVPs)"
        ax1.plot(idx[: lam.size], lam, label=label, **kw)
        ax2.plot(idx[: err.size], err, **kw)
    ax1.set_yscale("log")
    ax1.set_xlabel("index i (descending)")
    ax1.set_ylabel("eigenvalue λ_i (loss / parameter²), log axis")
    ax1.set_title("Top eigenvalues: sketches and the reference")
    ax2.axhline(0.0, color="black", lw=0.8)
    ax2.set_xlabel("index i (descending)")
    ax2.set_ylabel("100 (sketch - reference) / |reference| (%)")
    ax2.set_title("Percent error of each eigenvalue")
    for ax in (ax1, ax2):
        ax.set_xticks(list(range(1, top.size + 1, 2 if top.size > 10 else 1)))
    fig.legend(loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(f"Fig. 19 analogue: sketch errors, {title}")
    data = {"sketches": sketches, "reference": top, "reference_label": ref_label}
    return save_figure(fig, out / "fig19_sketch_errors.png", data, dpi=FIGURE_DPI, palette=True)


def title(record: Mapping[str, Any]) -> str:
    """The problem in one line, for the figures' titles."""
    p = record["problem"]
    if "model" in p:
        return (
            f"{p['model']} on {p['data']} ({p.get('num_samples')} samples), "
            f"n={record['n']}, seed {record['config']['seed']}"
        )
    return f"{p.get('operator')}, n={record['n']}, seed {record['config']['seed']}"


def draw_all(m: Measurements, cfg: CompareConfig, out: Path) -> list[Path]:
    """Every figure of a run, written under `out`; returns their paths."""
    record, top = m.record, m.top
    name = title(record)
    figs = [
        figure3(record, name, out),
        figure4(m.plain, top, name, out, ref_label=reference_label(m.reference)),
        figure5(record, m.lanczos, m.plain, name, out),
        figure_trace(record["trace"], record["reference"], name, out),
    ]
    for e in record["sketches"].values():
        if e["kind"] == "rademacher":
            figs.append(figure6(e, top, name, out, ref_label=reference_label(m.reference)))
    fig = hplots.plot_convergence(
        m.lanczos,
        reference=top,
        title=f"Fig. 4 (ours): Lanczos, full reorth., tol {cfg.tol}; dotted: "
        f"{reference_label(m.reference)}\n{name}",
    )
    # the residual panel's legend goes below the panels, over no data
    for panel in fig.axes:
        if (legend := panel.get_legend()) is not None and panel is not fig.axes[0]:
            legend.remove()
            fig.legend(
                *panel.get_legend_handles_labels(),
                loc="outside lower center",
                ncol=2,
                fontsize=9,
                frameon=False,
            )
    # a log axis spreads the top k over the panel's height (a linear one squeezes
    # all but a well separated top eigenvalue into its bottom)
    ax = fig.axes[0]
    if np.all(top > 0):
        ax.set_yscale("log")
        ax.set_ylim(0.5 * float(np.min(top)), 2.0 * float(np.max(top)))
        ax.set_ylabel(ax.get_ylabel() + ", log axis")
    data: dict[str, Any] = {"reference": top, "history": list(m.lanczos.history)}
    figs.append(
        save_figure(fig, out / "fig04_lanczos_ours.png", data, dpi=FIGURE_DPI, palette=True)
    )
    fig = hplots.plot_method_comparison(
        {"power (PyHessian rule)": m.power, "Lanczos": m.lanczos, "block Lanczos": m.block},
        reference=top,
        title=f"Top-{cfg.k}: {name}",
    )
    data = {"methods": record["methods"], "reference": top}
    figs.append(
        save_figure(fig, out / "methods_comparison.png", data, dpi=FIGURE_DPI, palette=True)
    )
    figs.append(figure19(record["sketches"], top, reference_label(m.reference), name, out))
    figs.append(figure2_cdf(m.density, m.reference, name, out))
    fig = hplots.plot_density(
        m.density,
        eigenvalues=top,
        title=f"Fig. 2 analogue: SLQ density, {cfg.density_steps} steps x "
        f"{cfg.density_probes} probe(s), {name}",
    )
    figs.append(
        save_figure(fig, out / "fig02_density.png", record["density"], dpi=FIGURE_DPI, palette=True)
    )
    return figs
