"""MINRES on torch tensors, `refine` (matrix-free RQI) and eigsh(method="rqi")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hessian_spectra as hs
from hessian_spectra.algorithms import ConvergenceWarning
from hessian_spectra.algorithms.eigen.rqi import minres
from hessian_spectra.operators.base import DenseOperator
from tests.algorithms.test_eigsh import true_residuals
from tests.helpers import dense_op, matrix_with_spectrum


# --------------------------------------------------------------------------- MINRES
def test_minres_solves_an_indefinite_system():
    # n = 80, eigenvalues in [-3, -0.5] and [0.5, 4]: an indefinite, well-conditioned system.
    rng = np.random.default_rng(0)
    lam = np.concatenate([rng.uniform(-3, -0.5, 40), rng.uniform(0.5, 4, 40)])
    A = matrix_with_spectrum(lam, 0)
    At = torch.as_tensor(A)
    b = torch.as_tensor(rng.standard_normal(80))
    x, info = minres(lambda v: At @ v, b, rtol=1e-10, maxiter=400)
    assert info.converged
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(A, b.numpy()), rtol=0, atol=1e-8)
    true = np.linalg.norm(b.numpy() - A @ x.numpy())
    assert true <= 1e-9 * np.linalg.norm(b.numpy())
    assert abs(info.residual - true) <= 1e-9 * np.linalg.norm(b.numpy())


def test_minres_with_a_shift_equals_the_shifted_solve():
    # n = 60: solving (A - 0.7 I) x = b, where 0.7 lies inside the spectrum.
    rng = np.random.default_rng(1)
    A = matrix_with_spectrum(np.linspace(-2, 2, 60), 1)
    At = torch.as_tensor(A)
    b = torch.as_tensor(rng.standard_normal(60))
    x, info = minres(lambda v: At @ v, b, shift=0.7, rtol=1e-10, maxiter=600)
    assert info.converged
    ref = np.linalg.solve(A - 0.7 * np.eye(60), b.numpy())
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-6, atol=1e-8)


def test_minres_zero_right_hand_side():
    x, info = minres(lambda v: v, torch.zeros(5, dtype=torch.float64))
    assert info.iterations == 0 and info.converged and float(x.abs().max()) == 0.0


@settings(max_examples=25, deadline=None)
@given(n=st.integers(5, 40), seed=st.integers(0, 10_000), singular=st.booleans())
def test_minres_residuals_never_increase(n, seed, singular):
    # Random symmetric A (n in [5, 40]), possibly singular: MINRES minimizes the residual
    # over growing Krylov spaces, so its residual history is non-increasing, and
    # (nonsingular A) the recurrence's final residual is the true one.
    rng = np.random.default_rng(seed)
    lam = rng.standard_normal(n)
    if singular:
        lam[: n // 3] = 0.0
    A = matrix_with_spectrum(lam, seed)
    At = torch.as_tensor(A)
    b = torch.as_tensor(rng.standard_normal(n))
    x, info = minres(lambda v: At @ v, b, rtol=1e-12, maxiter=n)
    h = np.asarray(info.residual_history)
    assert np.all(np.diff(h) <= 1e-12 * np.linalg.norm(b.numpy()))
    true = np.linalg.norm(b.numpy() - A @ x.numpy())
    bn = np.linalg.norm(b.numpy())
    if not singular:
        cond = np.abs(lam).max() / np.abs(lam).min()
        assert abs(true - info.residual) <= 1e-12 * cond * bn


# --------------------------------------------------------------------------- refine
def _isolated(seed=2):
    # n = 300: three isolated eigenvalues 10, 6, 3 above a bulk in [-1, 1].
    rng = np.random.default_rng(seed)
    lam = np.concatenate([[10.0, 6.0, 3.0], rng.uniform(-1, 1, 297)])
    A = matrix_with_spectrum(lam, seed)
    w, U = np.linalg.eigh(A)
    return DenseOperator(A), w[::-1][:3].copy(), U[:, ::-1][:, :3].copy()


@pytest.mark.parametrize("perturbation", [1e-1, 1e-2])
def test_refine_converges_fast_on_isolated_pairs(perturbation):
    # n = 300, k = 3: starts at angle ~perturbation from the eigenvectors, eigenvalues
    # off by the same relative amount. RQI reaches tol = 1e-10 in at most 3 outer
    # steps per pair and fewer than 80 products in all.
    op, w, U = _isolated()
    rng = np.random.default_rng(3)
    V = U + perturbation * rng.standard_normal(U.shape) / np.sqrt(U.shape[0])
    res = hs.refine(op, w * (1 + perturbation), torch.as_tensor(V), tol=1e-10)
    assert res.converged.all() and res.verified and res.method == "refine"
    assert np.all(np.abs(res.eigenvalues - w) <= 1e-10 * w)
    # the true residuals, reported no lower than the rounding level 10 eps max |theta|
    level = 10 * np.finfo(np.float64).eps * np.abs(res.eigenvalues).max()
    np.testing.assert_allclose(
        res.residuals, np.maximum(true_residuals(op, res), level), rtol=1e-6, atol=1e-14
    )
    assert np.all(res.residuals <= 1e-10 * w)
    outer = {}
    for rec in res.history:
        outer[rec["pair"]] = rec["outer"]
    assert max(outer.values()) <= 3
    assert res.num_matvecs == op.num_matvecs < 80


def test_refine_deflates_so_two_starts_give_two_pairs():
    # n = 300, k = 2: both starts near the top eigenvector; the second is refined on the
    # complement of the first and converges to another eigenpair.
    op, w, U = _isolated()
    V = np.stack([U[:, 0], U[:, 0] + 0.3 * U[:, 1]], axis=1)
    res = hs.refine(op, [w[0], w[0]], torch.as_tensor(V), tol=1e-10)
    assert res.converged.all()
    assert abs(res.eigenvalues[0] - w[0]) <= 1e-10 * w[0]
    assert abs(res.eigenvalues[1] - w[0]) > 1.0  # not a second copy of 10
    assert np.min(np.abs(res.eigenvalues[1] - np.linalg.eigvalsh(op.matrix.numpy()))) < 1e-9
    Vr = res.eigenvectors
    assert abs(float(Vr[:, 0] @ Vr[:, 1])) < 1e-10


def test_refine_respects_its_budget():
    # n = 300, k = 3 from random starts with 20 products: stops, flags unconverged pairs.
    op, w, _ = _isolated()
    V = torch.randn(300, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(ConvergenceWarning, match="refine: 0 of 3 pairs converged"):
        res = hs.refine(op, w, V, tol=1e-12, max_matvecs=20)
    assert res.num_matvecs <= 20
    assert not res.converged.all()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.array([1.0, 2.0]), torch.ones(300, 3, dtype=torch.float64)), "2 eigenvalues for 3"),
        ((np.array([1.0]), torch.ones(299, 1, dtype=torch.float64)), r"shape \(300, k\)"),
        ((np.array([1.0]), torch.zeros(300, 1, dtype=torch.float64)), "zero"),
        ((np.zeros(0), torch.ones(300, 0, dtype=torch.float64)), "at least one"),
    ],
)
def test_refine_bad_input(args, match):
    op, _, _ = _isolated()
    with pytest.raises(ValueError, match=match):
        hs.refine(op, *args)


def test_refine_budget_too_small_for_k():
    op, w, U = _isolated()
    with pytest.raises(ValueError, match="too small"):
        hs.refine(op, w, torch.as_tensor(U), max_matvecs=2)


# --------------------------------------------------------------------------- eigsh(method="rqi")
def _hessian_like(seed=4, negative=()):
    # n = 400: outliers 50, 30, 20, 12, 8 (and optional negative ones) above a bulk of
    # 60 small |Student-t(1)| values and zeros: the shape of a network's Hessian.
    rng = np.random.default_rng(seed)
    top = np.array([50.0, 30.0, 20.0, 12.0, 8.0])
    bulk = np.clip(np.abs(rng.standard_t(1, 60)) * 0.05, 0, 3)
    lam = np.concatenate([top, list(negative), bulk])
    lam = np.concatenate([lam, np.zeros(400 - lam.size)])
    return dense_op(lam, seed), lam


@pytest.mark.parametrize("which", ["LA", "LM"])
def test_rqi_method_on_a_hessian_like_spectrum(which):
    # n = 400, k = 5: a range finder of 15 columns, then RQI to tol 1e-8.
    op, lam = _hessian_like()
    res = hs.eigsh(op, 5, which=which, method="rqi", tol=1e-8, seed=0)
    assert res.converged.all() and res.method == "rqi"
    np.testing.assert_allclose(res.eigenvalues, lam[:5], rtol=1e-8)
    level = 10 * np.finfo(np.float64).eps * np.abs(res.eigenvalues).max()  # rounding level
    np.testing.assert_allclose(
        res.residuals, np.maximum(true_residuals(op, res), level), rtol=1e-6, atol=1e-13
    )
    assert res.history[0]["phase"] == "sketch"
    # range finder 15 + one power step 15 + Rayleigh-Ritz 15 products (plus 10 Lanczos
    # steps for the shift of "LA")
    assert res.history[0]["matvecs"] == (55 if which == "LA" else 45)


def test_rqi_method_both_ends():
    # n = 400, k = 4 with negative outliers -20, -12: "BE" = 50, 30, -20, -12.
    op, _ = _hessian_like(negative=(-20.0, -12.0))
    res = hs.eigsh(op, 4, which="BE", method="rqi", tol=1e-8, seed=0)
    assert res.converged.all()
    np.testing.assert_allclose(res.eigenvalues, [50.0, 30.0, -20.0, -12.0], rtol=1e-8)


def test_rqi_la_does_not_shift_a_nearly_psd_spectrum():
    # n = 600, k = 10: a decaying top 2.5 * 0.8^i over 580 eigenvalues in [0, 0.01]
    # (the digits CNN's shape). Shifting by a safe lower bound of the spectrum would
    # lift the bulk above the wanted values and the sketch would miss them.
    rng = np.random.default_rng(7)
    top = 2.5 * 0.8 ** np.arange(20)
    lam = np.concatenate([top, rng.uniform(0, 0.01, 580)])
    op = dense_op(lam, seed=7)
    res = hs.eigsh(op, 10, which="LA", method="rqi", tol=1e-6, seed=0)
    assert res.converged.all()
    np.testing.assert_allclose(res.eigenvalues, top[:10], rtol=1e-6)
