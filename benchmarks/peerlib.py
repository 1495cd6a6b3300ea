"""What peers.py and gpu.py share: our operator's options, the peers' adapters, PyHessian's tracker.

- `our_options()`: what the installed `HessianOperator` offers (``hvp_mode``
  values, ``keep_graph``, ``product_dtype``), read from its signature and by
  trying each mode; `ours(...)` builds it with the options given that exist.
- `pyhessian_object`, `curvlinops_operator`, `eigenthings_operator`: each
  peer's Hessian on one batch (imported inside, as the ``bench`` extra may be
  absent); `peer_versions()`.
- `pyhessian_topk(h, ...)`: PyHessian's ``eigenvalues(top_n=k)`` with its
  products counted, its progress tracked and an optional time limit.
- RSS helpers (`status_kib`, `reset_peak`), `order_lm`, `max_rel_err`,
  `count_scipy`, `timed`.
- `headlines(payload)`: the issue's "must show" lines from peers.py's JSON;
  `merged(...)`: one run's parts over the JSON on disk.
"""

from __future__ import annotations

import gc
import inspect
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import torch
from torch import nn

from hessian_spectra.operators.hessian import HessianOperator

try:  # the block strategies and their rule, in versions that have them
    from hessian_spectra.operators import products
except ImportError:
    products = None  # type: ignore[assignment]

K = 20
CANDIDATE_MODES = ("auto", "double_backward", "batched_backward", "forward_over_reverse")
Batch = tuple[torch.Tensor, torch.Tensor]


# ------------------------------------------------------------------ our options


def our_options() -> dict[str, Any]:
    """What the installed HessianOperator offers: its signature and the hvp_mode values."""
    sig = inspect.signature(HessianOperator.__init__).parameters
    model = nn.Linear(2, 1)
    batch = (torch.randn(4, 2), torch.randn(4, 1))
    modes = []
    for mode in CANDIDATE_MODES:
        try:
            HessianOperator(model, nn.MSELoss(), batch, hvp_mode=mode, check_deterministic=False)
            modes.append(mode)
        except (ValueError, TypeError):
            pass
    default = {k: repr(v.default) for k, v in sig.items() if k in ("hvp_mode", "keep_graph")}
    auto = getattr(products, "auto_mode", None) if products else None
    return {
        "hvp_modes": modes,
        "auto_resolves_to_on_cpu": {
            f"b{b}": auto(torch.device("cpu"), b) for b in (1, 8) if auto is not None
        },
        "defaults": default,
        "keep_graph": "keep_graph" in sig,
        "product_dtype": "product_dtype" in sig,
    }


def ours(model: nn.Module, crit: nn.Module, batch: Any, **kw: Any) -> HessianOperator:
    """Our operator with the given options (those the installed version lacks are dropped)."""
    sig = inspect.signature(HessianOperator.__init__).parameters
    kw = {k: v for k, v in kw.items() if k in sig}
    return HessianOperator(model, crit, batch, check_deterministic=False, **kw)


# ------------------------------------------------------------------ peers


def flat(ts: Any) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def split_like(v: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in params:
        out.append(v[i : i + p.numel()].view_as(p))
        i += p.numel()
    return out


def pyhessian_object(model: nn.Module, crit: nn.Module, batch: Batch) -> Any:
    from pyhessian import hessian  # optional extra (bench)

    model.zero_grad(set_to_none=True)  # its backward() accumulates into .grad
    return hessian(model, crit, data=batch, cuda=False)


def curvlinops_operator(model: nn.Module, crit: nn.Module, batch: Batch) -> Any:
    from curvlinops import HessianLinearOperator  # optional extra (bench)

    params = [p for p in model.parameters() if p.requires_grad]
    return HessianLinearOperator(
        model, crit, params, [batch], check_deterministic=False, num_data=len(batch[0])
    )


def eigenthings_operator(model: nn.Module, crit: nn.Module, batch: Batch) -> Any:
    import hessian_eigenthings as he  # optional extra (bench)

    return he.HessianOperator(model, [batch], he.supervised_loss(crit))


def source_state() -> dict[str, Any]:
    """The commit measured, and the operator files that differed from it (work in progress)."""
    root = Path(__file__).resolve().parents[1]

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=root, capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            return ""

    dirty = git("status", "--porcelain", "--", "src/hessian_spectra/operators")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_operators": dirty.splitlines(),
    }


