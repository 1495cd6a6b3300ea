"""eigsh(method="power"): PyHessian's deflated power iteration, its stopping rule and ours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.algorithms import ConvergenceWarning
from hessian_spectra.algorithms.lanczos import ritz_extremes
from hessian_spectra.operators.base import DenseOperator
from tests.algorithms.test_eigsh import true_residuals
from tests.helpers import dense_op, matrix_with_spectrum


def _geometric_top(seed=0):
    # n = 200: top 10, 9, 8.1, 7.29, 6.56 (gaps of 10%) over a bulk in [0, 5.9].
    rng = np.random.default_rng(seed)
    top = 10.0 * 0.9 ** np.arange(5)
    lam = np.concatenate([top, rng.uniform(0, 0.9 * top[-1], 195)])
    return dense_op(lam, seed), top


def test_residual_rule_recovers_top_with_10_percent_gaps():
    # n = 200, k = 5, tol = 1e-6, which="LM" (the operator is PSD: the same as LA).
    op, top = _geometric_top()
    res = hs.eigsh(op, 5, which="LM", method="power", tol=1e-6, seed=0)
    assert res.converged.all() and res.stop_reason == "converged"
    err = np.abs(res.eigenvalues - top)
    assert np.all(err <= 1e-6 * top)
    # reported residuals are the true ones, and bound the error (Krylov-Bogoliubov)
    np.testing.assert_allclose(res.residuals, true_residuals(op, res), rtol=1e-6)
    assert np.all(err <= res.residuals + 1e-13)
    V = res.eigenvectors
    assert float((V.T @ V - torch.eye(5, dtype=torch.float64)).abs().max()) < 1e-10
    assert res.method == "power" and res.settings["stop"] == "residual"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relative_change_rule_stops_with_large_residuals(seed):
    # n = 200, k = 5, gaps of 10%, both rules at tol 1e-3. PyHessian's rule (two
    # Rayleigh quotients within 1e-3) stops with residuals above 1e-2 |theta| and
    # eigenvalue errors above its tolerance; the residual rule does not.
    op, top = _geometric_top(seed)
    pyh = hs.eigsh(op, 5, which="LM", method="power", stop="relative_change", tol=1e-3, seed=seed)
    ours = hs.eigsh(op, 5, which="LM", method="power", stop="residual", tol=1e-3, seed=seed)
    assert pyh.converged.all()  # the rule fired for every pair ...
    assert np.max(pyh.residuals / np.abs(pyh.eigenvalues)) > 1e-2  # ... far from converged
    assert np.max(np.abs(pyh.eigenvalues - top) / top) > 1e-3
    assert ours.converged.all()
    assert np.all(np.abs(ours.eigenvalues - top) <= 1e-3 * top)
    # the residual rule pays for it in products
    assert ours.num_matvecs > pyh.num_matvecs


@pytest.mark.parametrize(
    ("which", "expected"), [("LA", [10.0, 8.5, 7.2]), ("SA", [-10, -8.5, -7.2])]
)
def test_algebraic_ends_through_a_spectral_shift(which, expected):
    # n = 200, k = 3, indefinite with both ends of equal magnitude: power iteration on
    # H itself cannot tell them apart; on H - aI (or bI - H) it finds the wanted end.
    rng = np.random.default_rng(3)
    lam = np.concatenate([[10.0, 8.5, 7.2, -10.0, -8.5, -7.2], rng.uniform(-6, 6, 194)])
    op = dense_op(lam, seed=3)
    res = hs.eigsh(op, 3, which=which, method="power", tol=1e-6, seed=0)
    assert res.converged.all()
    np.testing.assert_allclose(res.eigenvalues, expected, rtol=1e-6)
    # sigma = min(theta_min, 0) (max(theta_max, 0) for SA): at least half of the
    # opposite end's magnitude, at most all of it
    shift = res.history[-1]["shift"]
    assert 5.0 <= abs(shift) <= 10.0


def test_both_ends():
    # n = 200, k = 4: "BE" = the two largest, then the two smallest.
    rng = np.random.default_rng(3)
    lam = np.concatenate([[10.0, 8.5, 7.2, -10.0, -8.5, -7.2], rng.uniform(-6, 6, 194)])
    op = dense_op(lam, seed=3)
    res = hs.eigsh(op, 4, which="BE", method="power", tol=1e-6, seed=0)
    np.testing.assert_allclose(res.eigenvalues, [10.0, 8.5, -10.0, -8.5], rtol=1e-6)


def test_largest_magnitude_with_mixed_signs():
    # n = 200, k = 3: LM finds -10, 8, -6.4 (gaps of 20%) natively, no shift.
    rng = np.random.default_rng(4)
    lam = np.concatenate([[-10.0, 8.0, -6.4], rng.uniform(-5, 5, 197)])
    op = dense_op(lam, seed=4)
    res = hs.eigsh(op, 3, which="LM", method="power", tol=1e-6, seed=0)
    np.testing.assert_allclose(res.eigenvalues, [-10.0, 8.0, -6.4], rtol=1e-6)
    assert all(rec["shift"] == 0.0 for rec in res.history)


def test_warm_start_from_eigenvectors_takes_one_product_each():
    # n = 150, k = 3: columns of v0 are exact eigenvectors.
    rng = np.random.default_rng(5)
    lam = np.concatenate([[5.0, 4.0, 3.0], rng.uniform(0, 2, 147)])
    A = matrix_with_spectrum(lam, 5)
    _, U = np.linalg.eigh(A)
    V0 = torch.as_tensor(U[:, ::-1][:, :3].copy())
    res = hs.eigsh(DenseOperator(A), 3, which="LM", method="power", tol=1e-8, seed=0, v0=V0)
    assert res.num_matvecs == 3
    np.testing.assert_allclose(res.eigenvalues, [5.0, 4.0, 3.0], rtol=1e-12)


def test_budget_exhausted_pairs_are_flagged():
    # n = 200, k = 3, gaps of 1%: 30 products cannot converge at tol 1e-8.
    rng = np.random.default_rng(6)
    lam = np.concatenate([[10.0, 9.9, 9.8], rng.uniform(0, 9.7, 197)])
    op = dense_op(lam, seed=6)
    with pytest.warns(ConvergenceWarning, match="0 of 3 pairs converged"):
        res = hs.eigsh(op, 3, which="LM", method="power", tol=1e-8, seed=0, max_matvecs=30)
    assert res.num_matvecs == 30
    assert not res.converged.any()
    assert res.stop_reason == "max_matvecs"
    assert np.all(res.residuals > 1e-8 * np.abs(res.eigenvalues))


def test_callback_stops_power_iteration():
    # n = 200, k = 5.
    op, _ = _geometric_top()
    res = hs.eigsh(
        op, 5, which="LM", method="power", tol=1e-6, seed=0, callback=lambda r: r["matvecs"] >= 9
    )
    assert res.num_matvecs == 9 and res.stop_reason == "callback"
    assert len(res.eigenvalues) == 1  # the pair in progress is returned, flagged unconverged
    assert not res.converged.any()


def test_nearly_psd_operator_is_not_shifted():
    # n = 200, k = 3, "LA" with one eigenvalue -1e-3: the 10 Lanczos steps find no
    # negative Ritz value, so power iteration runs on H itself (no slow-down).
    rng = np.random.default_rng(7)
    lam = np.concatenate([[10.0, 8.0, 6.4, -1e-3], rng.uniform(0, 5, 196)])
    op = dense_op(lam, seed=7)
    res = hs.eigsh(op, 3, which="LA", method="power", tol=1e-6, seed=0)
    np.testing.assert_allclose(res.eigenvalues, [10.0, 8.0, 6.4], rtol=1e-6)
    assert all(rec["shift"] == 0.0 for rec in res.history)


@pytest.mark.parametrize("seed", range(5))
def test_ritz_extremes_lie_inside_and_near_the_ends(seed):
    # n = 300, random indefinite spectra: 10 Lanczos steps (10 products) give extreme
    # Ritz values inside the spectrum that have covered at least half of each end,
    # the condition under which the power-iteration shift is enough.
    rng = np.random.default_rng(seed)
    lam = rng.standard_normal(300) * 3
    op = dense_op(lam, seed=seed)
    lo, hi, beta = ritz_extremes(op, torch.Generator().manual_seed(seed))
    assert lam.min() <= lo <= lam.min() / 2
    assert lam.max() / 2 <= hi <= lam.max()
    assert beta > 0
    assert op.num_matvecs == 10
