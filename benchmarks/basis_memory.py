"""How far one machine goes: HVP cost and Lanczos basis memory for ResNet20 and a 10M model.

For the study's ResNet20 (272,474 parameters) and a wide ResNet20 (width 96,
9,729,514 parameters, "about 10M"), both at a seeded initialization in eval
mode on fixed random CIFAR-shaped batches, measured in one run on this CPU:

- seconds per HVP (``HessianOperator.matvec``) and per gradient (forward +
  backward of the same loss, the unit a training step costs), and their ratio;
- seconds of one full reorthogonalization of a Lanczos step against a basis of
  m vectors (classical Gram-Schmidt twice: about 4 m n flops), the work the
  basis adds to every step;
- the bytes of the Lanczos basis for m = 100 steps, n x (m + 1) values, in
  float64, float32 and bfloat16 (the ``basis_dtype`` option), checked against
  ``LanczosProcess.basis_bytes`` of a real allocation where it fits in memory.

Wall seconds are medians; CPU seconds (``time.process_time``) are recorded
beside them because this shared 2-core machine is loaded by other jobs (the
load average is in the JSON). No GPU is available here; the JSON says so.

Run: ``python benchmarks/basis_memory.py [--quick]`` (``--quick``: smaller
batches and one repeat).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from common import machine, write_json
from torch import nn

from hessian_spectra.algorithms.lanczos import LanczosProcess
from hessian_spectra.models.resnet import CifarResNet, init_weights
from hessian_spectra.operators.base import LinearOperator
from hessian_spectra.operators.hessian import HessianOperator

M = 100  # Lanczos steps the basis is sized for


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Median wall and CPU seconds of fn() over `repeats` calls after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "wall_median": statistics.median(wall),
        "cpu_median": statistics.median(cpu),
        "wall": wall,
    }


def problem(
    width: int, batch: int
) -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    model = init_weights(CifarResNet(width=width), seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, 3, 32, 32), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return model, nn.CrossEntropyLoss(), (x, y)


def reorth_seconds(n: int, m: int, repeats: int) -> dict[str, Any]:
    """One CGS2 pass of a Lanczos step against m float32 basis vectors of length n."""
    op = LinearOperator(n, torch.float32)  # sizes the process; never multiplied here
    proc = LanczosProcess(op, torch.ones(n), m, reorth="full")
    gen = torch.Generator().manual_seed(0)
    for j in range(0, m, 10):  # fill in slices: no (n, m) float64 temporary
        proc.Q[:, j : min(m, j + 10)] = torch.randn((n, min(m, j + 10) - j), generator=gen)
    w = torch.randn(n, generator=gen)
    out = timed(lambda: proc._orthogonalize(w, m), repeats)
    out["basis_bytes_allocated"] = proc.basis_bytes
    return out


def measure(name: str, width: int, batch: int, repeats: int, reorth_m: int) -> dict[str, Any]:
    model, criterion, data = problem(width, batch)
    op = HessianOperator(model, criterion, data)
    n = op.shape[0]
    v = torch.randn(n, generator=torch.Generator().manual_seed(1))

    def grad() -> None:
        model.zero_grad(set_to_none=True)
        criterion(model(data[0]), data[1]).backward()

    hvp = timed(lambda: op.matvec(v), repeats)
    g = timed(grad, repeats)
    reorth = reorth_seconds(n, reorth_m, repeats)
    basis = {
        str(dt): n * (M + 1) * torch.empty((), dtype=dt).element_size()
        for dt in (torch.float64, torch.float32, torch.bfloat16)
    }
    row = {
        "model": name,
        "parameters": n,
        "batch": batch,
        "hvp_seconds": hvp,
        "gradient_seconds": g,
        "hvp_over_gradient_wall": hvp["wall_median"] / g["wall_median"],
        "hvp_over_gradient_cpu": hvp["cpu_median"] / g["cpu_median"],
        "reorth_m": reorth_m,
        "reorth_seconds": reorth,
        "reorth_over_hvp_wall": reorth["wall_median"] / hvp["wall_median"],
        "basis_bytes_m100": basis,
        "basis_bytes_per_vector_float32": 4 * n,
    }
    if reorth_m == M:
        # the allocation of a real m = 100 float32 basis matches the arithmetic
        assert reorth["basis_bytes_allocated"] == basis["torch.float32"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches, one repeat")
    args = parser.parse_args()
    torch.set_num_threads(2)
    repeats = 1 if args.quick else 3
    before = machine()
    rows = [
        measure("resnet20", 16, 8 if args.quick else 32, repeats, reorth_m=M),
        # a full m = 100 float32 basis of the wide model is 3.9 GB: the reorthogonalization
        # is timed at m = 25 (its cost is linear in m)
        measure("resnet20-width96", 96, 2 if args.quick else 8, repeats, reorth_m=25),
    ]
    write_json(
        "basis_memory_quick" if args.quick else "basis_memory",
        {
            "settings": {"m": M, "repeats": repeats, "dtype": "float32", "quick": args.quick},
            "machine_before": before,
            "gpu": "none available in this task: CPU numbers only",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
