"""Helpers shared by the tests: dense matrices and operators with known spectra.

Import them as ``from tests.helpers import ...``; `conftest.py` only wires
fixtures and settings and is never imported as a module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from hessian_spectra.operators import DenseOperator


def random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed)."""
    Z = rng.standard_normal((n, n))
    Q, R = np.linalg.qr(Z)
    return Q * np.sign(np.diag(R))


def matrix_with_spectrum(eigenvalues: np.ndarray | Sequence[float], seed: int = 0) -> np.ndarray:
    """A symmetric matrix Q diag(eigenvalues) Q^T with Haar-random Q (float64)."""
    rng = np.random.default_rng(seed)
    lam = np.asarray(eigenvalues, dtype=np.float64)
    Q = random_orthogonal(lam.size, rng)
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2


def dense_op(
    eigenvalues: np.ndarray | Sequence[float], seed: int = 0, dtype: torch.dtype = torch.float64
) -> DenseOperator:
    """A `DenseOperator` whose spectrum is exactly `eigenvalues`."""
    return DenseOperator(
        matrix_with_spectrum(np.asarray(eigenvalues, dtype=float), seed), dtype=dtype
    )


def bn_cnn() -> nn.Module:
    """A float64 Conv-BatchNorm-Tanh-Linear net (seed 1) in eval mode, on (2, 4, 4) inputs.

    Its BatchNorm has non-trivial running statistics, which a kept gradient
    graph saves, so tests of graph reuse see them.
    """
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(48, 3),
    ).double()
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(3) * 0.3)
        bn.running_var.copy_(torch.rand(3) + 0.5)
    return model.eval()
