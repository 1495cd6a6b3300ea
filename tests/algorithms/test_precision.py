"""Error bars that stay honest in low precision.

No residual or error estimate of `eigsh` is below the rounding level of the
products and basis that produced it, 10 eps max |theta| (such pairs are
flagged), and the true error lies within the reported error estimate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.operators.base import DenseOperator
from tests.helpers import dense_op

EPS32 = float(torch.finfo(torch.float32).eps)
LEVEL = 10.0  # rounding errors eps max |theta|
TOP = np.array([10.0, 8.0, 6.0, 4.0, 3.0])
LAM = np.concatenate([TOP, np.random.default_rng(0).uniform(0.0, 1.0, 295)])


@pytest.mark.parametrize("method", ["lanczos", "block"])
def test_float32_residuals_and_error_estimates_never_below_rounding(method):
    # n = 300, k = 5, float32 at the default tol: the top pairs' recurrence
    # residuals fall far below eps ||H|| (to 1e-35 before), which no float32
    # product can resolve; they are reported at the rounding level and flagged.
    op = dense_op(LAM, dtype=torch.float32)
    res = hs.eigsh(op, 5, seed=0, method=method)
    assert res.converged.all()
    floor = LEVEL * EPS32 * float(np.abs(res.eigenvalues).max())
    assert np.all(res.residuals >= floor * (1 - 1e-9))
    assert np.all(res.error_estimates >= floor * (1 - 1e-9))
    at_floor = res.residuals <= floor * (1 + 1e-6)
    assert at_floor.any() and res.precision_limited[at_floor].all()
    # the true error (against the float64 spectrum) is within the reported estimate
    assert np.all(np.abs(res.eigenvalues - TOP) <= res.error_estimates)
    # the history shows the same numbers as the result
    if method == "lanczos":
        np.testing.assert_allclose(res.history[-1]["residuals"], res.residuals)


@pytest.mark.parametrize("which", ["LA", "SA", "BE"])
@pytest.mark.parametrize("method", ["lanczos", "block", "power"])
def test_float32_true_errors_within_estimates(method, which):
    bulk = np.random.default_rng(1).uniform(-2.0, 1.0, 293)
    lam = np.concatenate([TOP, [-5.0, -4.0], bulk])
    op = dense_op(lam, seed=1, dtype=torch.float32)
    res = hs.eigsh(op, 2, seed=0, method=method, which=which, max_matvecs=4000)
    exact = np.sort(lam)
    want = {"LA": exact[::-1][:2], "SA": exact[:2], "BE": [exact[-1], exact[0]]}[which]
    ok = res.converged
    assert ok.any()
    floor = LEVEL * EPS32 * float(np.abs(res.eigenvalues).max())
    assert np.all(res.residuals >= floor * (1 - 1e-9))
    assert np.all(np.abs(res.eigenvalues - want)[ok] <= res.error_estimates[ok])


def test_float32_basis_under_float64_operator_reports_the_basis_rounding():
    op = dense_op(LAM)
    res = hs.eigsh(op, 5, seed=0, basis_dtype=torch.float32, max_basis=20)
    floor = LEVEL * EPS32 * float(np.abs(res.eigenvalues).max())
    assert np.all(res.residuals >= floor * (1 - 1e-9))
    assert res.precision_limited.any()
    assert np.all(np.abs(res.eigenvalues - TOP) <= res.error_estimates)


def test_float64_residuals_never_below_float64_rounding():
    # an invariant Krylov space (rank 20) gives recurrence residuals of exactly 0;
    # a diagonal matrix has exactly these eigenvalues
    lam = np.zeros(200)
    lam[:20] = np.linspace(1.0, 5.0, 20)
    res = hs.eigsh(DenseOperator(torch.diag(torch.as_tensor(lam))), 20, seed=0, tol=1e-8)
    floor = LEVEL * float(torch.finfo(torch.float64).eps) * 5.0
    assert np.all(res.residuals >= floor * (1 - 1e-9)) and res.precision_limited.all()
    assert np.all(np.abs(res.eigenvalues - lam[:20][::-1]) <= res.error_estimates)


def test_refine_reports_no_residual_below_rounding():
    op = dense_op(LAM, dtype=torch.float32)
    v = torch.zeros(300, 1, dtype=torch.float32)
    top = hs.eigsh(dense_op(LAM), 1, seed=0).eigenvectors.float()
    v[:, 0] = top[:, 0]
    ref = hs.refine(op, [10.0], v)
    assert ref.residuals[0] >= LEVEL * EPS32 * abs(ref.eigenvalues[0]) * (1 - 1e-9)
    assert abs(ref.eigenvalues[0] - 10.0) <= ref.error_estimates[0]
