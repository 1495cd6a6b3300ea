"""Linear operators: the contract every algorithm sees, and its implementations.

- `base`: the `LinearOperator` contract, `DenseOperator`, `ShiftedOperator`.
- `model`: model handling shared by every curvature operator and analysis
  (`ModelLoss`, `select_parameters`, `ParameterSelection`, batch preparation
  and weights, the train-mode check).
- `hessian`: `HessianOperator`, the loss Hessian through Hessian-vector products.
- `ggn`, `fisher`: `GGNOperator` and `FisherOperator` (empirical or Monte-Carlo),
  the other curvature matrices of the same loss, on the Hessian's pass over the data.
- `preconditioned`: `PreconditionedOperator`, ``P^-1/2 H P^-1/2`` from an adaptive
  optimizer's state, and `stability_threshold`, the sharpness its step keeps stable.
- `sharding`: each rank's share of the data; `determinism`: the fixed-matrix check.
"""

from hessian_spectra.operators.base import (
    AsymmetricOperatorError,
    DenseOperator,
    LinearOperator,
    NonFiniteProductError,
    ShiftedOperator,
)
from hessian_spectra.operators.fisher import FisherOperator
from hessian_spectra.operators.ggn import GGNOperator
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
    has_preconditioner,
    stability_threshold,
)

__all__ = [
    "AsymmetricOperatorError",
    "Criterion",
    "DenseOperator",
    "FisherOperator",
    "GGNOperator",
    "HessianOperator",
    "LinearOperator",
    "LossFn",
    "ModelLoss",
    "NonFiniteProductError",
    "ParamSpec",
    "ParameterSelection",
    "PreconditionedOperator",
    "ShiftedOperator",
    "Threshold",
    "has_preconditioner",
    "select_parameters",
    "stability_threshold",
]
