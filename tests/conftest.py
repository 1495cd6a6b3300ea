"""Shared fixtures: dense matrices with known spectra (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed)."""
    Z = rng.standard_normal((n, n))
    Q, R = np.linalg.qr(Z)
    return Q * np.sign(np.diag(R))


def matrix_with_spectrum(eigenvalues: np.ndarray, seed: int = 0) -> np.ndarray:
    """A symmetric matrix Q diag(eigenvalues) Q^T with Haar-random Q."""
    rng = np.random.default_rng(seed)
    lam = np.asarray(eigenvalues, dtype=np.float64)
    Q = random_orthogonal(lam.size, rng)
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2


@pytest.fixture
def spectrum_matrix():
    """Factory fixture: build a symmetric matrix with the given eigenvalues."""
    return matrix_with_spectrum
