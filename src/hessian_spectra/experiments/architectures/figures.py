"""The figure of `experiment architectures`: cost and accuracy of each method, per network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hessian_spectra.experiments._io import FIGURE_DPI
from hessian_spectra.figures import new_figure, save_figure, style

#: The sketch kinds drawn, each at the smallest size of the runs (the study's 50).
KINDS = ("rademacher", "rangefinder", "nystrom")


def _per_arch(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        out.setdefault(r["problem"]["architecture"], []).append(r)
    return out


def draw_summary(records: Sequence[Mapping[str, Any]], out: str | Path) -> list[Path]:
    """Three panels, one point per seed: HVPs for the top k (Lanczos vs PyHessian-rule
    power iteration), their largest relative error, and the sketches' mean error."""
    runs = _per_arch(records)
    names = list(runs)
    x = np.arange(len(names))
    data: dict[str, Any] = {"architectures": names, "hvps": {}, "errors": {}, "sketches": {}}
    with style():
        fig, axes = new_figure(7.0, 8.4, nrows=3, sharex=True)
        for j, (method, marker, shift) in enumerate(
            (("lanczos", "o", -0.12), ("power", "s", 0.12))
        ):
            label = "Lanczos (ours)" if method == "lanczos" else "power, PyHessian's rule"
            hv = [[r["methods"][method]["num_matvecs"] for r in runs[n]] for n in names]
            er = [
                [r["methods"][method]["max_abs_relative_error_sorted"] for r in runs[n]]
                for n in names
            ]
            data["hvps"][method], data["errors"][method] = hv, er
            for i in range(len(names)):
                kw: dict[str, Any] = {"label": label} if i == 0 else {}
                axes[0].plot([x[i] + shift] * len(hv[i]), hv[i], marker, color=f"C{j}", **kw)
                axes[1].plot(
                    [x[i] + shift] * len(er[i]), np.maximum(er[i], 1e-17), marker, color=f"C{j}"
                )
        axes[0].set_yscale("log")
        axes[0].set_ylabel("HVPs for the top k")
        # between the two groups of points (Lanczos below 10^2, power iteration above)
        axes[0].legend(loc="center left", fontsize="small")
        axes[1].set_yscale("log")
        axes[1].set_ylabel("max relative error")
        size = min(e["size"] for e in records[0]["sketches"].values())
        keys = [f"{kind}:{size}" for kind in KINDS if f"{kind}:{size}" in records[0]["sketches"]]
        width = 0.8 / len(keys)
        for j, key in enumerate(keys):
            vals = [[r["sketches"][key]["mean_percent_error"] for r in runs[n]] for n in names]
            data["sketches"][key] = vals
            for i in range(len(names)):
                kw = {"label": key.replace(":", ", d = ")} if i == 0 else {}
                pos = x[i] - 0.4 + width * (j + 0.5)
                axes[2].plot([pos] * len(vals[i]), vals[i], "^v<"[j], color=f"C{j + 2}", **kw)
        axes[2].axhline(0.0, color="0.5", lw=0.8)
        axes[2].set_yscale("symlog", linthresh=1.0)
        every = [v for vals in data["sketches"].values() for seed_vals in vals for v in seed_vals]
        if every:  # every point inside the axes, with room on both sides
            lo, hi = min(min(every), -1.0), max(max(every), 1.0)
            axes[2].set_ylim(lo * 2.0 if lo < 0 else lo, hi * 2.0)
        axes[2].set_ylabel("sketch: mean error of the top k (%)\n(symlog axis)")
        axes[2].set_xticks(x, names, rotation=20)
        # below the tick labels, where it covers no point
        axes[2].legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), fontsize="small", ncol=3)
        counts = {len(v) for v in runs.values()}
        seeds = max(counts)
        fig.suptitle(
            f"{len(names)} networks, {'' if len(counts) == 1 else 'up to '}{seeds} training "
            f"seed{'s' if seeds > 1 else ''} each (one point per seed)"
        )
    return [
        save_figure(
            fig, Path(out) / "architectures-methods.png", data, dpi=FIGURE_DPI, palette=True
        )
    ]
