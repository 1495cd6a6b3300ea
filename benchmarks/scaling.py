"""How the cost of a Hessian-vector product and of Lanczos grows with the work.

Three sweeps, each point in a fresh process (so its memory is its own), on
this machine with ``--threads`` torch threads (default 1):

- ``batch``: seconds per product of our `HessianOperator` on the study's
  ResNet20 (seeded init, eval mode, float32) against the batch size, 16 to
  1,024 random CIFAR-shaped inputs;
- ``params``: seconds per product against the parameter count at batch 64:
  ResNet20/32/56 (width 16) and ResNet20 with width 8, 16 and 32;
- ``lanczos``: the overhead of our Lanczos (orthogonalization, Ritz
  extraction, stopping tests: everything but products) for the top 20 (LM)
  of a diagonal operator with eigenvalues 1/i, n = 10^4 to 10^7, whose
  product costs next to nothing, so the wall time IS the overhead; set
  beside the seconds one ResNet-sized HVP would take, it gives the overhead's
  share of a real run.

For each product point: the set-up (operator, graph of a lone batch and first
product) in seconds and MiB, then the median of ``--repeats`` products after
it, and the peak resident-set growth during them (``VmHWM`` after minus
``VmRSS`` before, the peak reset through ``/proc/self/clear_refs``; RSS
rather than tracemalloc, which misses torch's allocations). Exponents are
least-squares slopes of log(seconds) (and log(MiB)) on log(batch), log(n).
Process CPU seconds are the numbers to read: on a machine shared with other
jobs the wall seconds measure the load (one run here saw a process get 5% of
a core); the figure and the overhead shares use CPU seconds.

Run: ``nice -n 10 python benchmarks/scaling.py [--quick] [--threads 1]``;
writes ``benchmarks/results/scaling.json`` (``scaling_quick.json``) and
``scaling.png``. ``--quick`` runs a subset (batch 16-128, ResNet20/32 and
widths 8/16, n up to 10^6); ``--batches``, ``--models`` and ``--sizes``
choose the points (on a busy machine, a few per sweep).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS, machine, write_json
from torch import nn

import hessian_spectra as hs
from hessian_spectra.algorithms import eigsh_memory
from hessian_spectra.figures import new_figure, save_figure
from hessian_spectra.models.resnet import resnet20
from hessian_spectra.operators.base import LinearOperator
from hessian_spectra.operators.hessian import HessianOperator

K = 20
BATCHES = (16, 32, 64, 128, 256, 512, 1024)
MODELS = {  # name: (depth, width)
    "resnet20_w8": (20, 8),
    "resnet20": (20, 16),
    "resnet32": (32, 16),
    "resnet56": (56, 16),
    "resnet20_w32": (20, 32),
}
SIZES = (10**4, 10**5, 10**6, 10**7)
MAX_LANCZOS_BYTES = 6 * 2**30  # skip an n whose basis would not fit beside other jobs


def log(msg: str) -> None:
    print(msg, flush=True)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset VmHWM to the current RSS; return the RSS in KiB."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kib("VmRSS")


def _growth_mib(before_kib: int) -> float:
    return (_status_kib("VmHWM") - before_kib) / 1024


# ------------------------------------------------------------------ children


def product_point(model_name: str, batch: int, repeats: int) -> dict[str, Any]:
    """One product point: set-up and per-product seconds and memory."""
    depth, width = MODELS[model_name]
    model = resnet20(depth=depth, width=width, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, 3, 32, 32), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    n = sum(p.numel() for p in model.parameters())
    v = torch.randn(n, generator=torch.Generator().manual_seed(1))
    before = _reset_peak()
    t0 = time.perf_counter()
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), check_deterministic=False)
    op.matvec(v)
    setup_s, setup_mib = time.perf_counter() - t0, _growth_mib(before)
    before = _reset_peak()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        op.matvec(v)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "model": model_name,
        "batch": batch,
        "n": n,
        "setup_s": setup_s,
        "setup_mib": setup_mib,
        "product_s": statistics.median(times),
        "product_cpu_s": statistics.median(cpu),
        "times_s": times,
        "product_mib": _growth_mib(before),
    }


class Diagonal(LinearOperator):
    """diag(1, 1/2, 1/3, ...): products cost O(n), so eigsh's time is its own overhead."""

    def __init__(self, n: int) -> None:
        super().__init__(n, torch.float32)
        self.d = 1.0 / torch.arange(1, n + 1, dtype=torch.float32)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.d[:, None] * V


