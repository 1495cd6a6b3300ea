"""The study's network-Hessian experiments (its Figures 2-6 and 19), with our methods beside.

On one model and data set: PyHessian-rule power iteration vs Lanczos vs block
Lanczos for the top k with their histories (Figures 3-5), plain Lanczos
without reorthogonalization and its ghost copies (the study's "45 steps"),
sketch errors at sizes 50 and 100 (Figure 19), the sketch's cumulative
spectrum (Figure 6), trace estimates with error bars (sketch, Hutchinson,
Hutch++, XTrace, and PyHessian's stopping rule replayed on the Hutchinson
samples), and the spectral density (Figure 2). Default problem: `digits-cnn`
trained by `train_digits_cnn(seed=0)` on the digits, whose dense Hessian is
small enough to give exact reference eigenvalues. With `--model resnet20
--checkpoint FILE --data cifar10:PATH` it runs on the study's network; the
reference is then a tight-tolerance Lanczos run.

All numerics are the library's (`hs.eigsh`, `hs.lanczos`, `hs.sketch`,
`hs.trace`, `hs.density`); this module builds the problem, calls them, compares
their outputs with the reference and draws them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hessian_spectra.experiments.compare_methods.claims import evaluate_claims
from hessian_spectra.experiments.compare_methods.config import (
    CompareConfig,
    add_arguments,
    build_problem,
    config_from_args,
)
from hessian_spectra.experiments.compare_methods.figures import draw_all
from hessian_spectra.experiments.compare_methods.measures import measure
from hessian_spectra.operators import LinearOperator
from hessian_spectra.results import write_json

__all__ = [
    "CompareConfig",
    "add_arguments",
    "build_problem",
    "config_from_args",
    "evaluate_claims",
    "main",
    "report",
    "run",
]

#: The record of a run, written under the output folder.
RECORD_FILE = "compare_methods.json"


def run(
    op: LinearOperator,
    cfg: CompareConfig,
    out: str | Path,
    *,
    problem: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Run every comparison on `op` and write figures and `compare_methods.json` under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = measure(op, cfg, problem)
    record = m.record
    if plots:
        record["figures"] = [p.name for p in draw_all(m, cfg, out)]
    write_json(out / RECORD_FILE, record)
    return record


def report(record: Mapping[str, Any]) -> str:
    """A short text summary of a finished run (for the command line)."""
    lines = [f"compare-methods on n={record['n']} ({record['seconds']:.1f} s)"]
    for name, m in record["methods"].items():
        lines.append(
            f"  {name:8s} {m['num_matvecs']:6d} HVPs {m['seconds']:8.2f} s  "
            f"max rel. error {m['max_abs_relative_error']:.2e}  converged {m['converged']}"
        )
    g = record["ghosts"]["none"]
    lines.append(
        f"  plain Lanczos, {g['num_steps']} steps: {g['top_copies']} copies of the top "
        f"eigenvalue, {g['distinct']} distinct of the top {len(g['ritz_top'])}"
    )
    for key, e in record["sketches"].items():
        lines.append(
            f"  sketch {key:16s} mean error {e['mean_percent_error']:+.1f}%  "
            f"range [{e['min_percent_error']:+.1f}, {e['max_percent_error']:+.1f}]%"
        )
    ref_tr = record["reference"].get("trace")
    for name, e in record["trace"].items():
        if name in ("running_mean",):
            continue
        se = e.get("stderr")
        se_txt = f" +- {se:.4g}" if se is not None else ""
        lines.append(f"  trace {name:14s} {e['estimate']:.6g}{se_txt}")
    if ref_tr is not None:
        lines.append(f"  trace reference      {ref_tr:.6g}")
    for c in record.get("claims", []):
        lines.append(f"  [{c['source']}] {c['key']}: {c['verdict']} ({c['numbers']})")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    """Entry point of `experiment compare-methods`; returns the exit code."""
    cfg = config_from_args(args)
    op, problem = build_problem(cfg)
    record = run(op, cfg, args.out, problem=problem, plots=not args.no_plots)
    sys.stdout.write(report(record))
    sys.stdout.write(f"outputs in {Path(args.out).resolve()}\n")
    return 0
