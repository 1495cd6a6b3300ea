"""Top-20 eigenvalues: HVPs, seconds and errors of every method, against PyHessian and ARPACK.

Two problems, measured in one run on one machine:

- ``digits``: the trained digits CNN (2,650 parameters) on all 1,797 digits in
  float64, whose exact spectrum comes from the dense Hessian (cached by
  ``common.exact_digits_spectrum``). which="LA". Our Lanczos is run over a
  sweep of tolerances and SciPy's ``eigsh`` (ARPACK) over another, so HVPs can
  be compared at equal accuracy; the HVP count at which all 20 Ritz values of
  a long run first lie within 1e-4 of the exact ones is the floor no stopping
  rule can beat.
- ``resnet``: the study's ResNet20 (272,474 parameters, seeded init, eval mode)
  on a fixed random batch of 128, float32, which="LM" (an untrained network is
  indefinite; power iteration finds the largest magnitudes). Reference: our
  Lanczos on the float64 copy of the model at tol 1e-8, cross-checked against
  SciPy ``eigsh`` driven by PyHessian's own HVP.

Methods: our ``eigsh`` with method="lanczos" (default tol 1e-4), "block"
(block_size 8), "rqi" and "power" (residual rule, tol 1e-4, with a product
budget: 100 per eigenvalue on digits like PyHessian's maxIter, less on
ResNet20), PyHessian's ``hessian.eigenvalues(top_n=20)`` (its defaults:
maxIter 100, tol 1e-3; its products counted by wrapping its
``hessian_vector_product``) and SciPy ``eigsh`` on ``op.to_scipy()``. Errors
are the maximum relative error of the 20 values against the reference
(PyHessian's sorted first; how many it returned out of order is recorded).
Ratios are ours / theirs.

On ResNet20 PyHessian is stopped once it has run ``--pyhessian-factor`` (5)
times as long as our Lanczos: if it has not finished by then, the wall-time
target (ours <= 1/5 of PyHessian's) holds, its recorded seconds and HVPs are
lower bounds, and the ratios upper bounds. Its full behaviour on a problem it
finishes is in the digits part.

Run: ``python benchmarks/topk.py [--part digits|resnet|all] [--batch 128]``.
``--quick`` shrinks the sweeps and budgets for a smoke run; ``--batch`` and
``--resnet-methods`` scale the ResNet20 part to the machine (the JSON name
carries a non-default batch).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import torch
from common import (
    digits_problem,
    exact_digits_spectrum,
    pyhessian_available,
    resnet20_problem,
    write_json,
)

import hessian_spectra as hs
from hessian_spectra.operators.hessian import HessianOperator

K = 20
THREADS = 2


# ------------------------------------------------------------------ helpers


def max_rel_err(values: np.ndarray, reference: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if values.size != reference.size:
        return float("nan")
    return float(np.max(np.abs(values - reference) / np.abs(reference)))


def order_for(which: str, values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[np.argsort(-np.abs(v) if which == "LM" else -v, kind="stable")]


def ours(op: Any, which: str, reference: np.ndarray, **kwargs: Any) -> dict[str, Any]:
    """One eigsh run: HVPs, seconds, error, convergence."""
    start = op.num_matvecs
    t0 = time.perf_counter()
    res = hs.eigsh(op, K, which=which, seed=0, **kwargs)
    seconds = time.perf_counter() - t0
    vals = order_for(which, res.eigenvalues)
    return {
        "settings": {k: v for k, v in kwargs.items()},
        "hvps": op.num_matvecs - start,
        "seconds": seconds,
        "max_rel_err": max_rel_err(vals, reference),
        "converged": int(res.converged.sum()),
        "stop_reason": res.stop_reason,
        "restarts": res.restarts,
        "eigenvalues": vals.tolist(),
        "history": res.history,
    }


def first_hvps_within(history: list[dict], reference: np.ndarray, which: str, rtol: float) -> int:
    """The first HVP count at which all K wanted Ritz values lie within rtol of the reference."""
    for rec in history:
        vals = np.asarray(rec.get("ritz_values", []), dtype=np.float64)
        if vals.size == K and max_rel_err(order_for(which, vals), reference) <= rtol:
            return int(rec["matvecs"])
    return -1


def stop_point(
    run: dict[str, Any], tol: float, reference: np.ndarray, which: str, dtype: torch.dtype
) -> dict[str, Any]:
    """Where a run at `tol` would have stopped, read off a longer run's history."""
    eps = float(torch.finfo(dtype).eps)
    for rec in run["history"]:
        vals = np.asarray(rec["ritz_values"], dtype=np.float64)
        res = np.asarray(rec["residuals"], dtype=np.float64)
        if vals.size < K:
            continue
        floor = eps * float(np.abs(rec["all_ritz_values"]).max())
        if np.all(res <= np.maximum(tol * np.abs(vals), floor)):
            return {
                "tol": tol,
                "hvps": int(rec["matvecs"]),
                "seconds": float(rec["seconds"]),
                "max_rel_err": max_rel_err(order_for(which, vals), reference),
                "from": "history of the tol 1e-8 run",
            }
    raise RuntimeError(f"the long run never met tol {tol}")