def lanczos_point(n: int) -> dict[str, Any]:
    op = Diagonal(n)
    # the products alone, timed apart, are subtracted from the wall time
    V = torch.randn(n, 1)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(5):
        op.matmat(V)
    per_product = (time.perf_counter() - t0) / 5
    per_product_cpu = (time.process_time() - c0) / 5
    before = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    res = hs.eigsh(op, K, which="LM", tol=1e-4, seed=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    err = float(np.max(np.abs(np.sort(res.eigenvalues)[::-1] - 1.0 / np.arange(1, K + 1)) * 1))
    return {
        "n": n,
        "hvps": res.num_matvecs,
        "wall_s": wall,
        "cpu_s": cpu,
        "products_s": res.num_matvecs * per_product,
        "overhead_s": max(wall - res.num_matvecs * per_product, 0.0),
        "overhead_cpu_s": max(cpu - res.num_matvecs * per_product_cpu, 0.0),
        "peak_mib": _growth_mib(before),
        "eigsh_memory_estimate_mib": eigsh_memory(n, K) / 2**20,
        "max_abs_err": err,
    }


def run_child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": "\n".join(proc.stderr.strip().splitlines()[-3:])}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ fits, figure


def slope(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least-squares fit of log y = a + b log x: the exponent b, its standard error, R^2."""
    x, y = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    if x.size < 2 or np.any(~np.isfinite(y)):
        return None
    A = np.stack([np.ones_like(x), x], 1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    ss = float(np.sum((y - y.mean()) ** 2))
    out = {"exponent": float(coef[1]), "r2": 1 - float(resid @ resid) / ss if ss else 1.0}
    if x.size > 2:
        s2 = float(resid @ resid) / (x.size - 2)
        out["stderr"] = float(np.sqrt(s2 / np.sum((x - x.mean()) ** 2)))
    return out


def fits(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    b = [p for p in payload["batch"] if "product_s" in p]
    if b:
        xs = [p["batch"] for p in b]
        out["product_s_vs_batch"] = slope(xs, [p["product_s"] for p in b])
        out["product_cpu_s_vs_batch"] = slope(xs, [p["product_cpu_s"] for p in b])
        out["setup_mib_vs_batch"] = slope(xs, [max(p["setup_mib"], 1e-3) for p in b])
    q = [p for p in payload["params"] if "product_s" in p]
    if q:
        xs = [p["n"] for p in q]
        out["product_s_vs_n"] = slope(xs, [p["product_s"] for p in q])
        out["product_cpu_s_vs_n"] = slope(xs, [p["product_cpu_s"] for p in q])
        widths = [p for p in q if p["model"].startswith("resnet20")]
        depths = [p for p in q if p["model"] in ("resnet20", "resnet32", "resnet56")]
        if len(widths) > 1:
            out["product_s_vs_n_width_sweep"] = slope(
                [p["n"] for p in widths], [p["product_s"] for p in widths]
            )
        if len(depths) > 1:
            out["product_s_vs_n_depth_sweep"] = slope(
                [p["n"] for p in depths], [p["product_s"] for p in depths]
            )
        out["setup_mib_vs_n"] = slope(xs, [max(p["setup_mib"], 1e-3) for p in q])
    lz = [p for p in payload["lanczos"] if "overhead_s" in p]
    if lz:
        xs = [p["n"] for p in lz]
        out["lanczos_overhead_s_vs_n"] = slope(xs, [max(p["overhead_s"], 1e-6) for p in lz])
        out["lanczos_overhead_cpu_s_vs_n"] = slope(xs, [max(p["overhead_cpu_s"], 1e-6) for p in lz])
        out["lanczos_peak_mib_vs_n"] = slope(xs, [max(p["peak_mib"], 1e-3) for p in lz])
    return out


def overhead_shares(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Lanczos overhead as a share of a run whose products cost what ResNet products cost.

    In process CPU seconds (steadier than wall time on a shared machine): the
    product's at n come from the fitted params sweep (batch 64); a run of the
    same HVP count then takes hvps x product + overhead.
    """
    fit = payload["fits"].get("product_cpu_s_vs_n")
    q = [p for p in payload["params"] if "product_s" in p]
    if not fit or not q:
        return []
    n0, s0 = q[0]["n"], q[0]["product_cpu_s"]
    out = []
    for p in payload["lanczos"]:
        if "overhead_s" not in p:
            continue
        hvp = s0 * (p["n"] / n0) ** fit["exponent"]
        total = p["hvps"] * hvp + p["overhead_cpu_s"]
        out.append(
            {
                "n": p["n"],
                "product_cpu_s_from_fit_batch64": hvp,
                "overhead_cpu_s": p["overhead_cpu_s"],
                "overhead_share": p["overhead_cpu_s"] / total,
                "below_5_percent": p["overhead_cpu_s"] / total < 0.05,
            }
        )
    return out


def figure(payload: dict[str, Any], path: Path) -> None:
    fig, axes = new_figure(12, 3.8, ncols=3)
    b = [p for p in payload["batch"] if "product_s" in p]
    axes[0].loglog([p["batch"] for p in b], [p["product_cpu_s"] for p in b], "o-")
    axes[0].set_xlabel("batch size (ResNet20)")
    axes[0].set_ylabel("CPU seconds per HVP")
    q = [p for p in payload["params"] if "product_s" in p]
    for p in q:
        axes[1].loglog(p["n"], p["product_cpu_s"], "o")
        axes[1].annotate(p["model"], (p["n"], p["product_cpu_s"]), fontsize=6)
    axes[1].set_xlabel("parameters (batch 64)")
    axes[1].set_ylabel("CPU seconds per HVP")
    lz = [p for p in payload["lanczos"] if "overhead_s" in p]
    axes[2].loglog([p["n"] for p in lz], [p["overhead_cpu_s"] for p in lz], "o-")
    axes[2].set_xlabel("n (diagonal operator)")
    axes[2].set_ylabel("Lanczos CPU seconds besides products (top 20)")
    keys = ("product_cpu_s_vs_batch", "product_cpu_s_vs_n", "lanczos_overhead_cpu_s_vs_n")
    for ax, key in zip(axes, keys, strict=True):
        f = payload["fits"].get(key)
        if f:
            ax.set_title(f"exponent {f['exponent']:.2f}", fontsize=9)
    save_figure(fig, path, palette=True)


def markdown(payload: dict[str, Any]) -> str:
    """The tables of docs/scaling.md's section on this benchmark, from its JSON."""
    rows = [
        "| sweep | point | n | product wall s | product CPU s | set-up MiB | product MiB | load |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for sweep, key in (("batch", "batch"), ("params", "model")):
        for p in payload[sweep]:
            if "product_s" in p:
                rows.append(
                    f"| {sweep} | {p[key]} | {p['n']:,} | {p['product_s']:.2f} | "
                    f"{p['product_cpu_s']:.2f} | {p['setup_mib']:.0f} | {p['product_mib']:.0f} | "
                    f"{p['load_average'][0]} |"
                )
    rows += [
        "",
        "| n | Lanczos HVPs | wall s | overhead CPU s | peak MiB | overhead share at ResNet cost |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    shares = {s["n"]: s for s in payload["lanczos_overhead_share_at_resnet_product_cost"]}
    for p in payload["lanczos"]:
        if "overhead_s" in p:
            share = shares.get(p["n"], {}).get("overhead_share", float("nan"))
            rows.append(
                f"| {p['n']:,} | {p['hvps']} | {p['wall_s']:.1f} | {p['overhead_cpu_s']:.2f} | "
                f"{p['peak_mib']:.0f} | {100 * share:.2f}% |"
            )
    rows += ["", "| fit (log-log least squares) | exponent | std. error | R^2 |"]
    rows.append("| --- | ---: | ---: | ---: |")
    for key, f in payload["fits"].items():
        if f:
            se = f.get("stderr", float("nan"))
            rows.append(f"| {key} | {f['exponent']:.2f} | {se:.2f} | {f['r2']:.3f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset, 2 repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batches", help=f"comma list (default {BATCHES})")
    parser.add_argument("--models", help=f"comma list of {list(MODELS)}")
    parser.add_argument("--sizes", help="comma list of n for the Lanczos sweep (default 1e4..1e7)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables of the last JSON and stop"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.markdown:  # also redraws the figure of a run stopped before its end
        name = "scaling_quick" if args.quick else "scaling"
        last = json.loads((RESULTS / f"{name}.json").read_text())
        figure(last, RESULTS / name)
        print(markdown(last))
        return 0
    if args.child:
        kind, *rest = args.child
        if kind == "product":
            rec = product_point(rest[0], int(rest[1]), int(rest[2]))
        else:
            rec = lanczos_point(int(rest[0]))
        print(json.dumps(rec))
        return 0
    batches = [b for b in BATCHES if b <= 128] if args.quick else list(BATCHES)
    models = ["resnet20_w8", "resnet20", "resnet32"] if args.quick else list(MODELS)
    sizes = [n for n in SIZES if n <= 10**6] if args.quick else list(SIZES)
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    if args.models:
        models = args.models.split(",")
    if args.sizes:
        sizes = [int(float(n)) for n in args.sizes.split(",")]
    repeats = 2 if args.quick else args.repeats
    sig = inspect.signature(HessianOperator.__init__).parameters
    payload: dict[str, Any] = {
        "quick": args.quick,
        "command": " ".join(sys.argv),
        "points": {"batches": batches, "models": models, "sizes": sizes},
        "torch_threads": args.threads,
        "repeats": repeats,
        "operator_defaults": {
            k: repr(v.default) for k, v in sig.items() if k in ("hvp_mode", "keep_graph")
        },
        "load_average_start": machine()["load_average_1_5_15min"],
        "batch": [],
        "params": [],
        "lanczos": [],
        "finished": False,
    }
    t0 = time.perf_counter()
    common = ["--threads", str(args.threads)]
    name = "scaling_quick" if args.quick else "scaling"

    def save() -> None:  # after every point, so that a stopped run keeps what it measured
        payload["fits"] = fits(payload)
        payload["lanczos_overhead_share_at_resnet_product_cost"] = overhead_shares(payload)
        payload["seconds_total"] = time.perf_counter() - t0
        write_json(name, payload)

    for b in batches:
        rec = run_child(["--child", "product", "resnet20", str(b), str(repeats), *common])
        payload["batch"].append({**rec, "load_average": machine()["load_average_1_5_15min"]})
        log(f"batch {b}: {rec.get('product_cpu_s', rec.get('error'))} CPU s")
        save()
    for m in models:
        rec = run_child(["--child", "product", m, "64", str(repeats), *common])
        payload["params"].append({**rec, "load_average": machine()["load_average_1_5_15min"]})
        log(f"{m}: n {rec.get('n')}, {rec.get('product_cpu_s', rec.get('error'))} CPU s")
        save()
    payload["params"].sort(key=lambda p: p.get("n", 0))
    for n in sizes:
        if eigsh_memory(n, K) > MAX_LANCZOS_BYTES:
            payload["lanczos"].append({"n": n, "skipped": "basis would exceed 6 GiB"})
            continue
        rec = run_child(["--child", "lanczos", str(n), *common])
        payload["lanczos"].append({**rec, "load_average": machine()["load_average_1_5_15min"]})
        log(f"lanczos n={n}: {rec.get('overhead_cpu_s', rec.get('error'))} CPU s")
        save()
    payload["finished"] = True
    save()
    path = RESULTS / f"{name}.json"
    figure(payload, RESULTS / name)
    log(f"wrote {path}")
    log(json.dumps(payload["fits"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
