"""The study's claims about its Figures 3-6 and 19, and ours, checked on a run's record.

Each claim is a `Claim` whose verdict and evidence come from the numbers that
`measures.measure` recorded; docs/reproduction.md states the recorded verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hessian_spectra.experiments._io import Claim
from hessian_spectra.experiments.compare_methods.config import CompareConfig

#: "Minimal" gain from doubling the sketch (the study's words): mean |error|
#: falling by less than this fraction.
MINIMAL_GAIN = 0.25
#: The relative trace error granted to PyHessian's rule (ten times its tol).
TRACE_RULE_RTOL = 1e-2


def evaluate_claims(record: Mapping[str, Any], cfg: CompareConfig) -> list[Claim]:
    """The study's claims about its Figures 3-6 and 19, and ours, checked on this run."""
    claims: list[Claim] = []
    m = record["methods"]
    g = record["ghosts"]["none"]
    claims.append(
        Claim(
            key="plain_lanczos_gives_k_distinct",
            source="study",
            statement=f"{cfg.plain_steps} plain Lanczos steps give the top {cfg.k} eigenvalues "
            "(each once)",
            holds=bool(g["distinct"] == cfg.k and g["ghosts"] == 0),
            evidence={
                "distinct": g["distinct"],
                "top_copies": g["top_copies"],
                "ghosts": g["ghosts"],
                "unmatched": g["unmatched"],
                "copies": g["copies"],
                "full_reorth_distinct": record["ghosts"]["full"]["distinct"],
            },
        )
    )
    claims.append(
        Claim(
            key="lanczos_fewer_hvps_than_power",
            source="study",
            statement="Lanczos needs far fewer HVPs than power iteration for the top k",
            holds=bool(m["lanczos"]["num_matvecs"] < m["power"]["num_matvecs"]),
            evidence={
                name: {
                    "num_matvecs": v["num_matvecs"],
                    "max_abs_relative_error_sorted": v["max_abs_relative_error_sorted"],
                }
                for name, v in m.items()
            },
        )
    )
    p = m["power"]
    claims.append(
        Claim(
            key="power_rule_accurate",
            source="study",
            statement=f"power iteration with PyHessian's rule (tol {cfg.power_tol}) gives "
            "eigenvalues accurate to that tolerance, in order (the study used them as truth)",
            holds=bool(
                p["max_abs_relative_error_sorted"] <= cfg.power_tol and p["out_of_order"] == 0
            ),
            evidence={
                "max_abs_relative_error_sorted": p["max_abs_relative_error_sorted"],
                "out_of_order": p["out_of_order"],
                "num_matvecs": p["num_matvecs"],
            },
        )
    )
    rad = {e["size"]: e for e in record["sketches"].values() if e["kind"] == "rademacher"}
    if rad:
        claims.append(
            Claim(
                key="sketch_overestimates_top_k",
                source="study",
                statement=f"the Rademacher sketch over-estimates every one of the top {cfg.k}",
                holds=bool(all(e["min_percent_error"] > 0 for e in rad.values())),
                evidence={
                    str(d): {"min": e["min_percent_error"], "max": e["max_percent_error"]}
                    for d, e in rad.items()
                },
            )
        )
    if len(rad) >= 2:
        small, large = min(rad), max(rad)
        e_small = float(np.mean(np.abs(rad[small]["percent_errors"])))
        e_large = float(np.mean(np.abs(rad[large]["percent_errors"])))
        claims.append(
            Claim(
                key="sketch_doubling_minimal_gain",
                source="study",
                statement=f"a larger Rademacher sketch ({large} vs {small}) gains little: mean "
                f"|error| falls by less than {100 * MINIMAL_GAIN:.0f}%",
                holds=bool(e_large > (1 - MINIMAL_GAIN) * e_small),
                evidence={"mean_abs_percent_error": {str(small): e_small, str(large): e_large}},
            )
        )
    tr = record["trace"]
    same = f"sketch d={cfg.trace_matvecs}"
    if same in tr and tr[same].get("stderr") is not None:
        others = {k: tr[k]["stderr"] for k in ("hutchinson", "hutch++", "xtrace")}
        claims.append(
            Claim(
                key="sketch_trace_optimal",
                source="study",
                statement="the sketch's trace is optimally accurate: its standard error is the "
                f"smallest of the estimators at {cfg.trace_matvecs} HVPs",
                holds=bool(tr[same]["stderr"] <= min(others.values())),
                evidence={"sketch_stderr": tr[same]["stderr"], "others_stderr": others},
            )
        )
    ref_tr = record["reference"].get("trace")
    rule = tr["pyhessian_rule"]
    if ref_tr is not None:
        err = abs(rule["estimate"] - ref_tr) / abs(ref_tr)
        claims.append(
            Claim(
                key="pyhessian_trace_rule_accurate",
                source="study",
                statement="Hutchinson stopped by PyHessian's relative-change rule is within "
                f"{100 * TRACE_RULE_RTOL:g}% of the trace",
                holds=bool(rule.get("stopped", False) and err <= TRACE_RULE_RTOL),
                evidence={**rule, "reference": ref_tr, "relative_error": err},
            )
        )
    for kind in ("rangefinder", "nystrom"):
        es = [e for e in record["sketches"].values() if e["kind"] == kind]
        if es:
            worst = max(e["max_percent_error"] for e in es)
            claims.append(
                Claim(
                    key=f"{kind}_never_overestimates",
                    source="library",
                    statement=f"no {kind} eigenvalue exceeds the reference (beyond 1e-6 relative)",
                    holds=bool(worst <= 1e-4),
                    evidence={"max_percent_error": worst},
                )
            )
    return claims
