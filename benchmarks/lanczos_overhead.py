"""The share of Lanczos's wall time spent outside the products, for n up to 10^7.

``eigsh(method="lanczos")`` (top 10, ``max_basis=40``, float32) on a
diagonal operator (a product costs one pass over n numbers: the cheapest
operator there is, so everything else shows) with a Hessian-like spectrum
(20 separated top eigenvalues above a bulk). The kernel's parts are timed by
wrapping its methods: the products, the reorthogonalization (classical
Gram-Schmidt against the basis, twice when needed, and for comparison the
former twice always, run back to back), the Ritz extraction (the small
eigenproblem) and the thick restarts; the rest is the bookkeeping of the
driver (convergence tests, history).

Against a realistic product: a ResNet20 HVP on a batch of 64 with the kept
graph costs some seconds per parameter, measured at the start of the run
(so under the load the runs share), and a model of n parameters costs
about n times that per product. The overhead's share of
the wall time with such products is reported beside the diagonal one.

Run: ``nice -n 10 python benchmarks/lanczos_overhead.py [--sizes 1e5,1e6,1e7]``
(one thread; writes ``benchmarks/results/lanczos_overhead.json``).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from common import median_seconds, resnet20_problem, write_json

import hessian_spectra as hs
from hessian_spectra.algorithms.lanczos import LanczosProcess
from hessian_spectra.operators.base import LinearOperator

TIMED = {"orthogonalization": "_orthogonalize", "ritz": "ritz", "restart": "restart"}


class Diagonal(LinearOperator):
    """diag(d), timing its own products."""

    def __init__(self, d: torch.Tensor) -> None:
        super().__init__(d.numel(), d.dtype, d.device)
        self.d = d[:, None]
        self.seconds = 0.0

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.d * V
        self.seconds += time.perf_counter() - t0
        return out


def spectrum(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    top = 10.0 / (1.0 + 0.15 * torch.arange(20, dtype=torch.float64))
    bulk = torch.rand(n - 20, generator=g, dtype=torch.float64) * 0.5
    d = torch.cat([top, bulk])
    return d[torch.randperm(n, generator=g)].float()


def timed_kernel() -> tuple[dict[str, float], Callable[[], None]]:
    """Wrap the kernel's methods to add up their seconds; returns the totals and an undo."""
    totals = dict.fromkeys(TIMED, 0.0)
    originals = {attr: getattr(LanczosProcess, attr) for attr in TIMED.values()}

    def wrap(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - t0

        return timed

    for label, attr in TIMED.items():
        setattr(LanczosProcess, attr, wrap(label, originals[attr]))

    def undo() -> None:
        for attr, fn in originals.items():
            setattr(LanczosProcess, attr, fn)

    return totals, undo


def _always_twice(self: LanczosProcess, w: torch.Tensor, upto: int) -> torch.Tensor:
    """The former reorthogonalization: classical Gram-Schmidt twice, always (for comparison)."""
    Qj = self.Q[:, :upto]
    for _ in range(2):
        w = w - Qj @ (Qj.T @ w)
    return w


def run(n: int, hvp_s_per_param: float, always_twice: bool = False) -> dict[str, Any]:
    op = Diagonal(spectrum(n))
    current = LanczosProcess._orthogonalize
    if always_twice:
        LanczosProcess._orthogonalize = _always_twice  # type: ignore[method-assign]
    totals, undo = timed_kernel()
    try:
        t0 = time.perf_counter()
        res = hs.eigsh(op, k=10, which="LA", seed=0, tol=1e-5, max_basis=40)
        wall = time.perf_counter() - t0
    finally:
        undo()
        LanczosProcess._orthogonalize = current  # type: ignore[method-assign]
    # orthogonalization inside a restart is counted in both; keep them apart
    overhead = wall - op.seconds
    steps = res.num_matvecs
    realistic_products = steps * n * hvp_s_per_param
    return {
        "n": n,
        "reorthogonalization": "twice always" if always_twice else "twice when needed",
        "num_matvecs": steps,
        "max_abs_eigenvalue_error": float(
            abs(res.eigenvalues - op.d[:, 0].double().topk(10).values.numpy()).max()
        ),
        "converged": int(res.converged.sum()),
        "wall_s": wall,
        "products_s": op.seconds,
        "parts_s": totals,
        "overhead_s": overhead,
        "overhead_per_step_s": overhead / steps,
        "overhead_share_diagonal": overhead / wall,
        "realistic_product_s": n * hvp_s_per_param,
        "overhead_share_realistic": overhead / (overhead + realistic_products),
        "orthogonalization_share_realistic": totals["orthogonalization"]
        / (overhead + realistic_products),
        "basis_bytes": 41 * n * 4,
    }


def hvp_cost_per_param(repeats: int = 5) -> tuple[float, str]:
    """Seconds per parameter of a ResNet20 product (batch 64, kept graph, one column),
    measured here and now, so that it shares the machine's load with the runs it
    is set against."""
    model, crit, batch, op = resnet20_problem(torch.float32, batch=64, seed=0)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0))
    # the warm-up call builds and keeps the graph
    med = median_seconds(lambda: op.matvec(v), repeats, warmup=1)["median"]
    return med / op.shape[0], (
        f"measured in this run: ResNet20 batch 64, kept graph, one column, median of "
        f"{repeats} ({med:.3f} s for {op.shape[0]:,} parameters)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    per, source = hvp_cost_per_param()
    load_before = os.getloadavg()
    runs = [
        run(int(float(s)), per, always_twice)
        for s in args.sizes.split(",")
        for always_twice in (True, False)
    ]
    path = write_json(
        "lanczos_overhead",
        {
            "threads": args.threads,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "hvp_s_per_param": per,
            "hvp_cost_source": source,
            "runs": runs,
        },
    )
    print(path)
    for r in runs:
        print(
            f"{r['reorthogonalization']}: n={r['n']:.0e} steps={r['num_matvecs']} "
            f"wall={r['wall_s']:.2f}s "
            f"products={r['products_s']:.2f}s parts={r['parts_s']} "
            f"share(diag)={r['overhead_share_diagonal']:.2f} "
            f"share(realistic)={r['overhead_share_realistic']:.3f}"
        )


if __name__ == "__main__":
    main()
