"""The Nystrom sketch on indefinite network Hessians: unshifted against the shift rule.

Nystrom's approximation stays below the operator only when the operator is
positive semidefinite. Network Hessians are not (the zoo's have 28-46%
negative eigenvalues), and when their negative eigenvalues are small beside
the positive ones a random test subspace does not show it: Omega^T H Omega
is positive definite. `hs.sketch(kind="nystrom")` therefore also runs 20
Lanczos steps for the bottom of the spectrum and shifts by that estimate
when either shows a negative Rayleigh quotient.

For every network and training seed of `experiment architectures` (the same
trained models, the same sketch seed as its runs), this measures the
sketches of size 50 and 100 with the shift rule and with no shift
(``shift=0``, what the sketch did whenever Omega^T H Omega was positive
definite, before the Lanczos check), against the top 20 of a float64
Lanczos run at tol 1e-10.

Run: ``python benchmarks/nystrom_shift.py [--seeds 5] [--architectures a,b] [--jobs 2]``
(writes ``benchmarks/results/nystrom_shift.json``; one thread per process).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from common import write_json

import hessian_spectra as hs
from hessian_spectra.experiments.architectures.zoo import ARCHITECTURES
from hessian_spectra.experiments.compare_methods.measures import relative_errors

K = 20
SIZES = (50, 100)


def measure(name: str, seed: int) -> dict[str, Any]:
    """One trained model: the reference top K and each sketch's errors, both rules."""
    t0 = time.perf_counter()
    problem = ARCHITECTURES[name](seed)
    op = hs.HessianOperator(problem.model, problem.criterion, problem.data, loss_fn=problem.loss_fn)
    ref = hs.eigsh(op, K, which="LA", tol=1e-10, seed=seed + 1000)
    top = np.asarray(ref.eigenvalues, dtype=np.float64)
    bottom = hs.eigsh(op, 1, which="SA", tol=1e-8, seed=seed + 2000)
    out: dict[str, Any] = {
        "architecture": name,
        "seed": seed,
        "n": op.shape[0],
        "reference_converged": int(np.sum(ref.converged)),
        "top": top,
        "lambda_min": float(np.asarray(bottom.eigenvalues)[0]),
        "sketches": {},
    }
    for d in SIZES:
        for rule, shift in (("shift_rule", None), ("unshifted", 0.0)):
            sk = hs.sketch(op, d, kind="nystrom", seed=seed, shift=shift)
            lam = np.asarray(sk.eigenvalues, dtype=np.float64)[:K]
            err = 100.0 * relative_errors(lam, top)
            out["sketches"][f"{rule}:{d}"] = {
                "shift": sk.shift,
                "num_matvecs": sk.num_matvecs,
                "max_percent_error": float(err.max()),
                "num_over": int(np.sum(lam > top + 1e-9 * abs(top[0]))),
                "mean_percent_error": float(err.mean()),
            }
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--jobs", type=int, default=1, help="processes, one thread each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [a for a in args.architectures.split(",") if a]
    jobs = [(name, seed) for seed in range(args.seeds) for name in names]
    with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        runs = list(pool.map(measure, *zip(*jobs, strict=True)))
    totals: dict[str, dict[str, int]] = {}
    for rule in ("shift_rule", "unshifted"):
        sk = [r["sketches"][f"{rule}:{d}"] for r in runs for d in SIZES]
        totals[rule] = {
            "sketches": len(sk),
            "over_estimating": sum(s["num_over"] > 0 for s in sk),
            "shifted": sum(s["shift"] > 0 for s in sk),
        }
    worst = {
        rule: max(r["sketches"][f"{rule}:{d}"]["max_percent_error"] for r in runs for d in SIZES)
        for rule in ("shift_rule", "unshifted")
    }
    path = write_json(
        "nystrom_shift",
        {"k": K, "sizes": SIZES, "totals": totals, "worst_max_percent_error": worst, "runs": runs},
    )
    print(f"{totals} worst {worst} -> {path}")


if __name__ == "__main__":
    main()
