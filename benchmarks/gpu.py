"""ResNet20 on a CUDA device: top-20 over 50,000 samples, products per mode and dtype.

Ready to run unchanged on a machine with a CUDA device (``python
benchmarks/gpu.py``); it refuses, with a message, when there is none. On the
device:

- data: 50,000 random CIFAR-shaped inputs and labels (seed 0) in batches of
  1,024, held on the device; the study's ResNet20 (seed 0, eval mode,
  float32);
- products on one batch of 1,024: seconds per column of our `HessianOperator`
  for each ``hvp_mode`` the installed version accepts (b = 1 and b = 8), for
  ``product_dtype`` bfloat16 and ``"tf32"`` where it exists, and PyHessian's
  graph-keeping ``hessian_vector_product`` beside them (interleaved medians,
  ``torch.cuda.synchronize`` around every call, peak device memory from
  ``torch.cuda.max_memory_allocated`` after a reset);
- one product over all 50,000 samples, ours and PyHessian's
  ``dataloader_hv_product``;
- top-20 eigenpairs (which="LM") over the 50,000 samples: our Lanczos (tol
  1e-4) in float32 and in each lower product precision, PyHessian's
  ``eigenvalues(top_n=20)`` over the loader (stopped after
  ``--pyhessian-seconds``, wall time on a GPU, process CPU time on the CPU;
  then its time is a lower bound), errors against
  our float64 Lanczos (tol 1e-10) on a float64 copy (``--no-reference`` to
  skip it).

Writes ``benchmarks/results/gpu.json`` with the device name. ``--device cpu
--quick`` is the smoke path that runs every step end to end on the CPU at toy
sizes (16 samples in batches of 8, top 2, blocks of 2, no low-precision
top-k: bfloat16 costs 12x float32 on this CPU) and writes
``gpu_cpu_smoke.json``; its numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from common import machine, write_json
from peerlib import (
    max_rel_err,
    order_lm,
    our_options,
    ours,
    pyhessian_topk,
    split_like,
)
from torch import nn

import hessian_spectra as hs
from hessian_spectra.problems import build_model


def log(msg: str) -> None:
    print(msg, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(samples: int, batch: int, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for start in range(0, samples, batch):
        b = min(batch, samples - start)
        x = torch.randn((b, 3, 32, 32), generator=gen)
        y = torch.randint(0, 10, (b,), generator=gen)
        out.append((x.to(device), y.to(device)))
    return out


def peak_bytes(device: torch.device) -> Callable[[], float] | None:
    """Reset the device's peak memory; return a reader of the growth in MiB (None on CPU)."""
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    return lambda: (torch.cuda.max_memory_allocated(device) - base) / 2**20


def product_variants(
    model: nn.Module,
    crit: nn.Module,
    batch: Any,
    opts: dict[str, Any],
    device: torch.device,
    block: int,
) -> dict[str, tuple[int, Callable[[], Callable[[], torch.Tensor]]]]:
    """{name: (columns, make)} of the single-batch products; make() builds and returns the call."""
    n = sum(p.numel() for p in model.parameters())
    V = torch.randn((n, block), generator=torch.Generator().manual_seed(1)).to(device)
    out: dict[str, tuple[int, Callable[[], Callable[[], torch.Tensor]]]] = {}

    def our(b: int, **kw: Any) -> Callable[[], Callable[[], torch.Tensor]]:
        def make() -> Callable[[], torch.Tensor]:
            op = ours(copy.deepcopy(model), crit, batch, **kw)
            return (lambda: op.matvec(V[:, 0])) if b == 1 else (lambda: op.matmat(V)[:, 0])

        return make

    out["ours"] = (1, our(1))
    b = block
    out[f"ours_b{b}"] = (b, our(b))
    for mode in opts["hvp_modes"]:
        out[f"ours_{mode}"] = (1, our(1, hvp_mode=mode))
        out[f"ours_b{b}_{mode}"] = (b, our(b, hvp_mode=mode))
    if opts["product_dtype"]:
        for name, dt in (("bfloat16", torch.bfloat16), ("tf32", "tf32")):
            out[f"ours_{name}"] = (1, our(1, product_dtype=dt))
            out[f"ours_b{b}_{name}"] = (b, our(b, product_dtype=dt))

    def ph() -> Callable[[], torch.Tensor]:
        from pyhessian import hessian  # optional extra (bench)
        from pyhessian.utils import hessian_vector_product  # optional extra (bench)

        # its own copy: another variant's passes may restore BatchNorm buffers in place
        # (new versions), which breaks the graph PyHessian keeps
        h = hessian(copy.deepcopy(model), crit, data=batch, cuda=device.type == "cuda")
        vl = split_like(V[:, 0].contiguous(), h.params)

        def call() -> torch.Tensor:
            h.model.zero_grad()
            hv = hessian_vector_product(h.gradsH, h.params, vl)
            return torch.cat([t.reshape(-1) for t in hv])

        return call

    out["pyhessian"] = (1, ph)
    return out


