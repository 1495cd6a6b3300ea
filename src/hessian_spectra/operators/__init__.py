"""Linear operators: the contract every algorithm sees, and its implementations."""

from hessian_spectra.operators.base import DenseOperator, LinearOperator, ShiftedOperator

__all__ = ["DenseOperator", "LinearOperator", "ShiftedOperator", "HessianOperator"]


def __getattr__(name: str) -> object:
    if name == "HessianOperator":
        from hessian_spectra.operators.hessian import HessianOperator

        return HessianOperator
    raise AttributeError(name)