def arpack(op: Any, which: str, reference: np.ndarray, tol: float) -> dict[str, Any]:
    """SciPy eigsh (ARPACK) on op.to_scipy(), same seeded start as ours."""
    n = op.shape[0]
    v0 = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    start = op.num_matvecs
    t0 = time.perf_counter()
    w = spla.eigsh(op.to_scipy(), k=K, which=which, tol=tol, v0=v0, return_eigenvectors=False)
    seconds = time.perf_counter() - t0
    vals = order_for(which, w)
    return {
        "settings": {"tol": tol, "ncv": min(n, max(2 * K + 1, 20))},
        "hvps": op.num_matvecs - start,
        "seconds": seconds,
        "max_rel_err": max_rel_err(vals, reference),
        "eigenvalues": vals.tolist(),
    }


class OutOfTime(Exception):
    """Raised inside PyHessian's loop when it exceeds the time we allow it."""


class PyHessianCounter:
    """PyHessian's hessian object with its products counted (and optionally cut off).

    Args:
        max_seconds: stop PyHessian (by raising from its HVP) once it has run
            this long; its time is then a lower bound.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        criterion: Any,
        batch: tuple,
        max_seconds: float | None = None,
    ) -> None:
        from pyhessian import hessian as PyHessian

        self.module = sys.modules["pyhessian.hessian"]
        self.original = self.module.hessian_vector_product
        self.count = 0
        self.max_seconds = max_seconds
        self.t0 = time.perf_counter()

        def counted(gradsH: Any, params: Any, v: Any) -> Any:
            if self.max_seconds is not None and time.perf_counter() - self.t0 > self.max_seconds:
                raise OutOfTime
            self.count += 1
            return self.original(gradsH, params, v)

        self.module.hessian_vector_product = counted
        self.h = PyHessian(model, criterion, data=batch, cuda=False)

    def close(self) -> None:
        self.module.hessian_vector_product = self.original

    def scipy_operator(self) -> spla.LinearOperator:
        """PyHessian's own HVP as a SciPy operator (float64 in and out)."""
        params = self.h.params
        shapes = [p.shape for p in params]
        sizes = [p.numel() for p in params]
        n = sum(sizes)
        dtype = params[0].dtype

        def mv(x: np.ndarray) -> np.ndarray:
            flat = torch.as_tensor(np.asarray(x).reshape(-1), dtype=dtype)
            v = [t.reshape(s) for t, s in zip(torch.split(flat, sizes), shapes, strict=True)]
            self.h.model.zero_grad()
            hv = self.module.hessian_vector_product(self.h.gradsH, params, v)
            return torch.cat([t.reshape(-1) for t in hv]).detach().double().numpy()

        return spla.LinearOperator((n, n), matvec=mv, dtype=np.float64)


