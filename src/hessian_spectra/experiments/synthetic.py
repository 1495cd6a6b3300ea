"""Synthetic test matrices for the reproduction experiments (data generation only).

The study's Figures 7-18 use random symmetric PSD 1000 x 1000 matrices with a
controlled fraction of zero eigenvalues and the rest drawn from Student's t
with one degree of freedom. The study has no code for them and does not say
how the (possibly negative) t samples were made PSD; taking absolute values is
the natural reading and the one used here. Eigenvectors are Haar-random
(Mezzadri 2007: QR of a Gaussian matrix with the signs of R's diagonal fixed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The study's power-iteration top 20 of its ResNet20 Hessian (sorted), from
#: its saved log; used to shape a spectrum like the study's for the ghost study.
STUDY_TOP20: tuple[float, ...] = (
    167.77,
    106.87,
    89.84,
    51.10,
    44.82,
    43.13,
    38.07,
    30.90,
    25.27,
    24.33,
    19.93,
    16.24,
    15.52,
    15.19,
    14.03,
    12.78,
    10.01,
    9.86,
    9.32,
    8.59,
)


@dataclass(frozen=True)
class SyntheticMatrix:
    """A symmetric matrix with a known spectrum.

    Attributes:
        matrix: (n, n) float64, symmetric.
        eigenvalues: (n,) the exact spectrum it was built from, descending.
        num_zero: how many of `eigenvalues` are exactly zero.
        seed: the seed it was drawn with.
    """

    matrix: np.ndarray
    eigenvalues: np.ndarray
    num_zero: int
    seed: int

    @property
    def n(self) -> int:
        return int(self.eigenvalues.size)

    @property
    def zero_fraction(self) -> float:
        return self.num_zero / self.n


def haar_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed n x n orthogonal matrix (QR of a Gaussian, signs of R fixed)."""
    Z = rng.standard_normal((n, n))
    Q, R = np.linalg.qr(Z)
    return Q * np.sign(np.diag(R))


def matrix_with_spectrum(eigenvalues: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Q diag(eigenvalues) Q^T with Haar-random Q, symmetrized exactly."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    Q = haar_orthogonal(lam.size, rng)
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2


def num_zero_eigenvalues(n: int, zero_fraction: float) -> int:
    """The number of zero eigenvalues for a fraction; refuses fractions n cannot hold exactly."""
    if not 0.0 <= zero_fraction < 1.0:
        raise ValueError(f"zero_fraction must be in [0, 1), got {zero_fraction}")
    count = zero_fraction * n
    num = int(round(count))
    if abs(count - num) > 1e-9 * max(1.0, count):
        raise ValueError(
            f"a {n} x {n} matrix cannot have exactly a fraction {zero_fraction} of zero "
            f"eigenvalues ({count:g} is not a whole number); pick n so that n * fraction "
            "is an integer"
        )
    return num


def synthetic_psd_matrix(n: int, zero_fraction: float, *, seed: int) -> SyntheticMatrix:
    """A random symmetric PSD matrix with exactly `zero_fraction * n` zero eigenvalues.

    The non-zero eigenvalues are |t| with t ~ Student-t(1) (Cauchy: heavy tails,
    like the outliers of network Hessians); the eigenvectors are Haar-random.

    Args:
        n: the size (the study used 1000).
        zero_fraction: the fraction of eigenvalues that are exactly zero;
            `n * zero_fraction` must be a whole number.
        seed: seed of the draw (spectrum and eigenvectors).

    Returns:
        A `SyntheticMatrix` with the matrix and its exact spectrum (descending).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    num_zero = num_zero_eigenvalues(n, zero_fraction)
    rng = np.random.default_rng(seed)
    nonzero = np.abs(rng.standard_t(1, size=n - num_zero))
    # A draw of exactly 0.0 has probability zero but would break the count.
    nonzero[nonzero == 0.0] = np.finfo(np.float64).tiny
    lam = np.sort(np.concatenate([nonzero, np.zeros(num_zero)]))[::-1].copy()
    return SyntheticMatrix(
        matrix=matrix_with_spectrum(lam, rng), eigenvalues=lam, num_zero=num_zero, seed=seed
    )


def study_like_spectrum(n: int, *, seed: int) -> np.ndarray:
    """A spectrum shaped like the study's ResNet20 Hessian, descending.

    The top 20 are the study's power-iteration eigenvalues (`STUDY_TOP20`, from
    168 down to 8.6); the remaining n - 20 form a bulk in [-0.05, 0.3] (the
    study's Figure 2: well over 99% of eigenvalues below 0.3, a few slightly
    negative).

    Args:
        n: the size, at least 21.
        seed: seed of the bulk.
    """
    if n <= len(STUDY_TOP20):
        raise ValueError(f"n must exceed {len(STUDY_TOP20)} to hold the study's top 20, got {n}")
    rng = np.random.default_rng(seed)
    bulk = rng.uniform(-0.05, 0.3, size=n - len(STUDY_TOP20))
    return np.sort(np.concatenate([np.asarray(STUDY_TOP20), bulk]))[::-1].copy()


def study_like_matrix(n: int, *, seed: int) -> SyntheticMatrix:
    """A symmetric matrix with `study_like_spectrum(n, seed=seed)` and Haar eigenvectors."""
    lam = study_like_spectrum(n, seed=seed)
    rng = np.random.default_rng([seed, 1])
    return SyntheticMatrix(
        matrix=matrix_with_spectrum(lam, rng), eigenvalues=lam, num_zero=0, seed=seed
    )
