"""Small dense linear algebra every algorithm shares: random blocks, products, bases.

Random blocks are drawn on the CPU from an explicit `torch.Generator`, so a
seed gives the same numbers on every device and dtype. The small dense algebra
around the products (QR, projected matrices) runs in a work dtype, float64
except where a device lacks it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hessian_spectra.operators.base import LinearOperator


def gaussian(op: LinearOperator, b: int, generator: torch.Generator) -> torch.Tensor:
    """An (n, b) standard normal block in the operator's dtype and device.

    Drawn on the CPU in float64 so that a seed gives the same numbers on every
    device and dtype.
    """
    Z = torch.randn((op.shape[0], b), generator=generator, dtype=torch.float64)
    return Z.to(dtype=op.dtype, device=op.device)


def rademacher(op: LinearOperator, b: int, generator: torch.Generator) -> torch.Tensor:
    """An (n, b) block of independent +-1 entries in the operator's dtype and device."""
    Z = torch.randint(0, 2, (op.shape[0], b), generator=generator, dtype=torch.int8)
    return (2 * Z - 1).to(dtype=op.dtype, device=op.device)


def work_dtype(op: LinearOperator) -> torch.dtype:
    """The dtype of the small dense algebra: float64 except where a device lacks it."""
    return torch.float32 if op.device.type == "mps" else torch.float64


def mul(op: LinearOperator, V: torch.Tensor) -> torch.Tensor:
    """H V in V's dtype, the product taken in the operator's dtype."""
    return op.matmat(V.to(op.dtype)).to(V.dtype)


def orth(Y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the columns of Y (Householder QR, robust to rank loss)."""
    Q, _ = torch.linalg.qr(Y, mode="reduced")
    return Q


def range_finder(
    op: LinearOperator,
    Omega: torch.Tensor,
    power_steps: int = 0,
    *,
    on_pass: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """Q = orth(H^q H Omega): the randomized range finder with q power steps.

    Halko, Martinsson and Tropp 2011 ("Finding structure with randomness",
    SIAM Review, Alg. 4.4): each pass is one block product of an orthonormal
    basis, so the power steps sharpen the range without losing its smaller
    directions to rounding. The algebra runs in Omega's dtype, the products in
    the operator's. `on_pass(p)` is called after each product (p = 0 for
    H Omega, then 1..q for the power steps). Costs (1 + q) b products for a
    (n, b) Omega.
    """
    Y = mul(op, Omega)
    if on_pass is not None:
        on_pass(0)
    for q in range(power_steps):
        Y = mul(op, orth(Y))
        if on_pass is not None:
            on_pass(q + 1)
    return orth(Y)
