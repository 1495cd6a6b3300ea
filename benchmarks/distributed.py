"""Data-parallel HVPs: one process against two gloo processes on this 2-core machine.

The trained digits CNN (2,650 parameters) on all 1,797 digits as one batch,
float32 and float64. Measured in one run:

- one process with one torch thread, one process with two threads, and two
  gloo processes with one thread each (``torch.multiprocessing.spawn``,
  ``HessianOperator(..., distributed="auto")``: each rank multiplies by half of
  the samples, one ``all_reduce`` per product);
- HVP throughput (``matvec`` and ``matmat`` with 8 columns, per column) and
  the wall time of ``eigsh(op, k=5, tol=1e-6, seed=0)``;
- the ratios one process / two processes (above 1: the two ranks are faster),
  and the largest relative difference of the top-5 eigenvalues between the
  two-rank run and the one-process run (the point of the exercise is that it
  is at rounding level, and what the reduction costs).

On 2 cores, shared with other jobs, little gain is expected: the two ranks
compete with each other and with everything else. No GPU is available in
this task; the JSON says so rather than guessing a multi-GPU number.

Run: ``python benchmarks/distributed.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import machine, write_json
from torch import nn

import hessian_spectra as hs
from hessian_spectra.data import digits
from hessian_spectra.models import train_digits_cnn
from hessian_spectra.models.digits import digits_cnn
from hessian_spectra.operators.hessian import HessianOperator


def _operator(state: dict[str, torch.Tensor], dtype: torch.dtype) -> HessianOperator:
    model = digits_cnn(seed=0)
    model.load_state_dict(state)
    model = model.to(dtype).eval()
    x, y = digits()
    return HessianOperator(model, nn.CrossEntropyLoss(), (x.to(dtype), y))


def _median(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if dist.is_initialized():
            dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(state: dict[str, torch.Tensor], dtype: torch.dtype, repeats: int) -> dict[str, Any]:
    """The measurements of one configuration (on every rank; rank 0's are kept)."""
    op = _operator(state, dtype)
    n = op.shape[0]
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(n, generator=gen).to(dtype)
    V = torch.randn((n, 8), generator=gen).to(dtype)
    matvec = _median(lambda: op.matvec(v), repeats)
    matmat = _median(lambda: op.matmat(V), repeats) / 8
    res: dict[str, Any] = {}

    def solve() -> None:
        res["top"] = hs.eigsh(op, 5, tol=1e-6, seed=0)

    eig = _median(solve, max(1, repeats // 2))
    return {
        "seconds_per_matvec": matvec,
        "seconds_per_column_matmat8": matmat,
        "hvps_per_second_matvec": 1 / matvec,
        "eigsh_seconds": eig,
        "eigsh_matvecs": res["top"].num_matvecs,
        "eigenvalues": res["top"].eigenvalues.tolist(),
        "is_distributed": op.is_distributed,
        "local_samples": op.local_num_samples,
        "samples": op.num_samples,
    }


def _worker(rank: int, world: int, init: str, state_path: str, repeats: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        state = torch.load(state_path, weights_only=True)
        rows = {str(dt): run(state, dt, repeats) for dt in (torch.float32, torch.float64)}
        if rank == 0:
            torch.save(rows, out)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    before = machine()
    state = train_digits_cnn(seed=0).state_dict()
    results: dict[str, Any] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results[f"1 process, {threads} thread(s)"] = {
            str(dt): run(state, dt, args.repeats) for dt in (torch.float32, torch.float64)
        }
    with tempfile.TemporaryDirectory() as tmp:
        state_path = os.path.join(tmp, "state.pt")
        torch.save(state, state_path)
        out = os.path.join(tmp, "rank0.pt")
        init = os.path.join(tmp, "init")
        mp.spawn(_worker, args=(2, init, state_path, args.repeats, out), nprocs=2, join=True)
        results["2 gloo processes, 1 thread each"] = torch.load(out, weights_only=False)

    one = results["1 process, 1 thread(s)"]
    two = results["2 gloo processes, 1 thread each"]
    ratios = {}
    for dt in one:
        a, b = one[dt], two[dt]
        lam1, lam2 = np.array(a["eigenvalues"]), np.array(b["eigenvalues"])
        ratios[dt] = {
            "matvec_seconds_1proc_over_2proc": a["seconds_per_matvec"] / b["seconds_per_matvec"],
            "matmat8_seconds_1proc_over_2proc": a["seconds_per_column_matmat8"]
            / b["seconds_per_column_matmat8"],
            "eigsh_seconds_1proc_over_2proc": a["eigsh_seconds"] / b["eigsh_seconds"],
            "eigsh_matvecs_1proc_vs_2proc": [a["eigsh_matvecs"], b["eigsh_matvecs"]],
            "max_relative_eigenvalue_difference": float(np.max(np.abs(lam1 - lam2) / np.abs(lam1))),
        }
    write_json(
        "distributed",
        {
            "settings": {
                "model": "digits CNN (trained, seed 0), 2,650 parameters",
                "data": "all 1,797 digits as one batch, split into two halves by rank",
                "repeats": args.repeats,
                "backend": "gloo (CPU)",
            },
            "machine_before": before,
            "gpu": "none available in this task: no multi-GPU (nccl) number was measured",
            "results": results,
            "ratios": ratios,
        },
    )
    print(Path(__file__).parent / "results" / "distributed.json", flush=True)


if __name__ == "__main__":
    main()