def pyhessian_topk(
    model: torch.nn.Module,
    criterion: Any,
    batch: tuple,
    which: str,
    reference: np.ndarray,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """PyHessian's eigenvalues(top_n=K) at its defaults, products counted.

    With `max_seconds`, PyHessian is stopped after that long; then ``finished``
    is False and its seconds and HVPs are lower bounds of a full run.
    """
    dtype = next(model.parameters()).dtype
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # PyHessian draws its vectors in the default dtype
    torch.manual_seed(0)
    ph = PyHessianCounter(model, criterion, batch)
    finished = True
    vals: list[float] = []
    try:
        ph.max_seconds = max_seconds
        ph.t0 = t0 = time.perf_counter()
        try:
            vals, _ = ph.h.eigenvalues(top_n=K)
        except OutOfTime:
            finished = False
        seconds = time.perf_counter() - t0
    finally:
        ph.close()
        torch.set_default_dtype(previous)
    out: dict[str, Any] = {
        "settings": {"top_n": K, "maxIter": 100, "tol": 1e-3, "max_seconds": max_seconds},
        "finished": finished,
        "hvps": ph.count,
        "seconds": seconds,
    }
    if finished:
        raw = np.asarray(vals, dtype=np.float64)
        key = np.abs(raw) if which == "LM" else raw
        out["out_of_order"] = int(np.sum(np.diff(key) > 0))
        out["max_rel_err"] = max_rel_err(order_for(which, raw), reference)
        out["eigenvalues_as_returned"] = raw.tolist()
    return out


def interleaved_hvp_cost(
    op: Any, model: torch.nn.Module, criterion: Any, batch: tuple, repeats: int = 5
) -> dict[str, Any]:
    """Median seconds of one HVP, ours (`op.matvec`) and PyHessian's, calls alternated.

    PyHessian on one batch keeps the gradient graph of its constructor and only
    backpropagates through it per product; ours redoes forward and gradient each
    time (it serves data sets of many batches the same way).
    """
    ph = PyHessianCounter(model, criterion, batch)
    try:
        params = ph.h.params
        gen = torch.Generator().manual_seed(1)
        v = torch.randn(op.shape[0], generator=gen).to(op.dtype)
        vl = [t.reshape(p.shape) for t, p in zip(op.unflatten(v).values(), params, strict=True)]
        ours_t, ph_t = [], []
        op.matvec(v)  # warm-up of both
        ph.module.hessian_vector_product(ph.h.gradsH, params, vl)
        for _ in range(repeats):
            t0 = time.perf_counter()
            op.matvec(v)
            ours_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ph.h.model.zero_grad()
            ph.module.hessian_vector_product(ph.h.gradsH, params, vl)
            ph_t.append(time.perf_counter() - t0)
    finally:
        ph.close()
    return {
        "repeats": repeats,
        "ours_s": float(np.median(ours_t)),
        "pyhessian_s": float(np.median(ph_t)),
        "ours_times_s": ours_t,
        "pyhessian_times_s": ph_t,
    }


def ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    return {"hvps": a["hvps"] / max(b["hvps"], 1), "seconds": a["seconds"] / b["seconds"]}


def strip(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "history"}


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------ digits


def digits_part(quick: bool) -> dict[str, Any]:
    which = "LA"
    exact = np.sort(exact_digits_spectrum())[::-1][:K]
    model, criterion, batch, op = digits_problem(torch.float64)
    log(f"digits: n = {op.shape[0]}, exact top: {exact[0]:.6g} ... {exact[-1]:.6g}")
    runs: dict[str, Any] = {}
    # One long run at tol 1e-8 holds the whole trajectory: the run at a looser tol
    # is the same process (same seed, no restart within the basis) stopped at the
    # first step where every wanted residual estimate meets that tol, so the sweep
    # is read off its history; the default tol 1e-4 is also run for real.
    longest = ours(op, which, exact, tol=1e-8)
    assert longest["restarts"] == 0
    sweep = []
    for tol in [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-6, 1e-8]:
        sweep.append(stop_point(longest, tol, exact, which, op.dtype))
        log(f"  lanczos tol={tol:g}: {sweep[-1]['hvps']} HVPs, err {sweep[-1]['max_rel_err']:.2e}")
    runs["lanczos"] = strip(ours(op, which, exact, tol=1e-4))
    assert runs["lanczos"]["hvps"] == next(r["hvps"] for r in sweep if r["tol"] == 1e-4)
    runs["lanczos_sweep"] = sweep
    floor_hvps = first_hvps_within(longest["history"], exact, which, 1e-4)
    log(f"  all 20 Ritz values within 1e-4 first at {floor_hvps} HVPs")
    arpack_sweep = []
    for tol in [1e-1, 1e-2] if quick else [1e-1, 1e-2, 1e-6]:
        run = arpack(op, which, exact, tol)
        log(f"  arpack tol={tol:g}: {run['hvps']} HVPs, err {run['max_rel_err']:.2e}")
        arpack_sweep.append(run)
    runs["arpack_sweep"] = arpack_sweep
    runs["arpack"] = next(r for r in arpack_sweep if r["settings"]["tol"] == 1e-2)
    # equal accuracy: at each accuracy level, the cheapest run of each sweep reaching it
    # (ARPACK tests convergence only at the end of a restart cycle, so its HVP counts
    # come in steps of ncv - k; ours can stop after any product)
    equal = []
    for level in [1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-12]:
        mine = [r for r in sweep if r["max_rel_err"] <= level]
        theirs = [r for r in arpack_sweep if r["max_rel_err"] <= level]
        if not (mine and theirs):
            continue
        a = min(theirs, key=lambda r: r["hvps"])
        b = min(mine, key=lambda r: r["hvps"])
        equal.append(
            {
                "accuracy": level,
                "arpack_tol": a["settings"]["tol"],
                "arpack_hvps": a["hvps"],
                "arpack_err": a["max_rel_err"],
                "ours_tol": b["tol"],
                "ours_hvps": b["hvps"],
                "ours_err": b["max_rel_err"],
                "hvp_ratio": b["hvps"] / a["hvps"],
                "oracle_hvps": first_hvps_within(longest["history"], exact, which, level),
            }
        )
    runs["block"] = strip(ours(op, which, exact, method="block", block_size=8, tol=1e-4))
    log(f"  block: {runs['block']['hvps']} HVPs, err {runs['block']['max_rel_err']:.2e}")
    runs["rqi"] = strip(ours(op, which, exact, method="rqi", tol=1e-4, max_matvecs=1000))
    log(f"  rqi: {runs['rqi']['hvps']} HVPs, err {runs['rqi']['max_rel_err']:.2e}")
    budget = 200 if quick else 100 * K  # PyHessian's maxIter=100 per eigenvalue
    runs["power"] = strip(ours(op, which, exact, method="power", tol=1e-4, max_matvecs=budget))
    log(f"  power: {runs['power']['hvps']} HVPs, err {runs['power']['max_rel_err']:.2e}")
    if pyhessian_available():
        runs["pyhessian"] = pyhessian_topk(model, criterion, batch, which, exact)
        log(
            f"  pyhessian: {runs['pyhessian']['hvps']} HVPs, "
            f"err {runs['pyhessian']['max_rel_err']:.2e}"
        )
    lz = runs["lanczos"]
    targets = {
        "lanczos_within_1e-4": lz["max_rel_err"] <= 1e-4,
        "lanczos_hvps_at_most_50": lz["hvps"] <= 50,
        "hvps_not_above_arpack_at_1e-4": all(
            e["hvp_ratio"] <= 1.0 for e in equal if e["accuracy"] == 1e-4
        ),
    }
    out = {
        "problem": {"model": "digits_cnn", "n": op.shape[0], "samples": 1797, "dtype": "float64"},
        "which": which,
        "reference": "dense float64 Hessian, numpy.linalg.eigvalsh",
        "reference_top": exact.tolist(),
        "hvps_when_all_within_1e-4": floor_hvps,
        "runs": runs,
        "equal_accuracy_vs_arpack": equal,
        "targets": targets,
    }
    if "pyhessian" in runs:
        out["ratios_vs_pyhessian"] = {
            m: ratios(runs[m], runs["pyhessian"]) for m in ("lanczos", "block", "rqi", "power")
        }
    out["ratios_vs_arpack"] = {m: ratios(runs[m], runs["arpack"]) for m in ("lanczos", "block")}
    return out


# ------------------------------------------------------------------ resnet


def resnet_part(
    quick: bool, batch_size: int, methods: list[str], pyhessian_factor: float
) -> dict[str, Any]:
    which = "LM"
    model, criterion, (x, y), op = resnet20_problem(torch.float32, batch=batch_size, seed=0)
    n = op.shape[0]
    log(f"resnet20: n = {n}, batch {batch_size}")
    # reference: our Lanczos on the float64 copy of the same model and batch
    model64 = copy.deepcopy(model).double()
    op64 = HessianOperator(model64, criterion, (x.double(), y))
    t0 = time.perf_counter()
    ref = hs.eigsh(op64, K, which=which, tol=1e-6 if quick else 1e-8, seed=0)
    ref_seconds = time.perf_counter() - t0
    reference = order_for(which, ref.eigenvalues)
    log(f"  reference (float64 Lanczos): {ref.num_matvecs} HVPs, {ref_seconds:.0f} s")
    runs: dict[str, Any] = {}
    budgets = {"rqi": 200 if quick else 600, "power": 100 if quick else 400}
    calls: dict[str, Callable[[], dict[str, Any]]] = {
        "lanczos": lambda: strip(ours(op, which, reference, tol=1e-4)),
        "block": lambda: strip(ours(op, which, reference, method="block", block_size=8, tol=1e-4)),
        "arpack": lambda: arpack(op, which, reference, 1e-4),
        "rqi": lambda: strip(
            ours(op, which, reference, method="rqi", tol=1e-4, max_matvecs=budgets["rqi"])
        ),
        "power": lambda: strip(
            ours(op, which, reference, method="power", tol=1e-4, max_matvecs=budgets["power"])
        ),
    }
    for name in ["lanczos", *[m for m in methods if m != "lanczos"]]:
        runs[name] = calls[name]()
        log(
            f"  {name}: {runs[name]['hvps']} HVPs, {runs[name]['seconds']:.0f} s, "
            f"err {runs[name]['max_rel_err']:.2e}"
        )
    cross: dict[str, Any] = {}
    hvp_cost: dict[str, Any] = {}
    if pyhessian_available():
        hvp_cost = interleaved_hvp_cost(op, model, criterion, (x, y))
        log(
            f"  seconds per HVP (median of {hvp_cost['repeats']}, interleaved): ours "
            f"{hvp_cost['ours_s']:.3f}, pyhessian {hvp_cost['pyhessian_s']:.3f}"
        )
        # PyHessian is stopped once it has taken `pyhessian_factor` times our Lanczos
        # time: if unfinished by then, its true time is larger still.
        limit = pyhessian_factor * runs["lanczos"]["seconds"] if pyhessian_factor > 0 else None
        runs["pyhessian"] = pyhessian_topk(model, criterion, (x, y), which, reference, limit)
        log(
            f"  pyhessian: {runs['pyhessian']['hvps']} HVPs, {runs['pyhessian']['seconds']:.0f} s"
            f", finished: {runs['pyhessian']['finished']}"
        )
        torch.manual_seed(0)
        ph = PyHessianCounter(model, criterion, (x, y))
        try:
            v0 = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            t0 = time.perf_counter()
            w = spla.eigsh(
                ph.scipy_operator(),
                k=K,
                which=which,
                tol=1e-6,
                v0=v0.numpy(),
                return_eigenvectors=False,
            )
            cross = {
                "method": "scipy eigsh (tol 1e-6) on PyHessian's hessian_vector_product, float32",
                "hvps": ph.count,
                "seconds": time.perf_counter() - t0,
                "max_rel_diff_vs_reference": max_rel_err(order_for(which, w), reference),
            }
        finally:
            ph.close()
        log(f"  cross-check: max rel diff {cross['max_rel_diff_vs_reference']:.2e}")
    out: dict[str, Any] = {
        "problem": {
            "model": "resnet20",
            "n": n,
            "batch": batch_size,
            "dtype": "float32",
            "init_seed": 0,
        },
        "which": which,
        "reference": {
            "method": "our eigsh (lanczos) on the float64 model",
            "tol": ref.settings["tol"],
            "hvps": ref.num_matvecs,
            "seconds": ref_seconds,
            "converged": int(ref.converged.sum()),
            "eigenvalues": reference.tolist(),
        },
        "cross_check": cross,
        "runs": runs,
        "budgets": {f"{m}_max_matvecs": b for m, b in budgets.items() if m in runs},
        "pyhessian_cut_off_at_times_our_lanczos_seconds": pyhessian_factor,
    }
    if "pyhessian" in runs:
        ph_run = runs["pyhessian"]
        out["ratios_vs_pyhessian"] = {m: ratios(runs[m], ph_run) for m in runs if m != "pyhessian"}
        out["ratios_vs_pyhessian_are_upper_bounds"] = not ph_run["finished"]
        # On a shared machine the load changes between runs, so the wall-time ratio is
        # also given as HVPs x seconds per HVP, the latter measured interleaved.
        lz = runs["lanczos"]
        projected = (lz["hvps"] * hvp_cost["ours_s"]) / (ph_run["hvps"] * hvp_cost["pyhessian_s"])
        out["hvp_cost"] = hvp_cost
        out["lanczos_over_pyhessian_seconds_from_hvp_cost"] = projected
        out["targets"] = {
            "lanczos_wall_time_at_most_1/5_of_pyhessian": lz["seconds"] <= ph_run["seconds"] / 5,
            "lanczos_hvps_x_cost_at_most_1/5_of_pyhessian": projected <= 0.2,
        }
    if "arpack" in runs:
        out["ratios_vs_arpack"] = {
            m: ratios(runs[m], runs["arpack"]) for m in ("lanczos", "block") if m in runs
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["digits", "resnet", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="smaller sweeps and budgets")
    parser.add_argument("--batch", type=int, default=128, help="ResNet20 batch size")
    parser.add_argument(
        "--resnet-methods",
        default="lanczos,block,arpack,rqi,power",
        help="comma-separated subset of lanczos,block,arpack,rqi,power for ResNet20",
    )
    parser.add_argument(
        "--pyhessian-factor",
        type=float,
        default=5.0,
        help="stop PyHessian on ResNet20 after this many times our Lanczos time (0: never)",
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    payload: dict[str, Any] = {
        "k": K,
        "quick": args.quick,
        "torch_threads": THREADS,
        "command": " ".join(sys.argv),
    }
    t0 = time.perf_counter()
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "digits": lambda: digits_part(args.quick),
        "resnet": lambda: resnet_part(
            args.quick, args.batch, args.resnet_methods.split(","), args.pyhessian_factor
        ),
    }
    for name, fn in parts.items():
        if args.part in (name, "all"):
            payload[name] = fn()
    payload["total_seconds"] = time.perf_counter() - t0
    suffix = "" if args.part == "all" else f"_{args.part}"
    if args.part != "digits" and args.batch != 128:
        suffix += f"_batch{args.batch}"
    path = write_json(f"topk{suffix}{'_quick' if args.quick else ''}", payload)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
