"""Cost of one Hessian-vector product and of block products on ResNet20, against PyHessian.

On the study's ResNet20 (seeded init, eval mode, 272,474 parameters) and a
fixed batch of 128 random CIFAR-shaped inputs, measured in one run on one
machine:

- a plain gradient (forward + backward), the unit every HVP is compared to;
- PyHessian's data-loader HVP, ``hessian(model, criterion, dataloader=...)
  .dataloader_hv_product(v)`` (or, when pyhessian is not installed, the same
  recomputation written out: forward, ``backward(create_graph=True)``, grad);
- our ``matvec`` and our ``matmat`` with b = 1, 4, 8, 16 columns, per column;
- for the record of a design choice, two other ways to do a block: autograd's
  ``is_grads_batched=True`` (vmap over the second backward) and
  ``hvp_mode="forward_over_reverse"`` (torch.func), both at b = 8;
- peak memory per column: the growth of the resident set size of a fresh
  process during one call (``VmHWM`` after the call minus ``VmRSS`` before it,
  the high-water mark reset through ``/proc/self/clear_refs``), divided by b.

Timings are medians over ``--repeats`` rounds; each round runs every variant
once in turn, so a change of machine load falls on all of them alike. Torch
uses 2 threads. The JSON records the load average before and after, and the
process CPU time of each call beside its wall time (CPU time is less
sensitive to other jobs on a shared machine).

Run: ``python benchmarks/hvp_cost.py [--repeats 5] [--threads 2] [--quick]``.
With 2 threads on a 2-core machine that other jobs share, OpenMP threads
wait for each other and the timings measure the contention more than the
work; ``--threads 1`` (written to ``hvp_cost_threads1.json``) is the
steadier comparison there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import machine, pyhessian_available, resnet20_problem, write_json

from hessian_spectra.operators.hessian import HessianOperator

THREADS = 2
BLOCKS = (1, 4, 8, 16)


def make_variants(
    b_max: int = 16,
) -> tuple[dict[str, tuple[int, Callable[[], Any]]], Callable[[], dict]]:
    """{name: (columns per call, call)} on one shared problem, and a check of agreement."""
    model, criterion, (x, y), op = resnet20_problem(torch.float32, batch=128, seed=0)
    params = op.params
    n = op.shape[0]
    V = torch.randn((n, b_max), generator=torch.Generator().manual_seed(1))
    v_list = [t.contiguous() for t in op.unflatten(V[:, 0]).values()]

    def gradient() -> Any:
        loss = criterion(model(x), y)
        return torch.autograd.grad(loss, params)

    if pyhessian_available():
        from pyhessian import hessian as PyHessian

        ph = PyHessian(model, criterion, dataloader=[(x, y)], cuda=False)

        def pyhessian_hvp() -> Any:
            return ph.dataloader_hv_product(v_list)[1]

        reference = "pyhessian.hessian(...).dataloader_hv_product"
    else:

        def pyhessian_hvp() -> Any:
            model.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward(create_graph=True)
            grads = [p.grad for p in params]
            model.zero_grad(set_to_none=True)
            return torch.autograd.grad(grads, params, grad_outputs=v_list)

        reference = "written-out double backward (pyhessian not installed)"

    def batched_grads(b: int) -> Callable[[], Any]:
        Vt = V[:, :b].T.contiguous()
        chunks = [
            Vt[:, s].view(b, *p.shape) for s, p in zip(op.blocks.values(), params, strict=True)
        ]

        def call() -> Any:
            loss = criterion(model(x), y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            return torch.autograd.grad(grads, params, grad_outputs=chunks, is_grads_batched=True)

        return call

    op_for = HessianOperator(model, criterion, (x, y), hvp_mode="forward_over_reverse")
    variants: dict[str, tuple[int, Callable[[], Any]]] = {
        "gradient": (1, gradient),
        "pyhessian_hvp": (1, pyhessian_hvp),
        "ours_matvec": (1, lambda: op.matvec(V[:, 0])),
    }
    for b in BLOCKS:
        variants[f"ours_matmat_b{b}"] = (b, lambda b=b: op.matmat(V[:, :b]))
    variants["is_grads_batched_b8"] = (8, batched_grads(8))
    variants["forward_over_reverse_b8"] = (8, lambda: op_for.matmat(V[:, :8]))

    def check() -> dict:
        """Agreement of PyHessian's HVP, our block columns and matvec, and the variants."""
        ours = op.matmat(V[:, :8])
        ph_out = torch.cat([t.reshape(-1) for t in pyhessian_hvp()])
        bat = batched_grads(8)()
        bat_flat = torch.cat([t.reshape(8, -1) for t in bat], 1).T
        fwd = op_for.matmat(V[:, :8])

        def rel(a: torch.Tensor, b: torch.Tensor) -> float:
            return float((a.double() - b.double()).norm() / b.double().norm())

        return {
            "num_params": n,
            "pyhessian_reference": reference,
            "rel_diff_pyhessian_vs_ours_column0": rel(ph_out, ours[:, 0]),
            "rel_diff_matvec_vs_block_column0": rel(op.matvec(V[:, 0]), ours[:, 0]),
            "rel_diff_is_grads_batched_vs_ours": rel(bat_flat, ours),
            "rel_diff_forward_over_reverse_vs_ours": rel(fwd, ours),
        }

    return variants, check


