"""Seconds per Hessian-vector product of each way to take it, and bfloat16's eigenvalue error.

On the study's ResNet20 (seeded init, eval mode, float32) and a fixed random
CIFAR-shaped batch of 64 (``--batch``), in one process, interleaved round
by round (each round runs every variant once, so a change of machine load
falls on all of them alike; medians over ``--repeats`` rounds):

- ``rebuild``: ``keep_graph=False``, forward + gradient graph + backward for
  every product (the operator's behaviour before graphs were kept);
- ``double_backward``: the kept graph, a loop of backward passes;
- ``batched_backward``: the kept graph, one backward vmapped over the block
  (autograd's ``is_grads_batched``);
- ``forward_over_reverse``: ``torch.func`` jvp of grad, vmapped;
- ``bfloat16``: the kept graph, products under bfloat16 autocast;
- ``pyhessian``: PyHessian's graph-keeping ``hessian_vector_product`` on the
  gradient it keeps (``hessian(model, criterion, data=...)``), or the same
  written out when PyHessian is absent;

each for one column (b = 1) and for a block of b = 8 (per column). Also:
the memory the kept graph holds (`graph_bytes`), the agreement of every mode
with ``rebuild`` (float32) and ``torch.compile`` of the functional product
of a small MLP (whether it works on this CPU, its compile time and its
per-product time against the uncompiled one).

The eigenvalue part: the top 10 eigenvalues of the trained digits CNN's
Hessian (all 1,797 digits, one batch) with float32 and with bfloat16
products, against the dense float64 spectrum.

Run: ``nice -n 10 python benchmarks/hvp_modes.py [--repeats 7] [--threads 1]``
(writes ``benchmarks/results/hvp_modes.json``; the load average before and
after is in it).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from common import (
    digits_problem,
    exact_digits_spectrum,
    machine,
    median_seconds,
    pyhessian_available,
    resnet20_problem,
    write_json,
)
from torch import nn
from torch.func import functional_call, grad, jvp

import hessian_spectra as hs
from hessian_spectra.operators.hessian import HessianOperator

MODES = ("rebuild", "double_backward", "batched_backward", "forward_over_reverse", "bfloat16")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def pyhessian_product(model: nn.Module, criterion: nn.Module, batch: Any) -> Callable[[list], Any]:
    """PyHessian's graph-keeping product (its gradient graph built once)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if pyhessian_available():
        from pyhessian import hessian as PyHessian  # optional extra: the bench dependency
        from pyhessian.utils import hessian_vector_product

        ph = PyHessian(model, criterion, data=batch, cuda=False)

        def call(v: list) -> Any:
            return hessian_vector_product(ph.gradsH, ph.params, v)

        return call
    x, y = batch
    loss = criterion(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def written(v: list) -> Any:
        return torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)

    return written


def operators(model: nn.Module, criterion: nn.Module, batch: Any) -> dict[str, HessianOperator]:
    kw: dict[str, Any] = {"check_deterministic": False}
    return {
        "rebuild": HessianOperator(model, criterion, batch, keep_graph=False, **kw),
        "double_backward": HessianOperator(model, criterion, batch, **kw),
        "batched_backward": HessianOperator(
            model, criterion, batch, hvp_mode="batched_backward", **kw
        ),
        "forward_over_reverse": HessianOperator(
            model, criterion, batch, hvp_mode="forward_over_reverse", **kw
        ),
        "bfloat16": HessianOperator(model, criterion, batch, product_dtype=torch.bfloat16, **kw),
    }


def time_modes(batch_size: int, repeats: int) -> dict[str, Any]:
    model, criterion, batch, _ = resnet20_problem(torch.float32, batch=batch_size, seed=0)
    ops = operators(model, criterion, batch)
    ph = pyhessian_product(model, criterion, batch)
    n = ops["rebuild"].shape[0]
    V = torch.randn((n, 8), generator=torch.Generator().manual_seed(1))
    v_list = [t.contiguous() for t in ops["rebuild"].unflatten(V[:, 0]).values()]
    calls: dict[str, tuple[int, Callable[[], Any]]] = {"pyhessian_b1": (1, lambda: ph(v_list))}
    for name, op in ops.items():
        calls[f"{name}_b1"] = (1, lambda op=op: op.matmat(V[:, :1]))
        calls[f"{name}_b8"] = (8, lambda op=op: op.matmat(V))
    reference = ops["rebuild"].matmat(V)
    agreement = {name: rel(op.matmat(V), reference) for name, op in ops.items()}
    agreement["pyhessian_column0"] = rel(
        torch.cat([t.reshape(-1) for t in ph(v_list)]), reference[:, 0]
    )
    for _, call in calls.values():  # warm-up: allocator, oneDNN primitives, kept graphs
        call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    load_before = os.getloadavg()
    for _ in range(repeats):
        for name, (_, call) in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    load_after = os.getloadavg()
    out: dict[str, Any] = {}
    for name, (b, _) in calls.items():
        med = statistics.median(times[name])
        out[name] = {"columns": b, "per_column_s": med / b, "times_s": times[name]}
    base = out["pyhessian_b1"]["per_column_s"]
    ratios = {name: out[name]["per_column_s"] / base for name in out}
    return {
        "model": "resnet20",
        "batch": batch_size,
        "num_params": n,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "timings": out,
        "per_column_ratio_to_pyhessian_b1": ratios,
        "rel_diff_to_rebuild_float32": agreement,
        "graph_bytes": ops["double_backward"].graph_bytes,
        "pyhessian": "pyhessian" if pyhessian_available() else "written-out graph-keeping HVP",
    }


