"""The study's claims about its Figures 7-18, and ours, checked on a run's rows.

The study read coarse trends from its plots ("as the Hessian becomes more
singular, the error decreases"), so a trend is judged on the three-way scale of
`_io.trend_verdict`: it holds when every step goes the claimed way, holds partly
(with the numbers) when every series goes that way end to end and at least half
of the steps do, and does not hold otherwise. Universal statements ("always",
"never") are checked as stated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hessian_spectra.experiments._io import (
    FAILS,
    HOLDS,
    VERDICTS,
    Claim,
    markdown_table,
    share_verdict,
    trend_verdict,
    verdict_cell,
)
from hessian_spectra.experiments.sketch_synthetic.config import SketchSyntheticConfig
from hessian_spectra.experiments.sketch_synthetic.measures import (
    error_array,
    mean_abs_grid,
    nan_reduce,
)

#: Tolerance (percent) under which an error counts as "not above the truth":
#: rounding in a float64 eigensolver, not an over-estimate.
ROUNDING_PERCENT = 1e-7


def _falls_along(rows: np.ndarray) -> tuple[list[bool], list[bool], list[bool]]:
    """A trend along each row: whether each step (all rows, in order) falls, whether each row's last
    value is below its first, whether each row falls at every step."""
    steps = [bool(x) for row in rows for x in np.diff(row) < 0]
    ends = [bool(row[-1] < row[0]) for row in rows]
    monotone = [bool(np.all(np.diff(row) < 0)) for row in rows]
    return steps, ends, monotone


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _range(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def _study_claims(arr: np.ndarray, fr: list[float], ra: list[float]) -> list[Claim]:
    """The study's four claims about its Rademacher sketch, on the error array `arr`."""
    claims: list[Claim] = []
    finite = arr[np.isfinite(arr)]
    num_neg = int(np.sum(finite <= 0))
    claims.append(
        Claim(
            key="always_overestimates",
            source="study",
            statement="every top-k eigenvalue of every Rademacher sketch is over-estimated",
            verdict=HOLDS if num_neg == 0 else FAILS,
            evidence={
                "num_errors": int(finite.size),
                "num_negative": num_neg,
                "fraction_positive": float(np.mean(finite > 0)),
                "min_percent_error": float(finite.min()),
                "max_percent_error": float(finite.max()),
            },
            numbers=f"{num_neg:,} of {finite.size:,} errors negative "
            f"({_pct(num_neg / finite.size)}), down to {finite.min():.0f}%",
        )
    )
    grid = mean_abs_grid(arr)
    # error falls with size: along each zero fraction (rows of the grid)
    size_steps, size_ends, size_monotone = _falls_along(grid)
    claims.append(
        Claim(
            key="error_falls_with_size",
            source="study",
            statement="for every zero fraction, mean |error| falls as the sketch ratio grows",
            verdict=trend_verdict(size_steps, size_ends),
            evidence={
                "zero_fractions": fr,
                "ratios": ra,
                "mean_abs_percent_error": grid.tolist(),
                "steps_falling": int(sum(size_steps)),
                "num_steps": len(size_steps),
                "monotone_per_zero_fraction": size_monotone,
            },
            numbers=f"falls at {sum(size_steps)} of {len(size_steps)} steps",
        )
    )
    # error falls with singularity: along each ratio (columns of the grid)
    sing_steps, sing_ends, sing_monotone = _falls_along(grid.T)
    gain = [float(grid[0, ri] / grid[-1, ri]) for ri in range(len(ra))]
    failing = [
        f"{100 * fr[fi]:.0f}->{100 * fr[fi + 1]:.0f}%"
        for fi in range(len(fr) - 1)
        if not all(grid[fi + 1, ri] < grid[fi, ri] for ri in range(len(ra)))
    ]
    claims.append(
        Claim(
            key="error_falls_with_singularity",
            source="study",
            statement="at every sketch ratio, mean |error| falls as the zero fraction grows",
            verdict=trend_verdict(sing_steps, sing_ends),
            evidence={
                "zero_fractions": fr,
                "ratios": ra,
                "mean_abs_percent_error": grid.tolist(),
                "steps_falling": int(sum(sing_steps)),
                "num_steps": len(sing_steps),
                "monotone_per_ratio": sing_monotone,
                "most_singular_below_least_singular_per_ratio": sing_ends,
                "least_over_most_singular_per_ratio": gain,
                "steps_rising_somewhere": failing,
            },
            numbers=f"falls at {sum(sing_steps)} of {len(sing_steps)} steps; "
            f"{100 * fr[-1]:.0f}% zeros below {100 * fr[0]:.0f}% at "
            f"{sum(sing_ends)} of {len(ra)} ratios, by {_range(gain)}x",
        )
    )
    series = nan_reduce(np.nanmean, arr, (1, 3))  # (fraction, ratio, rank)
    cmp: list[list[bool]] = []
    for fi in range(len(fr)):
        row_ok = []
        for ri in range(len(ra)):
            s = series[fi, ri]
            s = s[np.isfinite(s)]
            row_ok.append(bool(s.size >= 2 and s[0] < s[-1]))
        cmp.append(row_ok)
    flat = [x for r in cmp for x in r]
    claims.append(
        Claim(
            key="larger_eigenvalues_smaller_error",
            source="study",
            statement="in a series (zero fraction, ratio) the mean error at rank 1 is below "
            "that at the last rank",
            verdict=share_verdict(flat),
            evidence={
                "rank1_below_last_rank": cmp,
                "series_holding": int(sum(flat)),
                "num_series": len(flat),
            },
            numbers=f"in {sum(flat)} of {len(flat)} series",
        )
    )
    return claims


