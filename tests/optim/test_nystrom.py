"""The Nystrom preconditioner: Newton's direction at full rank, the approximation's error bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.optim import NystromPreconditioner
from tests.helpers import dense_op, matrix_with_spectrum


@pytest.mark.parametrize("rank", [8, 12])
def test_full_rank_direction_is_newtons(rank):
    """rank >= n and rho -> 0: P^-1 g = H^-1 g, even at condition number 1e6."""
    lam = np.logspace(0, -6, 8)
    op = dense_op(lam, seed=1)
    pre = NystromPreconditioner.from_operator(op, rank=rank, rho=1e-14, seed=0)
    g = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    newton = torch.linalg.solve(op.matrix, g)
    d = pre.solve(g)
    assert float(torch.linalg.vector_norm(d - newton) / torch.linalg.vector_norm(newton)) < 1e-6
    assert pre.num_matvecs == 8


def test_products_are_consistent():
    """solve, apply and inv_sqrt are P^-1, P and P^-1/2 of one matrix."""
    op = dense_op(np.linspace(10.0, 0.1, 30), seed=3)
    pre = NystromPreconditioner.from_operator(op, rank=5, seed=0)
    eye = torch.eye(30, dtype=torch.float64)
    P, Pinv, Pm12 = pre.apply(eye), pre.solve(eye), pre.inv_sqrt(eye)
    assert torch.allclose(P @ Pinv, eye, atol=1e-10)
    assert torch.allclose(Pm12 @ Pm12, Pinv, atol=1e-10)
    assert torch.allclose(P, P.T, atol=1e-12)
    # the default rho is the sketch's smallest eigenvalue
    assert pre.rho == pytest.approx(float(pre.eigenvalues.min()))
    # P^-1/2 H P^-1/2 as an operator
    S = pre.preconditioned(op).matmat(eye)
    assert torch.allclose(S, Pm12 @ op.matrix @ Pm12, atol=1e-10)


def _expected_error_bound(lam: np.ndarray, ell: int) -> float:
    """Frangella, Tropp, Udell 2023 (SIMAX), the expected spectral-norm error of a rank-ell Nystrom
    approximation: min over 2 <= p <= ell - 2 of
    (1 + 2 (ell - p) / (p - 1)) lambda_{ell-p+1} + 2 e^2 ell / (p^2 - 1) sum_{j > ell - p} lambda_j.
    """
    best = math.inf
    for p in range(2, ell - 1):
        k = ell - p
        tail = float(lam[k:].sum())
        best = min(best, (1 + 2 * k / (p - 1)) * lam[k] + 2 * math.e**2 * ell / (p * p - 1) * tail)
    return best


def test_nystrom_error_bound():
    """0 <= H - H_nys (always), and the mean error over seeds is within the expected-error bound."""
    n, ell = 150, 20
    lam = 1.0 / np.arange(1, n + 1) ** 2  # a polynomially decaying spectrum
    A = matrix_with_spectrum(lam, seed=4)
    op = hs.DenseOperator(A)
    eye = torch.eye(n, dtype=torch.float64)
    errors = []
    for seed in range(20):
        pre = NystromPreconditioner.from_operator(op, rank=ell, seed=seed)
        E = torch.as_tensor(A) - pre.approximation(eye)
        E = (E + E.T) / 2
        w = torch.linalg.eigvalsh(E)
        assert float(w[0]) >= -1e-10 * lam[0]  # H_nys is below H
        errors.append(float(w[-1]))
    bound = _expected_error_bound(lam, ell)
    assert np.mean(errors) <= bound
    # the approximation is never better than the best rank-ell one
    assert min(errors) >= lam[ell] * (1 - 1e-8)


def test_exact_on_low_rank():
    lam = np.zeros(60)
    lam[:6] = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5]
    op = dense_op(lam, seed=5)
    pre = NystromPreconditioner.from_operator(op, rank=8, seed=0)
    eye = torch.eye(60, dtype=torch.float64)
    assert torch.allclose(pre.approximation(eye), op.matrix, atol=1e-10)


def test_state_dict_round_trip():
    op = dense_op(np.linspace(3.0, 0.1, 20), seed=6)
    pre = NystromPreconditioner.from_operator(op, rank=4, seed=0)
    back = NystromPreconditioner.from_state_dict(pre.state_dict())
    g = torch.randn(20, dtype=torch.float64)
    assert torch.equal(back.solve(g), pre.solve(g))
    assert back.rho == pre.rho and back.num_matvecs == 4


def test_bad_inputs_are_refused():
    U = torch.eye(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="rho must be positive"):
        NystromPreconditioner(torch.ones(2, dtype=torch.float64), U, 0.0)
    with pytest.raises(ValueError, match="non-negative eigenvalues"):
        NystromPreconditioner(torch.tensor([1.0, -1.0], dtype=torch.float64), U, 1.0)
    with pytest.raises(ValueError, match="expected eigenvalues"):
        NystromPreconditioner(torch.ones(3, dtype=torch.float64), U, 1.0)
    pre = NystromPreconditioner(torch.ones(2, dtype=torch.float64), U, 1.0)
    with pytest.raises(ValueError, match="same parameters"):
        pre.preconditioned(dense_op(np.ones(5)))
