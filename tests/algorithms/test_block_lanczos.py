"""eigsh(method="block"): block Lanczos on matmat, deflation, multiplicity, restarts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.algorithms.eigen._ritz import rayleigh_ritz
from hessian_spectra.algorithms.eigen.block import BlockLanczosState
from hessian_spectra.operators.base import DenseOperator
from tests.algorithms.test_eigsh import check_pairs, no_ghosts, true_residuals
from tests.helpers import dense_op, matrix_with_spectrum


class CountingOperator(DenseOperator):
    """Records the number of columns of every block product."""

    def __init__(self, matrix):
        super().__init__(matrix)
        self.blocks: list[int] = []

    def _matmat(self, V):
        self.blocks.append(int(V.shape[1]))
        return super()._matmat(V)


@pytest.mark.parametrize("block_size", [3, 4, 8])
def test_repeated_top_returned_with_its_multiplicity(block_size):
    # n = 300, k = 3: the top eigenvalue 10 has multiplicity 3; a block of at least 3
    # vectors returns it three times, where single-vector Lanczos returns 10, 8, 7.
    rng = np.random.default_rng(2)
    lam = np.concatenate([[10.0, 10.0, 10.0, 8.0, 7.0], rng.uniform(0, 5, 295)])
    op = dense_op(lam, seed=2)
    res = hs.eigsh(op, 3, method="block", block_size=block_size, tol=1e-8, seed=2)
    check_pairs(op, res, [10.0, 10.0, 10.0], 1e-8)
    no_ghosts(res.eigenvalues, lam)
    single = hs.eigsh(op, 3, tol=1e-8, seed=2)
    np.testing.assert_allclose(single.eigenvalues, [10.0, 8.0, 7.0], rtol=1e-8)


def test_well_separated_and_clustered_top():
    # n = 400, k = 8 with block_size 4: a separated pair on top of a cluster with
    # relative gaps 1e-3.
    rng = np.random.default_rng(1)
    top = np.concatenate([[20.0, 15.0], 10.0 * (1 - 1e-3 * np.arange(8))])
    lam = np.concatenate([top, rng.uniform(0, 5, 390)])
    op = dense_op(lam, seed=1)
    res = hs.eigsh(op, 8, method="block", block_size=4, tol=1e-8, seed=1)
    check_pairs(op, res, top[:8], 1e-8)
    no_ghosts(res.eigenvalues, lam)
    assert res.method == "block"


@pytest.mark.parametrize(
    ("which", "k", "expected"),
    [("SA", 3, [-6.0, -5.0, -4.5]), ("BE", 4, [7.0, 6.5, -6.0, -5.0])],
)
def test_indefinite_ends(which, k, expected):
    # n = 300 with a negative end -6, -5, -4.5 and a positive end 7, 6.5, 5.8.
    rng = np.random.default_rng(4)
    lam = np.concatenate([[-6.0, -5.0, -4.5, 7.0, 6.5, 5.8], rng.uniform(-1, 1, 294)])
    op = dense_op(lam, seed=4)
    res = hs.eigsh(op, k, which=which, method="block", block_size=4, tol=1e-8, seed=4)
    check_pairs(op, res, expected, 1e-8)


def test_products_are_blocks_of_block_size():
    # n = 200, k = 4, block_size 4: every product is one block of 4 columns.
    rng = np.random.default_rng(5)
    A = matrix_with_spectrum(np.concatenate([[9.0, 8.0, 7.0, 6.0], rng.uniform(0, 4, 196)]), 5)
    op = CountingOperator(A)
    res = hs.eigsh(op, 4, method="block", block_size=4, tol=1e-8, seed=0)
    assert res.converged.all()
    assert set(op.blocks) == {4}
    assert res.num_matvecs == 4 * len(op.blocks) == len(res.history) * 4


def test_rank_deficient_start_block_is_deflated():
    # n = 200, k = 3, v0 with 4 columns of rank 2: the dependent directions are
    # dropped and replaced by random ones, so the basis stays orthonormal.
    rng = np.random.default_rng(6)
    lam = np.concatenate([[9.0, 8.0, 7.0], rng.uniform(0, 4, 197)])
    op = dense_op(lam, seed=6)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 2, dtype=torch.float64, generator=g)
    V0 = torch.cat([X, 2 * X], dim=1)
    res = hs.eigsh(op, 3, method="block", block_size=4, v0=V0, tol=1e-8, seed=0)
    check_pairs(op, res, [9.0, 8.0, 7.0], 1e-8)


def test_invariant_block_deflates_to_the_exact_spectrum():
    # n = 50, a rank-3 operator, block_size 4: H V has rank 3, so the second block
    # is deflated; the three non-zero eigenvalues come out exactly.
    lam = np.zeros(50)
    lam[:3] = [3.0, 2.0, 1.0]
    op = dense_op(lam, seed=7)
    gen = torch.Generator().manual_seed(0)
    state = BlockLanczosState(op, None, 4, 20, gen)
    state.step()
    state.step()
    assert state.deflations >= 1
    assert state.orthogonality_loss() < 1e-12
    theta, _, res = state.ritz()
    for x in (1.0, 2.0, 3.0):
        i = int(np.argmin(np.abs(theta - x)))
        assert abs(theta[i] - x) < 1e-12 and res[i] < 1e-12
    out = hs.eigsh(op, 3, method="block", block_size=4, tol=1e-10, seed=0)
    np.testing.assert_allclose(out.eigenvalues, [3.0, 2.0, 1.0], rtol=1e-10)


def test_thick_restart_matches_unrestarted_run():
    # n = 400, k = 6, block_size 4 and a basis of at most 18 vectors.
    rng = np.random.default_rng(8)
    lam = np.concatenate([[9.0, 8.0, 7.5, 7.0, 6.8, 6.6, 6.0], rng.uniform(0, 5.5, 393)])
    op = dense_op(lam, seed=8)
    full = hs.eigsh(op, 6, method="block", block_size=4, tol=1e-10, seed=0, max_basis=400)
    small = hs.eigsh(op, 6, method="block", block_size=4, tol=1e-10, seed=0, max_basis=18)
    assert full.restarts == 0 and small.restarts >= 2
    assert max(rec["basis_size"] for rec in small.history) <= 18
    np.testing.assert_allclose(small.eigenvalues, full.eigenvalues, rtol=1e-9)
    check_pairs(op, small, lam[:6], 1e-10)


def test_reported_residuals_match_with_verify():
    # n = 250, k = 4, block_size 2.
    rng = np.random.default_rng(9)
    op = dense_op(np.concatenate([[6.0, 5.0, 4.0, 3.0], rng.uniform(0, 2, 246)]), seed=9)
    res = hs.eigsh(op, 4, method="block", block_size=2, tol=1e-6, seed=0, verify=True)
    assert res.verified and res.converged.all()
    np.testing.assert_allclose(res.residuals, true_residuals(op, res), rtol=1e-8, atol=1e-14)


def test_callback_stops_after_a_block():
    # n = 200, k = 3, block_size 4: stopping at the second record leaves 8 products.
    rng = np.random.default_rng(10)
    op = dense_op(np.concatenate([[6.0, 5.0, 4.0], rng.uniform(0, 2, 197)]), seed=10)
    res = hs.eigsh(
        op, 3, method="block", block_size=4, tol=1e-12, seed=0, callback=lambda r: len(r) > 0
    )
    assert res.num_matvecs == 4 and res.stop_reason == "callback"


def test_rayleigh_ritz_recovers_an_invariant_subspace():
    # n = 80: Rayleigh-Ritz on an exact 3-dimensional eigenspace returns its eigenvalues.
    lam = np.concatenate([[5.0, 4.0, 3.0], np.linspace(-1, 1, 77)])
    A = matrix_with_spectrum(lam, 11)
    _, U = np.linalg.eigh(A)
    X = torch.as_tensor(U[:, -3:] @ np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0])
    theta, S = rayleigh_ritz(X, torch.as_tensor(A) @ X)
    np.testing.assert_allclose(theta, [3.0, 4.0, 5.0], rtol=1e-12)
    np.testing.assert_allclose(S.T @ S, np.eye(3), atol=1e-12)