def time_products(
    model: nn.Module, crit: nn.Module, batch: Any, repeats: int, device: torch.device, block: int
) -> dict[str, Any]:
    vs = product_variants(model, crit, batch, our_options(), device, block)
    n = sum(p.numel() for p in model.parameters())
    v = torch.randn((n, block), generator=torch.Generator().manual_seed(1))[:, 0].to(device)
    m64 = copy.deepcopy(model).double()
    exact = ours(m64, crit, (batch[0].double(), batch[1])).matvec(v.double())
    calls, rec, errors = {}, {}, {}
    for name, (b, make) in vs.items():
        try:
            read = peak_bytes(device)
            call = make()
            sync(device)
            first = call()
            sync(device)
            rec[name] = {
                "columns": b,
                "rel_diff_vs_float64": float((first.double() - exact).norm() / exact.norm()),
                "setup_peak_mib": read() if read else None,
            }
            read = peak_bytes(device)
            call()
            sync(device)
            rec[name]["product_peak_mib"] = read() if read else None
            calls[name] = call
        except Exception as exc:  # a mode or dtype this device or version refuses: recorded
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
            log(f"  {name}: {errors[name]}")
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync(device)
            t0 = time.perf_counter()
            call()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    for name in calls:
        rec[name]["per_column_s"] = statistics.median(times[name]) / rec[name]["columns"]
        rec[name]["times_s"] = times[name]
    if "pyhessian" in calls:
        ph = rec["pyhessian"]["per_column_s"]
        for r in rec.values():
            if "per_column_s" in r:
                r["ratio_vs_pyhessian"] = r["per_column_s"] / ph
    return {"variants": rec, "errors": errors, "memory": "device peak (CUDA) or none (CPU)"}


