"""Axis labels and the number format every figure shares."""

from __future__ import annotations

HVP_LABEL = "Hessian-vector products (HVPs)"
EIG_LABEL = "eigenvalue λ (loss / parameter²)"


def fmt(x: float, digits: int = 4) -> str:
    """`x` with `digits` significant digits."""
    return f"{x:.{digits}g}"
