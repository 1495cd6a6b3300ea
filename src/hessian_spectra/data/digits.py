"""scikit-learn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn)."""

from __future__ import annotations

import torch


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as one batch.

    Returns:
        inputs: float32 tensor (1797, 1, 8, 8), pixel values / 16 (in [0, 1]).
        targets: int64 tensor (1797,) of class labels 0-9.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return x, y
