"""Small tabular classification sets shipped with scikit-learn, standardized.

Offline and deterministic: breast cancer (569 samples, 30 features, 2
classes) and wine (178 samples, 13 features, 3 classes). Features are
standardized with the mean and standard deviation of the whole set.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_breast_cancer, load_wine

TABULAR_SETS = ("breast-cancer", "wine")


def tabular(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One of `TABULAR_SETS` as one batch.

    Returns:
        inputs: float32 (samples, features), each feature standardized.
        targets: int64 (samples,) class labels.
    """
    if name == "breast-cancer":
        bunch = load_breast_cancer()
    elif name == "wine":
        bunch = load_wine()
    else:
        raise ValueError(f"unknown tabular set {name!r}; choose from {', '.join(TABULAR_SETS)}")
    x = torch.as_tensor(bunch.data, dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
    return x.float(), torch.as_tensor(bunch.target, dtype=torch.int64)
