"""Run every benchmark script in turn (each writes its JSON to benchmarks/results/).

``python benchmarks/run_all.py [--quick] [script.py ...]``: all scripts, or the
ones named; ``--quick`` is passed on to each script that has it (their smoke
runs; the others run in full). ``gpu.py``
runs only where CUDA is available (it refuses otherwise).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "hvp_cost.py",
    "topk.py",
    "trace_density_sketch.py",
    "sketch_synthetic_time.py",
    "basis_memory.py",
    "curvature.py",
    "distributed.py",
    "optimizers.py",
    "hvp_modes.py",
    "lanczos_overhead.py",
    "peers.py",
    "scaling.py",
    "gpu.py",
]
NEEDS_CUDA = {"gpu.py"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("scripts", nargs="*", help="run only these (default: all)")
    args = parser.parse_args()
    failed = []
    for name in args.scripts or SCRIPTS:
        script = HERE / name
        if not script.exists():
            print(f"skip {name}: not present")
            continue
        if name in NEEDS_CUDA and not torch.cuda.is_available():
            print(f"skip {name}: no CUDA device here")
            continue
        print(f"== {name}", flush=True)
        quick = args.quick and "--quick" in script.read_text()  # not every script has one
        cmd = [sys.executable, str(script), *(["--quick"] if quick else [])]
        if subprocess.call(cmd, cwd=HERE.parent) != 0:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
