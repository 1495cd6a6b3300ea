"""The study's comparisons across architectures and data sets, over several training seeds.

The study's first line of future research: do its findings about Lanczos,
power iteration, sketches, trace estimators and the density carry over to
other networks? For every architecture / data pair of `zoo.ARCHITECTURES`
(an MLP on breast-cancer, the digits CNN, a ResNet8 on upsampled digits, a
character LSTM and a tiny GPT-2 on Python's own source, a small ViT on
digits) and every training seed, the model is trained here, its float64
Hessian formed densely for an exact reference, and every measurement and
claim of `compare-methods` is taken on it (`compare_methods.measure`). The
summary gives, per claim, its verdict on each architecture with the spread
over seeds.

Each (architecture, seed) run is written to ``runs/NAME-seedS.json`` under the
output folder as soon as it ends; an interrupted experiment resumes from the
runs already there (a run is reused only when its settings match).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

import hessian_spectra as hs
from hessian_spectra._atomic import atomic_open
from hessian_spectra._progress import outer_progress
from hessian_spectra.experiments._io import VERDICTS, machine_info, markdown_table, verdict_cell
from hessian_spectra.experiments.architectures.figures import draw_summary
from hessian_spectra.experiments.architectures.zoo import ARCHITECTURES
from hessian_spectra.experiments.compare_methods.claims import evaluate_claims
from hessian_spectra.experiments.compare_methods.config import CompareConfig
from hessian_spectra.experiments.compare_methods.measures import measure
from hessian_spectra.results import write_json

__all__ = ["ArchitecturesConfig", "add_arguments", "main", "run", "summarize"]

#: The summary of an experiment, written under the output folder.
SUMMARY_FILE = "architectures.json"


@dataclass(frozen=True)
class ArchitecturesConfig:
    """Settings of `experiment architectures`.

    Attributes:
        architectures: names from `zoo.ARCHITECTURES`.
        seeds: training seeds (each also seeds the run's random draws).
        compare: the `compare-methods` settings of each run (its model, data
            and seed fields are not used: the zoo and `seeds` give them).
    """

    architectures: tuple[str, ...] = tuple(ARCHITECTURES)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    compare: CompareConfig = CompareConfig()

    def __post_init__(self) -> None:
        unknown = [a for a in self.architectures if a not in ARCHITECTURES]
        if unknown:
            raise ValueError(
                f"unknown architecture(s) {unknown}; choose from {', '.join(ARCHITECTURES)}"
            )
        if not self.seeds or not self.architectures:
            raise ValueError("give at least one architecture and one seed")


def _run_one(name: str, seed: int, compare: CompareConfig) -> dict[str, Any]:
    """Train `name` from `seed`, measure everything on its Hessian, return the record."""
    t0 = time.perf_counter()
    problem = ARCHITECTURES[name](seed)
    train_seconds = time.perf_counter() - t0
    op = hs.HessianOperator(problem.model, problem.criterion, problem.data, loss_fn=problem.loss_fn)
    cfg = replace(compare, seed=seed, reference="exact")
    about = {
        "architecture": name,
        "about": problem.about,
        "seed": seed,
        "num_parameters": op.shape[0],
        "metrics": problem.metrics,
        "train_seconds": train_seconds,
    }
    record = measure(op, cfg, about).record
    record["config"] = asdict(cfg)
    return record


def run(
    cfg: ArchitecturesConfig, out: str | Path, *, plots: bool = True, new_runs: bool = True
) -> dict[str, Any]:
    """Every (architecture, seed) run (resuming finished ones), then the summary and figure.

    With ``new_runs=False`` nothing is trained: the summary covers the runs of
    `cfg` already under `out` (say, while other processes are still running
    the rest).
    """
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    # seed by seed: an interrupted experiment has covered every architecture
    jobs = [(a, s) for s in cfg.seeds for a in cfg.architectures]
    with outer_progress(len(jobs), "architectures", "run") as bar:
        for name, seed in jobs:
            path = out / "runs" / f"{name}-seed{seed}.json"
            wanted = asdict(replace(cfg.compare, seed=seed, reference="exact"))
            record = _read(path)
            if record is None or _jsonable(record.get("config")) != _jsonable(wanted):
                if not new_runs:
                    bar.update(1)
                    continue
                record = _run_one(name, seed, cfg.compare)
                write_json(path, record)
                record = _read(path)
                assert record is not None
            records.append(record)
            bar.update(1)
    if not records:
        raise ValueError(
            f"no finished run of these architectures and seeds under {out / 'runs'}; "
            "run them first (without --summarize-only)"
        )
    summary = summarize(records)
    summary["config"] = asdict(cfg)
    summary["seconds"] = time.perf_counter() - t0
    summary["machine"] = machine_info()
    if plots:
        summary["figures"] = [p.name for p in draw_summary(records, out)]
    write_json(out / SUMMARY_FILE, summary)
    with atomic_open(out / "architectures.md", "w") as fh:
        fh.write(numbers_table(summary) + "\n" + claims_table(summary))
    return summary


def _read(path: Path) -> dict[str, Any] | None:
    """A run's record as written (plain JSON), or None when there is none."""
    return json.loads(path.read_text()) if path.is_file() else None


def _jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists)."""
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _spread(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def current_claims(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The claims of a run's record as the current `evaluate_claims` judges them.

    A run keeps the claims it was written with; judging them again from its
    measurements lets a summary of runs made over several versions apply one
    rule to all (the measurements do not change, a verdict's rule may).
    """
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in record["config"].items()
    }
    cfg = CompareConfig(**fields)
    return [c.to_dict() for c in evaluate_claims(record, cfg)]


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per claim, the verdict counts on each architecture over its seeds (judged by the
    current rules, `current_claims`); per architecture, the spread over seeds of the
    numbers the claims rest on."""
    by_arch: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_arch.setdefault(r["problem"]["architecture"], []).append(r)
    claims: dict[str, dict[str, Any]] = {}
    for name, runs in by_arch.items():
        for r in runs:
            for c in current_claims(r):
                entry = claims.setdefault(
                    c["key"], {"statement": c["statement"], "source": c["source"], "by": {}}
                )
                counts = entry["by"].setdefault(name, {v: 0 for v in VERDICTS})
                counts[c["verdict"]] += 1
                # what each verdict rests on, seed by seed (the runs' own words)
                entry.setdefault("numbers", {}).setdefault(name, []).append(
                    {"seed": r["problem"]["seed"], "verdict": c["verdict"], "numbers": c["numbers"]}
                )
    numbers: dict[str, dict[str, Any]] = {}
    for name, runs in by_arch.items():
        m = [r["methods"] for r in runs]
        sk = [r["sketches"] for r in runs]
        numbers[name] = {
            "about": runs[0]["problem"]["about"],
            "num_parameters": runs[0]["problem"]["num_parameters"],
            "seeds": [r["problem"]["seed"] for r in runs],
            "train_accuracy": _spread([r["problem"]["metrics"]["train_accuracy"] for r in runs]),
            "test_accuracy": _spread([r["problem"]["metrics"]["test_accuracy"] for r in runs]),
            "lambda_max": _spread([r["reference"]["max"] for r in runs]),
            "negative_fraction": _spread([r["reference"]["num_negative"] / r["n"] for r in runs]),
            **{
                f"{method}_{what}": _spread([x[method][key] for x in m])
                for method in ("lanczos", "power", "block")
                for what, key in (
                    ("hvps", "num_matvecs"),
                    ("max_error", "max_abs_relative_error_sorted"),
                )
            },
            "sketch_mean_percent_error": {
                key: _spread([s[key]["mean_percent_error"] for s in sk]) for key in sk[0]
            },
        }
    return {
        "claims": claims,
        "architectures": numbers,
        "num_runs": len(records),
        # what the runs cost when they ran (a resumed experiment's own wall time is less)
        "run_seconds": {
            "total": float(sum(r.get("seconds", 0.0) for r in records)),
            "by_architecture": {
                name: _spread([r.get("seconds", 0.0) for r in runs])
                for name, runs in by_arch.items()
            },
        },
    }


def claims_table(summary: Mapping[str, Any]) -> str:
    """The markdown table: one row per claim, one column per architecture."""
    names = list(summary["architectures"])
    rows = []
    for key, entry in summary["claims"].items():
        rows.append(
            [f"`{key}` ({entry['source']})"]
            + [verdict_cell(entry["by"][n]) if n in entry["by"] else "-" for n in names]
        )
    return markdown_table(rows, ["claim", *names])


def _fmt(spread: Mapping[str, float], fmt: str) -> str:
    """'median (min to max)' of a spread, or the value alone when every seed agrees
    ("to", not a dash, which would read as a minus before a negative maximum)."""
    med, lo, hi = (format(spread[k], fmt) for k in ("median", "min", "max"))
    return med if lo == hi else f"{med} ({lo} to {hi})"


def numbers_table(summary: Mapping[str, Any]) -> str:
    """The markdown table of what each network is and what the methods did on it."""
    rows = []
    for name, a in summary["architectures"].items():
        sk = a["sketch_mean_percent_error"]
        size = min(int(k.split(":")[1]) for k in sk)
        rows.append(
            [
                name,
                f"{a['num_parameters']:,}",
                len(a["seeds"]),
                _fmt(a["test_accuracy"], ".3f"),
                _fmt(a["lambda_max"], ".3g"),
                _fmt(a["lanczos_hvps"], ".0f") + " / " + _fmt(a["power_hvps"], ".0f"),
                _fmt(a["lanczos_max_error"], ".1e") + " / " + _fmt(a["power_max_error"], ".1e"),
                " / ".join(
                    _fmt(sk[f"{kind}:{size}"], "+.1f")
                    for kind in ("rademacher", "rangefinder", "nystrom")
                    if f"{kind}:{size}" in sk
                ),
            ]
        )
    header = [
        "network",
        "n",
        "seeds",
        "held-out accuracy",
        "λ1",
        "HVPs Lanczos / power",
        "max rel. error Lanczos / power",
        "sketch mean error %: Rademacher / range finder / Nystrom",
    ]
    return markdown_table(rows, header)


def report(summary: Mapping[str, Any]) -> str:
    """The text summary of a finished experiment (for the command line)."""
    lines = [f"architectures: {summary['num_runs']} runs ({summary.get('seconds', 0):.0f} s)"]
    for name, a in summary["architectures"].items():
        lines.append(
            f"  {name:15s} n={a['num_parameters']:6d} test acc {a['test_accuracy']['median']:.3f}  "
            f"Lanczos {a['lanczos_hvps']['median']:.0f} HVPs vs power "
            f"{a['power_hvps']['median']:.0f} (median over {len(a['seeds'])} seeds)"
        )
    lines.append(claims_table(summary))
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `experiment architectures`."""
    d = ArchitecturesConfig()
    a = parser.add_argument
    a(
        "--architectures",
        default=",".join(d.architectures),
        help=f"comma-separated, from {', '.join(ARCHITECTURES)} (default: all)",
    )
    a("--seeds", type=int, default=len(d.seeds), help="training seeds 0..N-1 (default 5)")
    a("--k", type=int, default=d.compare.k, help=f"eigenvalues wanted (default {d.compare.k})")
    a("--out", default="out/architectures", help="output folder (runs are kept and resumed)")
    a("--no-plots", action="store_true", help="write the JSON only")
    a(
        "--summarize-only",
        action="store_true",
        help="train nothing: summarize the runs already under --out",
    )


def config_from_args(args: argparse.Namespace) -> ArchitecturesConfig:
    """The configuration the parsed options describe."""
    if args.seeds < 1 or args.k < 1:
        raise ValueError(f"--seeds and --k must be positive, got {args.seeds} and {args.k}")
    names = tuple(a.strip() for a in args.architectures.split(",") if a.strip())
    return ArchitecturesConfig(
        architectures=names,
        seeds=tuple(range(args.seeds)),
        compare=replace(CompareConfig(), k=args.k),
    )


def main(args: argparse.Namespace) -> int:
    """Entry point of `experiment architectures`; returns the exit code."""
    cfg = config_from_args(args)
    summary = run(cfg, args.out, plots=not args.no_plots, new_runs=not args.summarize_only)
    sys.stdout.write(report(summary))
    sys.stdout.write(f"outputs in {Path(args.out).resolve()}\n")
    return 0