def full_data_products(
    model: nn.Module, crit: nn.Module, data: list, device: torch.device
) -> dict[str, Any]:
    """One product over all samples: ours, and PyHessian's dataloader_hv_product."""
    n = sum(p.numel() for p in model.parameters())
    v = torch.randn(n, generator=torch.Generator().manual_seed(1)).to(device)
    op = ours(model, crit, data)
    op.matvec(v)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    mine = op.matvec(v)
    sync(device)
    out: dict[str, Any] = {"ours_s": time.perf_counter() - t0}
    try:
        from pyhessian import hessian  # optional extra (bench)

        model.zero_grad(set_to_none=True)
        h = hessian(model, crit, dataloader=data, cuda=device.type == "cuda")
        vl = split_like(v, h.params)
        sync(device)
        t0 = time.perf_counter()
        _, theirs = h.dataloader_hv_product(vl)
        sync(device)
        out["pyhessian_s"] = time.perf_counter() - t0
        flat = torch.cat([t.reshape(-1) for t in theirs])
        out["rel_diff_ours_vs_pyhessian"] = float((flat - mine).norm() / mine.norm())
        out["ratio"] = out["ours_s"] / out["pyhessian_s"]
        model.zero_grad(set_to_none=True)
    except Exception as exc:  # PyHessian missing or failing: recorded
        out["pyhessian_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def topk(
    model: nn.Module,
    crit: nn.Module,
    data: list,
    k: int,
    device: torch.device,
    reference: bool,
    pyhessian_seconds: float,
    low_precision: bool = True,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ref = None
    if reference:
        m64 = copy.deepcopy(model).double()
        d64 = [(x.double(), y) for x, y in data]
        op64 = ours(m64, crit, d64)
        sync(device)
        t0 = time.perf_counter()
        res = hs.eigsh(op64, k, which="LM", tol=1e-10, seed=0)
        sync(device)
        ref = order_lm(res.eigenvalues)
        out["reference"] = {
            "method": "our eigsh (lanczos), float64 model and data, tol 1e-10",
            "hvps": op64.num_matvecs,
            "seconds": time.perf_counter() - t0,
            "eigenvalues": ref.tolist(),
        }
        del op64, m64, d64
        log(f"  reference: {out['reference']['hvps']} HVPs, {out['reference']['seconds']:.1f} s")
    opts = our_options()
    precisions: list[tuple[str, Any]] = [("float32", None)]
    if opts["product_dtype"] and low_precision:
        precisions += [("tf32", "tf32"), ("bfloat16", torch.bfloat16)]
    runs: dict[str, Any] = {}
    for name, dt in precisions:
        try:
            kw = {} if dt is None else {"product_dtype": dt}
            op = ours(model, crit, data, **kw)
            sync(device)
            t0 = time.perf_counter()
            res = hs.eigsh(op, k, which="LM", tol=1e-4, seed=0)
            sync(device)
            runs[f"ours_{name}"] = {
                "hvps": op.num_matvecs,
                "seconds": time.perf_counter() - t0,
                "converged": int(np.sum(res.converged)),
                "eigenvalues": order_lm(res.eigenvalues).tolist(),
                "max_rel_err": max_rel_err(res.eigenvalues, ref) if ref is not None else None,
            }
        except Exception as exc:  # a precision this device or version refuses: recorded
            runs[f"ours_{name}"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        log(f"  ours_{name}: {runs[f'ours_{name}']}")
    try:
        from pyhessian import hessian  # optional extra (bench)

        model.zero_grad(set_to_none=True)
        h = hessian(model, crit, dataloader=data, cuda=device.type == "cuda")
        refk = ref if ref is not None else np.asarray(runs["ours_float32"]["eigenvalues"])
        wall = device.type == "cuda"
        runs["pyhessian"] = pyhessian_topk(h, refk, pyhessian_seconds, k=k, wall=wall)
    except Exception as exc:  # PyHessian missing or failing: recorded
        runs["pyhessian"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    shown = {key: v for key, v in runs["pyhessian"].items() if key != "finished_values"}
    log(f"  pyhessian: {shown}")
    out["runs"] = runs
    o, ph = runs.get("ours_float32", {}), runs["pyhessian"]
    if "seconds" in o and "seconds" in ph:
        out["ratio_seconds_ours_over_pyhessian"] = o["seconds"] / ph["seconds"]
        out["ratio_is_upper_bound"] = not ph["finished"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke only)")
    parser.add_argument("--quick", action="store_true", help="toy sizes (for --device cpu)")
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--block", type=int, default=8, help="columns of the block products")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pyhessian-seconds", type=float, default=900.0)
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu.py needs a CUDA device and torch.cuda.is_available() is False here; run it "
            "on a machine with one, or use `--device cpu --quick` for the smoke run",
            file=sys.stderr,
        )
        return 2
    if args.quick:
        args.samples, args.batch, args.k, args.repeats, args.block = 16, 8, 2, 2, 2
        args.pyhessian_seconds = min(args.pyhessian_seconds, 10.0)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("resnet20", 0).eval().to(device)
    crit = nn.CrossEntropyLoss()
    data = make_data(args.samples, args.batch, device)
    payload: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "quick": args.quick,
        "command": " ".join(sys.argv),
        "samples": args.samples,
        "batch": args.batch,
        "k": args.k,
        "block": args.block,
        "our_options": our_options(),
        "load_average_start": machine()["load_average_1_5_15min"],
    }
    t0 = time.perf_counter()
    log(f"products on one batch of {args.batch}")
    payload["products_one_batch"] = time_products(
        model, crit, data[0], args.repeats, device, args.block
    )
    for name, r in payload["products_one_batch"]["variants"].items():
        log(f"  {name}: {r.get('per_column_s')} s/column, x{r.get('ratio_vs_pyhessian')}")
    log(f"one product over {args.samples} samples")
    payload["product_full_data"] = full_data_products(model, crit, data, device)
    log(f"  {payload['product_full_data']}")
    log(f"top-{args.k} over {args.samples} samples")
    # bfloat16 products on a CPU without bfloat16 units cost 12x float32 ones: the smoke
    # run keeps them to the product timings above
    low = device.type == "cuda" or not args.quick
    payload["topk"] = topk(
        model, crit, data, args.k, device, not args.no_reference, args.pyhessian_seconds, low
    )
    payload["topk_low_precision_runs"] = low
    payload["seconds_total"] = time.perf_counter() - t0
    payload["load_average_end"] = machine()["load_average_1_5_15min"]
    name = "gpu" if device.type == "cuda" else ("gpu_cpu_smoke" if args.quick else "gpu_cpu")
    path = write_json(name, payload)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