def peer_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("pyhessian", "curvlinops-for-pytorch", "hessian-eigenthings", "torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        return True
    except OSError:
        return False


def order_lm(values: Any) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[np.argsort(-np.abs(v), kind="stable")]


def max_rel_err(values: Any, reference: np.ndarray) -> float:
    v = order_lm(values)
    if v.size != reference.size:
        return float("nan")
    return float(np.max(np.abs(v - reference) / np.abs(reference)))


class OutOfTime(Exception):
    """Raised inside PyHessian's loop once it has used the seconds allowed."""


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def pyhessian_topk(
    h: Any, ref: np.ndarray | None, max_seconds: float | None, k: int = K, wall: bool = False
) -> dict[str, Any]:
    """PyHessian's ``h.eigenvalues(top_n=k)`` at its defaults; products and progress tracked.

    `h` is a PyHessian ``hessian`` object built on one batch (``data=``) or on
    a loader (``dataloader=``); its products are counted either way.
    """
    import pyhessian  # noqa: F401  optional extra (bench)

    mod = sys.modules["pyhessian.hessian"]  # the module, which its class name shadows
    orig_hvp, orig_orth = mod.hessian_vector_product, mod.orthnormal
    orig_loader = h.dataloader_hv_product
    state: dict[str, Any] = {"count": 0, "dim": 0, "per_dim": {}, "c0": 0.0}

    def note(q: float) -> None:
        # the limit is on process CPU seconds, which other jobs on the machine do not
        # inflate (wall seconds with wall=True: on a GPU the CPU mostly waits)
        now = time.perf_counter() - state["t0"] if wall else time.process_time() - state["c0"]
        if max_seconds is not None and now > max_seconds:
            raise OutOfTime
        state["count"] += 1
        rec = state["per_dim"].setdefault(state["dim"], {"hvps": 0, "q": []})
        rec["hvps"] += 1
        rec["q"] = (rec["q"] + [q])[-2:]

    def hvp(gradsH: Any, params: Any, v: Any) -> Any:
        hv = orig_hvp(gradsH, params, v)
        with torch.no_grad():
            note(float(sum((a * b).sum() for a, b in zip(hv, v, strict=True))))
        return hv

    def loader_hvp(v: Any) -> Any:
        q, hv = orig_loader(v)
        note(q)
        return q, hv

    def orth(w: Any, v_list: Any) -> Any:
        state["dim"] = len(v_list)
        return orig_orth(w, v_list)

    torch.manual_seed(0)
    mod.hessian_vector_product, mod.orthnormal = hvp, orth
    h.dataloader_hv_product = loader_hvp
    finished, vals = True, []
    t0, c0 = time.perf_counter(), time.process_time()
    state["c0"], state["t0"] = c0, t0
    try:
        vals, _ = h.eigenvalues(top_n=k)
    except OutOfTime:
        finished = False
    finally:
        mod.hessian_vector_product, mod.orthnormal = orig_hvp, orig_orth
        h.dataloader_hv_product = orig_loader
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        h.model.zero_grad(set_to_none=True)
    done = k if finished else state["dim"]
    # the value PyHessian appends: the Rayleigh quotient before the last one when its
    # tolerance test broke the loop, the last one after maxIter=100 products
    found = [
        r["q"][-1] if r["hvps"] >= 100 else r["q"][0]
        for d, r in sorted(state["per_dim"].items())
        if d < done
    ]
    out: dict[str, Any] = {
        "settings": {
            "top_n": k,
            "maxIter": 100,
            "tol": 1e-3,
            ("max_wall_seconds" if wall else "max_cpu_seconds"): max_seconds,
        },
        "finished": finished,
        "eigenvalues_finished": done,
        "hvps": state["count"],
        "hvps_per_eigenvalue": [r["hvps"] for _, r in sorted(state["per_dim"].items())],
        "seconds": seconds,
        "cpu_seconds": cpu,
        # read off the tracked products: equal to what PyHessian returns when it finishes
        "finished_values": found,
    }
    if finished:
        raw = np.asarray(vals, dtype=np.float64)
        out["out_of_order"] = int(np.sum(np.diff(np.abs(raw)) > 0))
        out["eigenvalues_as_returned"] = raw.tolist()
    elif done:
        out["extrapolated_seconds_for_top_n"] = {
            "value": seconds / done * k,
            "cpu_value": cpu / done * k,
            "how": f"EXTRAPOLATED: {done} eigenvalues finished in {seconds:.0f} s "
            f"({cpu:.0f} CPU s), x {k}/{done} (deflation makes later ones no cheaper)",
        }
    if ref is not None:
        score_pyhessian(out, ref)
    return out


def score_pyhessian(out: dict[str, Any], ref: np.ndarray) -> None:
    """Errors of a `pyhessian_topk` record against the reference (LM order), in place."""
    if out["finished"]:
        out["max_rel_err"] = max_rel_err(out["eigenvalues_as_returned"], ref)
    else:
        # each finished value against the nearest reference value
        near = [float(np.min(np.abs(ref - f) / np.abs(ref))) for f in out["finished_values"]]
        out["finished_max_rel_err_to_nearest_reference"] = max(near) if near else None


def count_scipy(A: spla.LinearOperator) -> tuple[spla.LinearOperator, dict[str, int]]:
    count = {"hvps": 0}

    def mv(x: np.ndarray) -> np.ndarray:
        count["hvps"] += 1
        return A.matvec(x)

    def mm(X: np.ndarray) -> np.ndarray:
        count["hvps"] += X.shape[1]
        return A.matmat(X)

    return spla.LinearOperator(A.shape, matvec=mv, matmat=mm, dtype=A.dtype), count


# ------------------------------------------------------------------ the JSON of peers.py


def best_block(products: dict[str, Any]) -> tuple[str, float] | None:
    """The cheapest block variant of ours per column, relative to PyHessian's product."""
    cands = {
        k: r["ratio_vs_pyhessian"]
        for k, r in products["variants"].items()
        if k.startswith("ours_b8") and "ratio_vs_pyhessian" in r
    }
    return min(cands.items(), key=lambda kv: kv[1]) if cands else None


def headlines(payload: dict[str, Any]) -> dict[str, Any]:
    """The issue's "must show" lines, each with the load average of its measurement."""
    out: dict[str, Any] = {}
    for threads, rec in payload.get("headline_products", {}).items():
        r = rec["ratio_per_column_vs_pyhessian"]
        ours_v = rec["variants"].get("ours", {})
        line: dict[str, Any] = {
            "load_average_before": rec["load_average_before"],
            "load_average_after": rec["load_average_after"],
        }
        if "ours" in r:
            line["single_product_ours_over_pyhessian"] = r["ours"]
            line["single_product_cpu_ratio"] = ours_v["cpu_ratio_vs_pyhessian"]
            line["single_product_target_1.05_met"] = r["ours"] <= 1.05
            line["ours_vs_pyhessian_rel_diff"] = ours_v["rel_diff_vs_pyhessian"]
            line["agree_to_1e-5"] = ours_v["rel_diff_vs_pyhessian"] <= 1e-5
        if "ours_b8" in r:
            line["block8_per_column_over_pyhessian"] = r["ours_b8"]
            line["block8_target_0.6_met"] = r["ours_b8"] <= 0.6
        out[f"resnet20_b64_products_threads{threads}"] = line
    full = payload.get("products", {}).get("resnet20_b64")
    if full:
        best = best_block(full)
        if best:
            out["resnet20_b64_best_block_mode"] = {
                "variant": best[0],
                "per_column_over_pyhessian": best[1],
                "threads": full["torch_threads"],
                "load_average_before": full["load_average_before"],
            }
    top = payload.get("topk", {}).get("resnet20_b128")
    if top and "ratio_seconds_ours_over" in top:
        o, ph = top["runs"]["ours"], top["runs"].get("pyhessian", {})
        line = {
            "ours_seconds": o["seconds"],
            "ours_max_rel_err": o["max_rel_err"],
            "pyhessian_seconds": ph.get("seconds"),
            "pyhessian_finished": ph.get("finished"),
            "pyhessian_max_rel_err": ph.get(
                "max_rel_err", ph.get("finished_max_rel_err_to_nearest_reference")
            ),
            "load_average_after": top["load_average_after"],
            "threads": top.get("torch_threads"),
            "load_average_before": top.get("load_average_before"),
        }
        if "pyhessian" in top["ratio_seconds_ours_over"]:
            ratio = top["ratio_seconds_ours_over"]["pyhessian"]
            line["wall_time_ours_over_pyhessian"] = ratio
            line["speedup"] = 1 / ratio
            line["speedup_is_lower_bound"] = not ph.get("finished", True)
            line["target_8x_met"] = ratio <= 1 / 8 and o["max_rel_err"] <= 1e-4
            if "ratio_seconds_ours_over_pyhessian_EXTRAPOLATED" in top:
                x = top["ratio_seconds_ours_over_pyhessian_EXTRAPOLATED"]
                line["EXTRAPOLATED_speedup"] = 1 / x
                xc = top["ratio_cpu_seconds_ours_over_pyhessian_EXTRAPOLATED"]
                line["EXTRAPOLATED_cpu_time_speedup"] = 1 / xc
            if "cpu_seconds" in ph:
                line["cpu_time_speedup"] = ph["cpu_seconds"] / o["cpu_seconds"]
        out["resnet20_b128_top20"] = line
    return out


def merged(
    previous: Path, payload: dict[str, Any], log_entry: dict[str, Any], full: bool
) -> dict[str, Any]:
    """This run's parts over those of the JSON on disk, read now (another run may have written).

    Each part keeps its own time stamp, threads and load averages; ``run_log``
    lists the runs whose parts the file holds.
    """
    old = json.loads(previous.read_text()) if previous.exists() and not full else {}
    runs = [r for r in old.get("run_log", []) if r.get("started_utc") != log_entry["started_utc"]]
    out = {**payload, "run_log": [*runs, log_entry]}
    for key in ("products", "memory", "topk", "headline_products"):
        out[key] = {**old.get(key, {}), **payload.get(key, {})}
    return out
