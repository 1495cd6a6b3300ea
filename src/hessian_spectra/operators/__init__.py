"""Linear operators: the contract every algorithm sees, and its implementations.

- `base`: the `LinearOperator` contract, `DenseOperator`, `ShiftedOperator`.
- `model`: model handling shared by every curvature operator and analysis
  (`ModelLoss`, `select_parameters`, `ParameterSelection`, batch preparation
  and weights, the train-mode check).
- `hessian`: `HessianOperator`, the loss Hessian through Hessian-vector products.
- `preconditioned`: `PreconditionedOperator`, ``P^-1/2 H P^-1/2`` from an adaptive
  optimizer's state, and `stability_threshold`, the sharpness its step keeps stable.
- `sharding`: each rank's share of the data; `determinism`: the fixed-matrix check.
"""

from hessian_spectra.operators.base import DenseOperator, LinearOperator, ShiftedOperator
from hessian_spectra.operators.hessian import HessianOperator
from hessian_spectra.operators.model import (
    Criterion,
    LossFn,
    ModelLoss,
    ParameterSelection,
    ParamSpec,
    select_parameters,
)
from hessian_spectra.operators.preconditioned import (
    PreconditionedOperator,
    Threshold,
    stability_threshold,
)

__all__ = [
    "Criterion",
    "DenseOperator",
    "HessianOperator",
    "LinearOperator",
    "LossFn",
    "ModelLoss",
    "ParamSpec",
    "ParameterSelection",
    "PreconditionedOperator",
    "ShiftedOperator",
    "Threshold",
    "select_parameters",
    "stability_threshold",
]
