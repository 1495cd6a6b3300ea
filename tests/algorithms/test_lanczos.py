import numpy as np
import pytest
import torch

from hessian_spectra.algorithms.lanczos import lanczos
from tests.helpers import dense_op


def test_tridiagonal_is_projection_and_basis_orthonormal():
    # n = 200, 40 steps, full reorthogonalization: Q^T H Q = T and Q^T Q = I.
    lam = np.linspace(-1, 5, 200)
    op = dense_op(lam)
    v0 = torch.randn(200, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dec = lanczos(op, v0, 40)
    Q = dec.basis
    assert Q is not None and Q.shape == (200, 40)
    T = np.diag(dec.alpha) + np.diag(dec.beta[:-1], 1) + np.diag(dec.beta[:-1], -1)
    QtHQ = (Q.T @ op.matrix @ Q).numpy()
    np.testing.assert_allclose(QtHQ, T, atol=1e-12)
    assert dec.orthogonality_loss < 1e-13
    assert dec.num_matvecs == 40 == op.num_matvecs
    # H Q = Q T + beta_m q_{m+1} e_m^T
    R = (op.matrix @ Q).numpy() - Q.numpy() @ T
    R[:, -1] -= dec.beta[-1] * dec.next_vector.numpy()
    assert np.abs(R).max() < 1e-12


def test_no_reorth_produces_ghosts_full_does_not():
    # n = 400 with a dominant, well separated top: after 120 plain steps the top
    # eigenvalue has converged and been duplicated; full reorth has one copy.
    rng = np.random.default_rng(0)
    lam = np.concatenate([[100.0, 60.0, 40.0], rng.uniform(0, 1, 397)])
    op = dense_op(lam)
    v0 = torch.ones(400, dtype=torch.float64)
    plain = lanczos(op, v0, 120, reorth="none", store_basis=False)
    full = lanczos(op, v0, 120, reorth="full")
    th_plain, _ = plain.ritz(eigvals_only=True)
    th_full, _ = full.ritz(eigvals_only=True)
    copies_plain = int(np.sum(np.abs(th_plain - 100.0) < 1e-6 * 100))
    copies_full = int(np.sum(np.abs(th_full - 100.0) < 1e-6 * 100))
    assert copies_full == 1
    assert copies_plain >= 2


def test_breakdown_continues_with_orthogonal_vector():
    # A rank-3 matrix (n = 50): the Krylov space of v0 has dimension 4, so the
    # process breaks down and must restart; the basis stays orthonormal and the
    # Ritz values still include the three non-zero eigenvalues.
    lam = np.zeros(50)
    lam[:3] = [3.0, 2.0, 1.0]
    op = dense_op(lam)
    v0 = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dec = lanczos(op, v0, 10, generator=torch.Generator().manual_seed(0))
    assert dec.breakdowns, "expected a breakdown on a rank-3 operator"
    assert dec.orthogonality_loss < 1e-12
    th, _ = dec.ritz(eigvals_only=True)
    for x in (1.0, 2.0, 3.0):
        assert np.min(np.abs(th - x)) < 1e-10


def test_bad_v0_refused():
    op = dense_op(np.arange(5.0))
    with pytest.raises(ValueError, match="non-zero"):
        lanczos(op, torch.zeros(5, dtype=torch.float64), 3)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        lanczos(op, torch.ones(4, dtype=torch.float64), 3)
    with pytest.raises(ValueError, match="reorth"):
        lanczos(op, torch.ones(5, dtype=torch.float64), 3, reorth="partial")  # type: ignore[arg-type]