def time_variants(repeats: int) -> tuple[dict[str, Any], dict]:
    variants, check = make_variants()
    facts = check()
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _, call in variants.values():  # warm-up: allocator, oneDNN primitives
        call()
    for _ in range(repeats):
        for name, (_, call) in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    out = {}
    for name, (b, _) in variants.items():
        med = statistics.median(times[name])
        out[name] = {
            "columns": b,
            "median_s": med,
            "per_column_s": med / b,
            "times_s": times[name],
            "cpu_per_column_s": statistics.median(cpu[name]) / b,
        }
    return out, facts


# ------------------------------------------------------------------ memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(name: str, threads: int) -> None:
    """In a fresh process: build the problem, then measure one call's RSS growth."""
    torch.set_num_threads(threads)
    variants, _ = make_variants()
    _, call = variants[name]
    import gc

    gc.collect()
    reset = True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        reset = False
    before = _status_kib("VmRSS")
    call()
    peak = _status_kib("VmHWM")
    print(json.dumps({"rss_before_kib": before, "peak_kib": peak, "hwm_reset": reset}))


def measure_memory(names: list[str], threads: int) -> dict[str, Any]:
    out = {}
    for name in names:
        script = str(Path(__file__).resolve())
        proc = subprocess.run(
            [sys.executable, script, "--memory-child", name, "--threads", str(threads)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            out[name] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        rec["growth_mib"] = (rec["peak_kib"] - rec["rss_before_kib"]) / 1024
        out[name] = rec
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats, no memory runs")
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help="torch threads (default 2; 1 is far less sensitive to other jobs on the machine)",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.threads)
        return 0
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    load_before = machine()["load_average_1_5_15min"]
    t0 = time.perf_counter()
    timing, facts = time_variants(repeats)
    names = list(timing)
    memory = {} if args.quick else measure_memory(names, args.threads)
    for name, rec in memory.items():
        if "growth_mib" in rec:
            timing[name]["peak_mib_per_column"] = rec["growth_mib"] / timing[name]["columns"]
    ph = timing["pyhessian_hvp"]["per_column_s"]
    ratios = {
        name: rec["per_column_s"] / ph for name, rec in timing.items() if name != "pyhessian_hvp"
    }
    ph_cpu = timing["pyhessian_hvp"]["cpu_per_column_s"]
    cpu_ratios = {
        name: rec["cpu_per_column_s"] / ph_cpu
        for name, rec in timing.items()
        if name != "pyhessian_hvp"
    }
    target = 0.75
    payload = {
        "problem": "resnet20(seed=0).eval(), float32, one batch of 128 random CIFAR-shaped "
        "inputs (seed 0), CrossEntropyLoss",
        "repeats": repeats,
        "torch_threads": args.threads,
        "load_average_before": load_before,
        "seconds_total": time.perf_counter() - t0,
        "memory_method": "fresh process per variant: VmHWM after one call minus VmRSS before "
        "it, with VmHWM reset via /proc/self/clear_refs; includes one-time allocations",
        **facts,
        "timing": timing,
        "ratio_per_column_ours_over_pyhessian": ratios,
        # process CPU seconds: less sensitive to other jobs on the machine than wall time
        "cpu_time_ratio_per_column_ours_over_pyhessian": cpu_ratios,
        "target": {
            "ours_matmat_b8 per column / pyhessian per HVP": target,
            "value": ratios["ours_matmat_b8"],
            "met": ratios["ours_matmat_b8"] <= target,
        },
        "memory": memory,
    }
    name = "hvp_cost" + ("" if args.threads == THREADS else f"_threads{args.threads}")
    path = write_json(name + ("_quick" if args.quick else ""), payload)
    print(f"wrote {path}")
    for name, r in ratios.items():
        print(f"{name:26s} {timing[name]['per_column_s']:.3f} s/column  ours/PyHessian {r:.2f}")
    print(f"PyHessian HVP: {ph:.3f} s; load average before {load_before}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
