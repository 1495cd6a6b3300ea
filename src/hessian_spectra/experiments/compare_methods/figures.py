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
    """A symmetric-log x axis with a labelled tick every other decade (no crowding at 0)."""
    ax.set_xscale("symlog", linthresh=linthresh)
    lo, hi = int(np.floor(np.log10(linthresh))), int(np.ceil(np.log10(span)))
    decades = [10.0**e for e in range(hi, lo - 1, -2)]
    ticks = sorted([-x for x in decades] + [0.0] + decades)
    ax.set_xticks(ticks, ["0" if t == 0 else f"{t:.0e}" for t in ticks], fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())


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


@styled
def figure4(plain: GhostCount, reference: np.ndarray, title: str, out: Path) -> Path:
    """Top Ritz values of plain Lanczos per iteration against the reference (study's Figure 4)."""
    fig, ax = new_figure(7.0, 4.2)
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
def figure6(entry: Mapping[str, Any], reference: np.ndarray, title: str, out: Path) -> Path:
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
    ax.set_xlabel("eigenvalue λ (loss / parameter²)")
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
    data = {"trace": tr, "reference_trace": ref.get("trace")}
    return save_figure(fig, out / "trace_estimates.png", data, dpi=FIGURE_DPI, palette=True)


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
        figure4(m.plain, top, name, out),
        figure5(record, m.lanczos, m.plain, name, out),
        figure_trace(record["trace"], record["reference"], name, out),
    ]
    for e in record["sketches"].values():
        if e["kind"] == "rademacher":
            figs.append(figure6(e, top, name, out))
    fig = hplots.plot_convergence(
        m.lanczos,
        reference=top,
        title=f"Fig. 4 (ours): Lanczos, full reorth., tol {cfg.tol}: {name}",
    )
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
    sk = record["sketches"]
    fig = hplots.plot_sketch(
        {f"{e['kind']} d={e['size']}": m.sketches[key] for key, e in sk.items()},
        top,
        k=cfg.k,
        title=f"Fig. 19 analogue: sketch errors, {name}",
    )
    data = {"sketches": sk, "reference": top}
    figs.append(
        save_figure(fig, out / "fig19_sketch_errors.png", data, dpi=FIGURE_DPI, palette=True)
    )
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