def evaluate_claims(
    rows: Sequence[Mapping[str, Any]], config: SketchSyntheticConfig
) -> list[Claim]:
    """Check the study's claims about Figures 7-18, and ours, on the run's numbers.

    The study's claims are about its Rademacher sketch:
    `always_overestimates` (every error positive, as stated: "always"),
    `error_falls_with_size` and `error_falls_with_singularity` (coarse trends of
    the mean |error| per cell, judged by `trend_verdict`), and
    `larger_eigenvalues_smaller_error` (the over-estimate "decreases for higher
    eigenvalues": the mean error at rank 1 below that at the last rank, judged
    over the series by `share_verdict`). Ours: range finder and Nystrom never
    over-estimate (as stated), and each is more accurate than the Rademacher
    sketch of the same size in every cell (`share_verdict` over the cells).
    """
    claims: list[Claim] = []
    fr = [float(f) for f in config.zero_fractions]
    ra = [float(r) for r in config.ratios]
    if "rademacher" in config.kinds:
        claims += _study_claims(error_array(rows, config, "rademacher"), fr, ra)
    for kind in ("rangefinder", "nystrom"):
        if kind not in config.kinds:
            continue
        arr = error_array(rows, config, kind)
        finite = arr[np.isfinite(arr)]
        above = int(np.sum(finite > ROUNDING_PERCENT))
        claims.append(
            Claim(
                key=f"{kind}_never_overestimates",
                source="library",
                statement=f"no {kind} eigenvalue exceeds the true one (beyond rounding)",
                verdict=HOLDS if above == 0 else FAILS,
                evidence={
                    "num_errors": int(finite.size),
                    "num_above": above,
                    "max_percent_error": float(finite.max()),
                    "min_percent_error": float(finite.min()),
                },
                numbers=f"{above} of {finite.size:,} above; largest {finite.max():+.1e}%",
            )
        )
    if "rademacher" in config.kinds:
        g_rd = mean_abs_grid(error_array(rows, config, "rademacher"))
        budgets = {"rangefinder": "2d HVPs (two passes)", "nystrom": "d HVPs, as the Rademacher"}
        for kind in ("rangefinder", "nystrom"):
            if kind not in config.kinds:
                continue
            g = mean_abs_grid(error_array(rows, config, kind))
            better = [bool(x) for x in (g < g_rd).ravel()]
            factor = (g_rd / np.maximum(g, 1e-300)).ravel()
            verdict = share_verdict(better)
            claims.append(
                Claim(
                    key=f"{kind}_beats_rademacher",
                    source="library",
                    statement=f"at every (zero fraction, ratio) the {kind} sketch's mean |error| "
                    f"is below the Rademacher sketch's at the same size d ({budgets[kind]})",
                    verdict=verdict,
                    evidence={
                        f"{kind}_mean_abs": g.tolist(),
                        "rademacher_mean_abs": g_rd.tolist(),
                        "cells_better": int(sum(better)),
                        "num_cells": len(better),
                        "min_factor": float(factor.min()),
                    },
                    numbers=f"in {sum(better)} of {len(better)} cells, "
                    f"by a factor of {factor.min():.2f} or more"
                    if verdict == HOLDS
                    else f"in {sum(better)} of {len(better)} cells",
                )
            )
    return claims


def seeds_table(runs: Mapping[int, Sequence[Mapping[str, Any]]]) -> str:
    """The markdown table of each claim's verdicts over full runs of several seeds.

    Args:
        runs: per seed, the claims of its run as written in its claims file
            (``claims.json``'s ``"claims"``: dicts with ``key`` and ``verdict``).
    """
    counts: dict[str, dict[str, int]] = {}
    for claims in runs.values():
        for c in claims:
            counts.setdefault(c["key"], {v: 0 for v in VERDICTS})[c["verdict"]] += 1
    seeds = ", ".join(str(s) for s in sorted(runs))
    rows = [[f"`{key}`", verdict_cell(c)] for key, c in counts.items()]
    return markdown_table(rows, ["claim", f"verdicts over seeds {seeds}"])
