"""The study's claims about its Figures 7-18, and ours, checked on a run's rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hessian_spectra.experiments._io import Claim
from hessian_spectra.experiments.sketch_synthetic.config import SketchSyntheticConfig
from hessian_spectra.experiments.sketch_synthetic.measures import (
    error_array,
    mean_abs_grid,
    nan_reduce,
)

#: Tolerance (percent) under which an error counts as "not above the truth":
#: rounding in a float64 eigensolver, not an over-estimate.
ROUNDING_PERCENT = 1e-7


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
        grid = mean_abs_grid(arr)
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
        series = nan_reduce(np.nanmean, arr, (1, 3))  # (fraction, ratio, rank)
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
        g_rd = mean_abs_grid(error_array(rows, config, "rademacher"))
        budgets = {"rangefinder": "2d HVPs (two passes)", "nystrom": "d HVPs, as the Rademacher"}
        for kind in ("rangefinder", "nystrom"):
            if kind not in config.kinds:
                continue
            g = mean_abs_grid(error_array(rows, config, kind))
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
