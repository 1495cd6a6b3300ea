"""Wall time of the full synthetic sketch experiment (the study's Figures 7-18).

Runs `hessian-spectra experiment sketch-synthetic` at the study's sizes (3
matrices x 6 zero fractions x 6 ratios x 10 sketches, per kind, n = 1000) with
tables and figures, and writes ``benchmarks/results/sketch_synthetic.json``:
seconds per stage, the machine, and the 1-minute load average sampled every 5
seconds during the run (the 2-core machine may be shared, which slows the run;
the target is under 10 minutes). ``--small`` times the seconds-long
configuration instead (``sketch_synthetic_small.json``).

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/sketch_synthetic_time.py [--out DIR] [--small]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch
from common import machine, write_json

from hessian_spectra.experiments import sketch_synthetic as ss

TARGET_SECONDS = 600.0


class LoadSampler:
    """Samples the 1-minute load average in a background thread."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(round(os.getloadavg()[0], 2))
            self._stop.wait(self.every)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="where the experiment writes its outputs")
    parser.add_argument("--small", action="store_true", help="time the small configuration")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = ss.SMALL if args.small else ss.SketchSyntheticConfig()
    cfg = ss.SketchSyntheticConfig(**{**asdict(base), "seed": args.seed})
    name = "sketch_synthetic_small" if args.small else "sketch_synthetic"
    out = Path(args.out or f"out/{name.replace('_', '-')}")
    before = machine()
    with LoadSampler() as load:
        t0, c0 = time.perf_counter(), time.process_time()
        result = ss.run(cfg)
        t1, c1 = time.perf_counter(), time.process_time()
        record = ss.write_outputs(result, out, plots=True)
        t2, c2 = time.perf_counter(), time.process_time()
    total = t2 - t0
    payload = {
        "benchmark": "sketch_synthetic_time",
        "command": "hessian-spectra experiment sketch-synthetic"
        + (" --small" if args.small else "")
        + f" --seed {args.seed} --out {out}",
        "commit": git_commit(),
        "config": asdict(cfg),
        "sketches_per_kind": cfg.num_sketches_per_kind,
        "kinds": list(cfg.kinds),
        "seconds": {
            "total": round(total, 2),
            "sketching_and_generation": round(t1 - t0, 2),
            "generating_matrices": round(result.seconds_generating, 2),
            "by_kind": {k: round(v, 2) for k, v in result.seconds_by_kind.items()},
            "tables_and_figures": round(t2 - t1, 2),
        },
        "cpu_seconds": {
            "total": round(c2 - c0, 2),
            "sketching_and_generation": round(c1 - c0, 2),
            "tables_and_figures": round(c2 - c1, 2),
            "note": "CPU time of this process (all its threads): about the wall time the run "
            "would take with its threads to itself",
        },
        "target_seconds": TARGET_SECONDS,
        "within_target": bool(total < TARGET_SECONDS),
        "machine_before": before,
        "machine_after": machine(),
        "load_average_1min_during_run": {
            "samples_every_s": load.every,
            "min": min(load.samples),
            "max": max(load.samples),
            "mean": round(sum(load.samples) / len(load.samples), 2),
            "samples": load.samples,
        },
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "claims": {c["key"]: c["holds"] for c in record["claims"]},
    }
    path = write_json(name, payload)
    print(f"{name}: {total:.1f} s total ({t1 - t0:.1f} s sketching, {t2 - t1:.1f} s outputs)")
    print(f"CPU time {c2 - c0:.1f} s; torch threads {torch.get_num_threads()}")
    lo = payload["load_average_1min_during_run"]
    print(f"1-min load average during the run: min {lo['min']}, mean {lo['mean']}, max {lo['max']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