class _Timeout(Exception):
    pass


def try_compile(limit_s: int, repeats: int) -> dict[str, Any]:
    """torch.compile of a functional product (jvp of grad) of a small MLP, if it works here.

    Beside it: the same product uncompiled (``eager_s``) and our kept-graph matvec.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 10))
    x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    v = {k: torch.randn_like(p) for k, p in params.items()}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

    def hvp(p: dict[str, torch.Tensor], t: dict[str, torch.Tensor]) -> Any:
        return jvp(grad(loss), (p,), (t,))[1]

    eager = median_seconds(lambda: hvp(params, v), repeats)["median"]
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), check_deterministic=False)
    flat = op.flatten(v)
    kept = median_seconds(lambda: op.matvec(flat), repeats)["median"]

    def alarm(*_: Any) -> None:
        raise _Timeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(limit_s)
    try:
        compiled = torch.compile(hvp)
        t0 = time.perf_counter()
        out = compiled(params, v)
        compile_s = time.perf_counter() - t0
        signal.alarm(0)
        agree = max(rel(out[k], hvp(params, v)[k]) for k in out)
        return {
            "works": True,
            "compile_s": compile_s,
            "eager_s": eager,
            "ours_kept_graph_s": kept,
            "compiled_s": median_seconds(lambda: compiled(params, v), repeats)["median"],
            "rel_diff": agree,
        }
    except _Timeout:
        return {
            "works": False,
            "reason": f"compilation took over {limit_s} s",
            "eager_s": eager,
            "ours_kept_graph_s": kept,
        }
    except Exception as err:  # record why it failed on this machine
        return {"works": False, "reason": f"{type(err).__name__}: {str(err)[:300]}"}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def eigen_error(k: int = 10) -> dict[str, Any]:
    """Top-k of the trained digits CNN: float32 and bfloat16 products against float64 dense."""
    exact = exact_digits_spectrum()[::-1][:k]
    model, criterion, batch, _ = digits_problem(torch.float32)
    out: dict[str, Any] = {"k": k, "exact_float64": exact}
    for label, kw in (("float32", {}), ("bfloat16", {"product_dtype": torch.bfloat16})):
        op = HessianOperator(model, criterion, batch, **kw)
        t0 = time.perf_counter()
        res = hs.eigsh(op, k=k, which="LA", seed=0, tol=1e-6)
        err = np.abs(np.asarray(res.eigenvalues) - exact) / np.abs(exact[0])
        out[label] = {
            "eigenvalues": res.eigenvalues,
            "max_error_relative_to_top": float(err.max()),
            "max_relative_error": float(np.max(np.abs(res.eigenvalues - exact) / np.abs(exact))),
            "precision_limited": res.precision_limited,
            "num_matvecs": res.num_matvecs,
            "seconds": time.perf_counter() - t0,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--compile-limit", type=int, default=600)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument(
        "--only-compile", action="store_true", help="write hvp_modes_compile.json only"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only_compile:
        result = try_compile(args.compile_limit, args.repeats)
        print(write_json("hvp_modes_compile", {"threads": args.threads, **result}))
        return
    payload: dict[str, Any] = {"threads": args.threads, "machine_at_start": machine()}
    payload["products"] = time_modes(args.batch, args.repeats)
    payload["eigenvalues_bfloat16"] = eigen_error()
    if not args.skip_compile:
        payload["torch_compile_mlp"] = try_compile(args.compile_limit, args.repeats)
    path = write_json("hvp_modes", payload)
    print(path)


if __name__ == "__main__":
    main()
