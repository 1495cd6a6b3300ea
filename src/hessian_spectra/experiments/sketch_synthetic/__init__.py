"""The study's synthetic sketch experiment (its Figures 7-18), for three sketch kinds.

For each fraction of zero eigenvalues, random PSD matrices (`synthetic.py`) are
sketched many times at each sketch-size ratio d / n, and the percent error
100 (sketch - true) / true of the top-k eigenvalues is recorded, for the
study's Rademacher sketch S^T H S and for the range-finder and Nystrom sketches
of `hessian_spectra.sketch`. All numerics are the library's: this module only
generates the matrices, calls `hs.sketch`, and tabulates, tests and draws the
errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hessian_spectra._atomic import write_text
from hessian_spectra._progress import outer_progress
from hessian_spectra.experiments._io import write_csv
from hessian_spectra.experiments.sketch_synthetic.claims import evaluate_claims, seeds_table
from hessian_spectra.experiments.sketch_synthetic.config import (
    KINDS,
    SMALL,
    SketchSyntheticConfig,
    add_arguments,
    config_from_args,
)
from hessian_spectra.experiments.sketch_synthetic.figures import plot_family, plot_kinds_overview
from hessian_spectra.experiments.sketch_synthetic.measures import (
    COLUMNS,
    SUMMARY_COLUMNS,
    SketchSyntheticRun,
    error_array,
    load_run,
    rows_from_csv,
    run,
    summary_markdown,
    summary_rows,
)
from hessian_spectra.results import write_json

__all__ = [
    "COLUMNS",
    "KINDS",
    "SMALL",
    "SUMMARY_COLUMNS",
    "SketchSyntheticConfig",
    "SketchSyntheticRun",
    "add_arguments",
    "config_from_args",
    "error_array",
    "evaluate_claims",
    "load_run",
    "main",
    "plot_family",
    "plot_kinds_overview",
    "report",
    "rows_from_csv",
    "run",
    "seeds_table",
    "write_outputs",
]


def write_outputs(
    result: SketchSyntheticRun, out: str | Path, *, plots: bool = True
) -> dict[str, Any]:
    """Write the CSV, summary (CSV and markdown), claims JSON and figures under `out`.

    Returns:
        A JSON-ready record of the run: configuration, timings, claims, files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = result.config
    write_csv(out / "errors.csv", result.rows, COLUMNS)
    summary = summary_rows(result.rows, cfg)
    write_csv(out / "summary.csv", summary, SUMMARY_COLUMNS)
    write_text(out / "summary.md", summary_markdown(summary))
    claims = evaluate_claims(result.rows, cfg)
    files = ["errors.csv", "summary.csv", "summary.md", "claims.json", "run.json"]
    if plots:
        for kind in cfg.kinds:
            for by in ("zero_fraction", "ratio"):
                files += [p.name for p in plot_family(result.rows, cfg, kind, out, by=by)]
        files.append(plot_kinds_overview(result.rows, cfg, out).name)
    record = {
        "experiment": "sketch-synthetic",
        "config": asdict(cfg),
        "num_rows": len(result.rows),
        "num_sketches_per_kind": cfg.num_sketches_per_kind,
        "seconds": result.seconds,
        "seconds_by_kind": result.seconds_by_kind,
        "seconds_generating": result.seconds_generating,
        "machine": result.machine,
        "files": files,
    }
    write_json(out / "claims.json", {"claims": [c.to_dict() for c in claims]})
    write_json(out / "run.json", record)
    record["claims"] = [c.to_dict() for c in claims]
    return record


def report(record: Mapping[str, Any]) -> str:
    """A short text summary of a finished run (for the command line)."""
    lines = [
        f"sketch-synthetic: {record['num_sketches_per_kind']} sketches per kind, "
        f"{record['num_rows']} rows, {record['seconds']:.1f} s",
    ]
    for c in record["claims"]:
        lines.append(f"  [{c['source']}] {c['key']}: {c['verdict']} ({c['numbers']})")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    """Entry point of `experiment sketch-synthetic`; returns the exit code."""
    if args.replot:
        result = load_run(args.replot)
        out = Path(args.out or args.replot)
    else:
        config = config_from_args(args)
        total = len(config.zero_fractions) * config.num_matrices
        # one bar over the matrices rather than one per sketch
        with outer_progress(total, "sketch-synthetic", unit="matrix") as bar:
            result = run(config, on_matrix=lambda done, _total: bar.update(done - bar.n))
        out = Path(args.out or "out/sketch-synthetic")
    record = write_outputs(result, out, plots=not args.no_plots)
    sys.stdout.write(report(record))
    sys.stdout.write(f"outputs in {out.resolve()}\n")
    return 0
