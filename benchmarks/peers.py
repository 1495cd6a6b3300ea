"""Our Hessian products and top-20 against PyHessian, curvlinops and hessian-eigenthings.

One script, one run, one machine, the same models and data for every library:

- ``digits``: the trained digits CNN (2,650 parameters) on all 1,797 digits;
- ``resnet20_b64``: the study's ResNet20 (272,474 parameters, seeded init,
  eval mode) on a lone batch of 64 random CIFAR-shaped inputs: the products
  of the issue's "must show" lines;
- ``resnet20_b128``: the same network on a batch of 128: the top-20 race;
- ``transformer``: a tiny transformer language model (``curvature.TinyLM``:
  2 pre-norm blocks, width 32, 4 heads, vocabulary 50) on 16 sequences of 16
  tokens, cross-entropy over every token.

All float32. The peers: PyHessian 0.1 (``hessian(model, criterion,
data=(x, y), cuda=False)``: its graph-keeping ``hessian_vector_product`` and
``eigenvalues(top_n=20)`` at its defaults maxIter=100, tol=1e-3), curvlinops
(``HessianLinearOperator`` and SciPy ``eigsh`` on ``.to_scipy()``, tol 1e-4)
and hessian-eigenthings (its ``HessianOperator`` and ``lanczos``, default
``max_iter = 2k`` and, where cheap, ``4k``). Every operator is built with
its determinism check off (``check_deterministic=False`` where it exists).

Products: seconds per product column, medians over ``--repeats`` rounds in
which every variant runs once in turn (interleaved, so a change of load falls
on all alike), after one warm-up call each (which also builds any kept graph;
the set-up seconds are recorded apart). Process CPU seconds are recorded
beside wall seconds. Agreement: relative difference of each variant's first
column from a float64 product of our operator on a float64 copy. Peak memory:
in a fresh process per variant, the resident-set growth (``VmHWM`` after,
minus ``VmRSS`` before, the high-water mark reset through
``/proc/self/clear_refs``) of building the variant with its first call
(``setup_mib``: includes any kept graph) and of one more call
(``product_mib``); RSS, not tracemalloc, since torch allocates outside
Python's allocator.

Top-20 (which="LM"): products, wall and CPU seconds, and the maximum relative
error of the 20 values against the reference: our Lanczos in float64 on a
float64 copy of model and data at tol 1e-10 (cached in benchmarks/cache/
under a fingerprint of weights and data). PyHessian is stopped after
``--pyhessian-seconds`` on ResNet20 (it needs hundreds of products per
eigenvalue there; the limit is in process CPU seconds, which other jobs do not
inflate); then its seconds are a lower bound, the eigenvalues it had finished
and their errors are recorded, and an extrapolation to 20 (its seconds per
finished eigenvalue x 20) is given, labelled as such. On ResNet20 the other
peers' top-20 runs are optional (``--resnet-topk-peers``): each costs tens of
minutes on a shared 2-core CPU.

Our operator is built with whatever options the installed hessian-spectra
has (``keep_graph``, ``hvp_mode`` values, ``product_dtype``: read from its
signature and by trying each mode); the JSON lists what was used.

Torch threads: ``--product-threads`` (default 2, the issue's setting) for the
headline products, ``--threads`` (default 1) for the rest: on a shared 2-core
machine two OpenMP threads wait on each other whenever another job runs, and
one thread keeps the long top-20 runs within the time available.

Run: ``nice -n 10 python benchmarks/peers.py [--quick] [--parts
digits,resnet20_b64,resnet20_b128,transformer] [--pyhessian-seconds 300]``.
Writes ``benchmarks/results/peers.json`` (``peers_quick.json`` with
``--quick``) and ``peers.png``. A run of some parts replaces those parts in
the existing JSON and keeps the others; each part carries its time stamp,
threads and load averages, and ``run_log`` lists the runs.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import torch
from common import CACHE, RESULTS, digits_problem, machine, resnet20_problem, write_json
from curvature import TinyLM
from peerlib import (
    Batch,
    K,
    count_scipy,
    curvlinops_operator,
    eigenthings_operator,
    flat,
    headlines,
    max_rel_err,
    merged,
    order_lm,
    our_options,
    ours,
    peer_versions,
    pyhessian_object,
    pyhessian_topk,
    reset_peak,
    score_pyhessian,
    source_state,
    split_like,
    status_kib,
    timed,
)
from torch import nn

import hessian_spectra as hs
from hessian_spectra.figures import new_figure, save_figure

PARTS = ("digits", "resnet20_b64", "resnet20_b128", "transformer")
PEERS = ("curvlinops", "eigenthings", "pyhessian")


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------ problems


def tiny_transformer(seed: int = 0) -> tuple[nn.Module, nn.Module, Batch]:
    torch.manual_seed(seed)
    model = TinyLM().eval()
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50, (16, 17), generator=gen)
    return model, nn.CrossEntropyLoss(), (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())


def problem(name: str) -> tuple[nn.Module, nn.Module, Batch, str]:
    """(model float32 eval, criterion, batch, description) of a part."""
    if name == "digits":
        model, crit, batch, _ = digits_problem(torch.float32)
        return model, crit, batch, "trained digits CNN, all 1,797 digits, float32"
    if name.startswith("resnet20_b"):
        b = int(name.removeprefix("resnet20_b"))
        model, crit, batch, _ = resnet20_problem(torch.float32, batch=b, seed=0)
        return model, crit, batch, f"ResNet20 seed 0 eval, {b} random CIFAR-shaped inputs"
    if name == "transformer":
        model, crit, batch = tiny_transformer()
        return model, crit, batch, "TinyLM (2 blocks, width 32, 4 heads), 16 x 16 tokens"
    raise ValueError(f"unknown part {name!r}; choose from {PARTS}")


def to_float64(model: nn.Module, batch: Batch) -> tuple[nn.Module, Batch]:
    x, y = batch
    return copy.deepcopy(model).double(), (x.double() if x.is_floating_point() else x, y)


def fingerprint(model: nn.Module, batch: Batch) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().double().numpy().tobytes())
    for t in batch:
        h.update(t.detach().numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ product variants


@dataclass
class Variant:
    columns: int
    make: Callable[[], Callable[[], torch.Tensor]]  # builds the objects, returns the call
    options: dict[str, Any]


def variants(
    part: str, opts: dict[str, Any], full: bool, only: tuple[str, ...] = ()
) -> tuple[dict[str, Variant], Any]:
    """{name: Variant} of a part's products (each call returns the first column), and the data."""
    model, crit, batch, _ = problem(part)
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    V = torch.randn((n, 8), generator=torch.Generator().manual_seed(1))
    v = V[:, 0].contiguous()
    out: dict[str, Variant] = {}

    def own() -> nn.Module:
        # every variant on its own copy: one library's passes may restore BatchNorm
        # buffers in place (new versions), which breaks another's kept graph
        return copy.deepcopy(model)

    def our_vec(**kw: Any) -> Variant:
        def make() -> Callable[[], torch.Tensor]:
            op = ours(own(), crit, batch, **kw)
            return lambda: op.matvec(v)

        return Variant(1, make, kw)

    def our_block(**kw: Any) -> Variant:
        def make() -> Callable[[], torch.Tensor]:
            op = ours(own(), crit, batch, **kw)
            return lambda: op.matmat(V)[:, 0]

        return Variant(8, make, kw)

    out["ours"] = our_vec()
    if opts["keep_graph"] and full:
        out["ours_keep_graph_false"] = our_vec(keep_graph=False)
    out["ours_b8"] = our_block()
    if full:
        default = opts["defaults"].get("hvp_mode", "").strip("'")
        for mode in opts["hvp_modes"]:
            if mode not in (default, "auto"):  # auto is one of the others: see our_options
                out[f"ours_b8_{mode}"] = our_block(hvp_mode=mode)
    if opts["product_dtype"] and full:
        out["ours_bfloat16"] = our_vec(product_dtype=torch.bfloat16)

    def ph() -> Callable[[], torch.Tensor]:
        from pyhessian.utils import hessian_vector_product  # optional extra (bench)

        h = pyhessian_object(own(), crit, batch)
        vl = split_like(v, h.params)

        def call() -> torch.Tensor:
            h.model.zero_grad()
            return flat(hessian_vector_product(h.gradsH, h.params, vl))

        return call

    out["pyhessian"] = Variant(1, ph, {"api": "hessian_vector_product(gradsH, params, v)"})

    def cl(b: int) -> Callable[[], Callable[[], torch.Tensor]]:
        def make() -> Callable[[], torch.Tensor]:
            H = curvlinops_operator(own(), crit, batch)
            X = v if b == 1 else V
            return lambda: (H @ X) if b == 1 else (H @ X)[:, 0]

        return make

    out["curvlinops"] = Variant(1, cl(1), {"api": "HessianLinearOperator @ v"})
    out["curvlinops_b8"] = Variant(8, cl(8), {"api": "HessianLinearOperator @ V (n, 8)"})

    def et() -> Callable[[], torch.Tensor]:
        op = eigenthings_operator(own(), crit, batch)
        return lambda: op.matvec(v)

    out["eigenthings"] = Variant(1, et, {"api": "HessianOperator.matvec (autograd)"})
    if only:
        out = {k: x for k, x in out.items() if k in only}
    return out, (model, crit, batch, v)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def time_products(
    part: str, opts: dict[str, Any], repeats: int, full: bool, only: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Interleaved per-column seconds of a part's product variants, set-up and agreement."""
    vs, (model, crit, batch, v) = variants(part, opts, full, only)
    m64, b64 = to_float64(model, batch)
    exact = ours(m64, crit, b64).matvec(v.double())
    calls, setup, agree, errors, firsts = {}, {}, {}, {}, {}
    for name, var in vs.items():
        try:
            t0 = time.perf_counter()
            call = var.make()
            first = call()
            setup[name] = time.perf_counter() - t0
            firsts[name] = first.detach()
            agree[name] = rel(first.detach(), exact)
            calls[name] = call
        except Exception as exc:  # a peer that cannot handle this model: recorded
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
            log(f"    {name}: {errors[name]}")
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    load_before = machine()["load_average_1_5_15min"]
    for _ in range(repeats):
        for name, call in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    out: dict[str, Any] = {}
    for name in calls:
        b = vs[name].columns
        out[name] = {
            "columns": b,
            "options": {k: str(x) for k, x in vs[name].options.items()},
            "per_column_s": statistics.median(wall[name]) / b,
            "cpu_per_column_s": statistics.median(cpu[name]) / b,
            "times_s": wall[name],
            "setup_and_first_call_s": setup[name],
            "rel_diff_vs_float64": agree[name],
        }
    ph = out.get("pyhessian")
    ratios = {}
    if ph:
        for name, rec in out.items():
            rec["rel_diff_vs_pyhessian"] = rel(firsts[name], firsts["pyhessian"])
            rec["ratio_vs_pyhessian"] = rec["per_column_s"] / ph["per_column_s"]
            rec["cpu_ratio_vs_pyhessian"] = rec["cpu_per_column_s"] / ph["cpu_per_column_s"]
            ratios[name] = rec["ratio_vs_pyhessian"]
    return {
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "load_average_before": load_before,
        "load_average_after": machine()["load_average_1_5_15min"],
        "variants": out,
        "errors": errors,
        "ratio_per_column_vs_pyhessian": ratios,
    }


# ------------------------------------------------------------------ memory


def memory_child(part: str, name: str) -> None:
    torch.set_num_threads(1)
    vs, _ = variants(part, our_options(), full=True)
    reset = reset_peak()
    before = status_kib("VmRSS")
    call = vs[name].make()
    call()
    setup = status_kib("VmHWM") - before
    reset_peak()
    before2 = status_kib("VmRSS")
    call()
    product = status_kib("VmHWM") - before2
    print(json.dumps({"setup_kib": setup, "product_kib": product, "hwm_reset": reset}))


def measure_memory(part: str, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--memory-child", part, name],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            out[name] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        out[name] = {
            "setup_mib": rec["setup_kib"] / 1024,
            "product_mib": rec["product_kib"] / 1024,
            "hwm_reset": rec["hwm_reset"],
        }
    return out


# ------------------------------------------------------------------ top-k


def reference_top(part: str, model: nn.Module, crit: nn.Module, batch: Batch) -> dict[str, Any]:
    """Our float64 Lanczos (tol 1e-10) on a float64 copy; cached by weights and data."""
    path = CACHE / f"peers_reference_{part}_{fingerprint(model, batch)}_k{K}.json"
    if path.exists():
        return {**json.loads(path.read_text()), "cached": True}
    m64, b64 = to_float64(model, batch)
    op = ours(m64, crit, b64)
    t0 = time.perf_counter()
    res = hs.eigsh(op, K, which="LM", tol=1e-10, seed=0)
    rec = {
        "method": "hessian_spectra eigsh (lanczos), float64 model and data, tol 1e-10, LM",
        "eigenvalues": order_lm(res.eigenvalues).tolist(),
        "hvps": op.num_matvecs,
        "seconds": time.perf_counter() - t0,
        "converged": int(np.sum(res.converged)),
        "torch_threads": torch.get_num_threads(),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(path)
    return {**rec, "cached": False}


def topk_part(
    part: str,
    pyhessian_seconds: float | None,
    eigenthings_iters: list[int],
    peers: tuple[str, ...] = ("curvlinops", "eigenthings", "pyhessian"),
) -> dict[str, Any]:
    model, crit, batch, desc = problem(part)
    n = sum(p.numel() for p in model.parameters())
    runs: dict[str, Any] = {}

    def run(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            runs[name] = fn()
        except Exception as exc:  # a peer that fails on this model: recorded
            runs[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        r = runs[name]
        log(f"  {name}: {r.get('hvps')} HVPs, {r.get('seconds', float('nan')):.1f} s")

    def our_run() -> dict[str, Any]:
        op = ours(model, crit, batch)
        res, s, c = timed(lambda: hs.eigsh(op, K, which="LM", tol=1e-4, seed=0))
        return {
            "settings": {"method": "lanczos", "tol": 1e-4, "which": "LM"},
            "hvps": op.num_matvecs,
            "seconds": s,
            "cpu_seconds": c,
            "eigenvalues": order_lm(res.eigenvalues).tolist(),
            "converged": int(np.sum(res.converged)),
        }

    def curvlinops_run() -> dict[str, Any]:
        H, count = count_scipy(curvlinops_operator(model, crit, batch).to_scipy())
        v0 = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        w, s, c = timed(
            lambda: spla.eigsh(
                H, k=K, which="LM", tol=1e-4, v0=v0.numpy(), return_eigenvectors=False
            )
        )
        return {
            "settings": {"scipy eigsh": "ARPACK", "tol": 1e-4, "which": "LM"},
            "hvps": count["hvps"],
            "seconds": s,
            "cpu_seconds": c,
            "eigenvalues": order_lm(w).tolist(),
        }

    def eigenthings_run(max_iter: int) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            import hessian_eigenthings as he  # optional extra (bench)

            op = eigenthings_operator(model, crit, batch)
            count = {"hvps": 0}

            def mv(x: torch.Tensor) -> torch.Tensor:
                count["hvps"] += 1
                return op.matvec(x)

            counted = he.LambdaOperator(mv, op.size, dtype=op.dtype)
            res, s, c = timed(
                lambda: he.lanczos(
                    counted, k=K, max_iter=max_iter, which="LM", seed=0, reorthogonalize=True
                )
            )
            return {
                "settings": {"lanczos max_iter": max_iter, "reorthogonalize": True},
                "hvps": count["hvps"],
                "seconds": s,
                "cpu_seconds": c,
                "eigenvalues": order_lm(res.eigenvalues.numpy()).tolist(),
                "converged_by_its_rule": int(res.converged.sum()),
            }

        return go

    run("ours", our_run)
    if "curvlinops" in peers:
        run("curvlinops_scipy_eigsh", curvlinops_run)
    for it in eigenthings_iters if "eigenthings" in peers else []:
        run(f"eigenthings_lanczos_{it}", eigenthings_run(it))
    if "pyhessian" in peers:
        run(
            "pyhessian",
            lambda: pyhessian_topk(pyhessian_object(model, crit, batch), None, pyhessian_seconds),
        )
    load_after = machine()["load_average_1_5_15min"]
    # the reference last, so that a long one (cached after) cannot delay the timed runs
    ref_rec = reference_top(part, model, crit, batch)
    ref = np.asarray(ref_rec["eigenvalues"])
    log(f"  reference: {ref_rec['hvps']} HVPs (cached: {ref_rec['cached']}), top {ref[0]:.5g}")
    for name, r in runs.items():
        if name == "pyhessian" and "finished" in r:
            score_pyhessian(r, ref)
        elif "eigenvalues" in r:
            r["max_rel_err"] = max_rel_err(r["eigenvalues"], ref)
        log(f"  {name}: max rel err {r.get('max_rel_err', r.get('error'))}")
    out: dict[str, Any] = {
        "problem": desc,
        "n": n,
        "reference": ref_rec,
        "runs": runs,
        "load_average_after": load_after,
    }
    o = runs["ours"]
    if "seconds" in o:
        out["ratio_seconds_ours_over"] = {
            k: o["seconds"] / r["seconds"] for k, r in runs.items() if "seconds" in r
        }
        out["ratio_cpu_seconds_ours_over"] = {
            k: o["cpu_seconds"] / r["cpu_seconds"] for k, r in runs.items() if "cpu_seconds" in r
        }
        out["ratio_hvps_ours_over"] = {
            k: o["hvps"] / max(r["hvps"], 1) for k, r in runs.items() if "hvps" in r
        }
        ph = runs.get("pyhessian", {})
        if "seconds" in ph and not ph["finished"]:
            out["pyhessian_ratio_is_upper_bound"] = True
            if "extrapolated_seconds_for_top_n" in ph:
                x = ph["extrapolated_seconds_for_top_n"]
                out["ratio_seconds_ours_over_pyhessian_EXTRAPOLATED"] = o["seconds"] / x["value"]
                out["ratio_cpu_seconds_ours_over_pyhessian_EXTRAPOLATED"] = (
                    o["cpu_seconds"] / x["cpu_value"]
                )
    return out


# ------------------------------------------------------------------ headlines, figure, main


HEADLINE = ("ours", "pyhessian", "ours_b8")
NO_OPTIONS: dict[str, Any] = {"keep_graph": False, "hvp_modes": [], "product_dtype": False}


def figure(payload: dict[str, Any], path: Path) -> None:
    fig, (ax1, ax2) = new_figure(11, 4.2, ncols=2)
    parts = list(payload.get("products", {}))
    names = ["ours", "ours_b8", "pyhessian", "curvlinops", "curvlinops_b8", "eigenthings"]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [
            payload["products"][p]["variants"].get(name, {}).get("ratio_vs_pyhessian", np.nan)
            for p in parts
        ]
        ax1.bar(np.arange(len(parts)) + i * width, vals, width, label=name)
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.set_xticks(np.arange(len(parts)) + 0.4 - width / 2, parts)
    ax1.set_ylabel("seconds per product column / PyHessian's")
    ax1.set_title("products (interleaved medians)")
    ax1.legend(fontsize=7)
    for part, rec in payload.get("topk", {}).items():
        for name, r in rec["runs"].items():
            if "seconds" in r and np.isfinite(r.get("max_rel_err", np.nan)):
                ax2.scatter(r["seconds"], r["max_rel_err"], label=f"{part}: {name}", s=18)
            elif "seconds" in r:
                ax2.scatter(r["seconds"], 1.0, marker=">", s=18, label=f"{part}: {name} (cut)")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("wall seconds, top-20 (LM)")
    ax2.set_ylabel("max relative error (cut runs at 1)")
    ax2.set_title("top-20 eigenvalues")
    ax2.legend(fontsize=5, ncol=2)
    save_figure(fig, path, palette=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small parts, 2 repeats")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the full product set")
    parser.add_argument("--headline-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads: full set, top-k")
    parser.add_argument(
        "--product-threads", default="2", help="torch threads of the headline products (e.g. 2,1)"
    )
    parser.add_argument(
        "--pyhessian-seconds",
        type=float,
        default=300.0,
        help="CPU seconds after which PyHessian's top-20 on ResNet20 is stopped",
    )
    parser.add_argument(
        "--resnet-topk-peers",
        default="pyhessian",
        help="peers of the ResNet20 top-20 race (comma list of curvlinops,eigenthings,pyhessian;"
        " each takes tens of minutes on a shared 2-core CPU)",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--headline-only",
        action="store_true",
        help="ResNet20 batch 64: the headline products and their memory, not the full set",
    )
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0
    parts = args.parts.split(",")
    if args.quick:
        parts = [p for p in parts if p != "resnet20_b128"]
        args.repeats, args.headline_repeats = 2, 2
        args.pyhessian_seconds = min(args.pyhessian_seconds, 60.0)
    opts = our_options()
    log(f"our options: {opts}")
    name = "peers_quick" if args.quick else "peers"
    payload: dict[str, Any] = {"products": {}, "memory": {}, "topk": {}}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    log_entry = {
        "started_utc": stamp,
        "command": " ".join(sys.argv),
        "parts": parts,
        "source": source_state(),
        "our_options": opts,
    }
    payload.update(
        {
            "quick": args.quick,
            "command": " ".join(sys.argv),
            "k": K,
            "which": "LM",
            "versions": peer_versions(),
            "our_options": opts,
            "topk_threads": args.threads,
            "load_average_start": machine()["load_average_1_5_15min"],
        }
    )
    t_start = time.perf_counter()

    def save(final: bool = False) -> dict[str, Any]:
        """Write what is measured so far (a run stopped early keeps its finished parts)."""
        log_entry["seconds"] = time.perf_counter() - t_start
        log_entry["finished"] = final
        whole = final and set(parts) == set(PARTS)  # a full run starts the file afresh
        out = merged(RESULTS / f"{name}.json", payload, log_entry, whole)
        out["headlines"] = headlines(out)
        write_json(name, out)
        return out

    if "resnet20_b64" in parts:
        payload["headline_products"] = {}
        for threads in [int(t) for t in args.product_threads.split(",")]:
            torch.set_num_threads(threads)
            log(f"headline products, ResNet20 batch 64, {threads} thread(s)")
            rec = time_products("resnet20_b64", NO_OPTIONS, args.headline_repeats, False, HEADLINE)
            payload["headline_products"][str(threads)] = {**rec, "measured_utc": stamp}
            log(f"  {rec['ratio_per_column_vs_pyhessian']}, load {rec['load_average_before']}")
            save()
    torch.set_num_threads(args.threads)
    for part in [p for p in parts if p != "resnet20_b128"]:
        if args.headline_only and part == "resnet20_b64":
            if not args.no_memory:
                payload["memory"][part] = measure_memory(part, list(HEADLINE))
                save()
            continue
        log(f"products: {part}")
        rec = time_products(part, opts, args.repeats, full=not args.quick)
        payload["products"][part] = {**rec, "measured_utc": stamp}
        log(f"  { ({k: round(v, 3) for k, v in rec['ratio_per_column_vs_pyhessian'].items()}) }")
        save()
        if not (args.quick or args.no_memory):
            if part == "resnet20_b64":  # memory where it matters; each is a fresh process
                names = [k for k in rec["variants"] if not k.startswith("ours_b8_")]
                payload["memory"][part] = measure_memory(part, names)
                save()
    for part in [p for p in parts if p != "resnet20_b64"]:
        log(f"top-{K}: {part}")
        iters = [2 * K] if part.startswith("resnet") else [2 * K, 4 * K]
        cap = args.pyhessian_seconds if part.startswith("resnet") or args.quick else None
        load = machine()["load_average_1_5_15min"]
        peers = tuple(args.resnet_topk_peers.split(",")) if part.startswith("resnet") else PEERS
        rec = topk_part(part, cap, iters, peers)
        payload["topk"][part] = {
            **rec,
            "measured_utc": stamp,
            "torch_threads": args.threads,
            "load_average_before": load,
        }
        save()
    payload = save(final=True)
    path = RESULTS / f"{name}.json"
    figure(payload, RESULTS / name)
    log(f"wrote {path}")
    log(json.dumps(payload["headlines"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
