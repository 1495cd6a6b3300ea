"""eigsh with method="lanczos" on dense float64 operators with known spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hessian_spectra as hs
from hessian_spectra.algorithms import ConvergenceWarning
from hessian_spectra.algorithms.lanczos import LanczosProcess
from hessian_spectra.operators.base import DenseOperator
from hessian_spectra.results import EigshResult
from tests.helpers import dense_op, matrix_with_spectrum


def true_residuals(op, res):
    """||H v - theta v|| recomputed here with the dense matrix, float64."""
    A = op.matrix.double()
    V = res.eigenvectors.double()
    R = A @ V - V * torch.as_tensor(res.eigenvalues)
    return torch.linalg.vector_norm(R, dim=0).numpy()


def check_pairs(op, res, lam_expected, tol):
    """The common checks: values to tol, residuals honest, vectors orthonormal, no ghosts."""
    lam_expected = np.asarray(lam_expected, dtype=float)
    assert res.eigenvalues.shape == lam_expected.shape
    assert res.eigenvectors.shape == (op.shape[0], lam_expected.size)
    assert res.converged.all()
    # Krylov-Bogoliubov: a converged value is within its residual <= tol |theta| of an
    # eigenvalue; matching the exact ones in order checks none was missed.
    err = np.abs(res.eigenvalues - lam_expected)
    assert np.all(err <= tol * np.abs(lam_expected) + 1e-13), err
    # reported residuals match the recomputed ones (estimates from the recurrence)
    true = true_residuals(op, res)
    scale = float(np.abs(lam_expected).max())
    np.testing.assert_allclose(res.residuals, true, rtol=1e-2, atol=1e-12 * scale)
    assert np.all(true <= tol * np.abs(res.eigenvalues) + 1e-12 * scale)
    V = res.eigenvectors.double()
    assert float((V.T @ V - torch.eye(V.shape[1], dtype=torch.float64)).abs().max()) < 1e-10
    assert res.orthogonality_loss < 1e-12


def no_ghosts(values, lam_all, rtol=1e-6):
    """No eigenvalue is returned more often than its multiplicity."""
    for x in values:
        copies = int(np.sum(np.abs(values - x) <= rtol * abs(x)))
        mult = int(np.sum(np.abs(lam_all - x) <= rtol * abs(x)))
        assert copies <= mult, (x, copies, mult)


def test_well_separated_top():
    # n = 300, k = 5: top 10, 8, 6, 4, 3 over a bulk in [0, 1].
    rng = np.random.default_rng(0)
    top = np.array([10.0, 8.0, 6.0, 4.0, 3.0])
    lam = np.concatenate([top, rng.uniform(0, 1, 295)])
    op = dense_op(lam)
    res = hs.eigsh(op, 5, tol=1e-8, seed=0)
    check_pairs(op, res, top, 1e-8)
    no_ghosts(res.eigenvalues, lam)
    assert res.method == "lanczos" and res.which == "LA" and res.stop_reason == "converged"
    assert res.num_matvecs == op.num_matvecs < 60
    assert res.restarts == 0
    # error estimates min(r, r^2/gap) never exceed the residual and bound the true error here
    assert np.all(res.error_estimates <= res.residuals + 1e-300)
    assert np.all(np.abs(res.eigenvalues - top) <= 10 * res.error_estimates + 1e-13)


def test_clustered_top_relative_gaps_1e3():
    # n = 400, k = 6: eight eigenvalues 10 (1 - 1e-3 i) over a bulk in [0, 5].
    rng = np.random.default_rng(1)
    cluster = 10.0 * (1 - 1e-3 * np.arange(8))
    lam = np.concatenate([cluster, rng.uniform(0, 5, 392)])
    op = dense_op(lam, seed=1)
    res = hs.eigsh(op, 6, tol=1e-8, seed=1)
    check_pairs(op, res, cluster[:6], 1e-8)
    no_ghosts(res.eigenvalues, lam)
    assert np.all(np.diff(res.eigenvalues) < 0)  # six distinct values, descending


def test_repeated_top_found_once_by_single_vector_lanczos():
    # n = 300, k = 3: the top eigenvalue 10 has multiplicity 3. A single starting
    # vector sees one direction of that eigenspace, so Lanczos returns 10 once and
    # then the next distinct eigenvalues (documented; method="block" finds all three).
    rng = np.random.default_rng(2)
    lam = np.concatenate([[10.0, 10.0, 10.0, 8.0, 7.0], rng.uniform(0, 5, 295)])
    op = dense_op(lam, seed=2)
    res = hs.eigsh(op, 3, tol=1e-8, seed=2)
    assert res.converged.all()
    np.testing.assert_allclose(res.eigenvalues, [10.0, 8.0, 7.0], rtol=1e-8)
    assert "multiplicity" in (hs.eigsh.__doc__ or "")


def test_mostly_zero_spectrum_with_cauchy_tail():
    # n = 400, k = 20: 95% zero eigenvalues, 20 non-zeros |Student-t(1)|; asking for
    # exactly the eigenvalues above zero. The Krylov space is invariant after 21 steps.
    rng = np.random.default_rng(3)
    nonzero = np.abs(rng.standard_t(1, 20))
    lam = np.concatenate([nonzero, np.zeros(380)])
    op = dense_op(lam, seed=3)
    res = hs.eigsh(op, 20, tol=1e-8, seed=3)
    expected = np.sort(nonzero)[::-1]
    check_pairs(op, res, expected, 1e-8)
    assert res.num_matvecs <= 22
    assert np.all(res.eigenvalues > 0.5 * nonzero.min())
    # the Krylov space is invariant: the recurrence's residuals are exactly 0, below
    # any measurement; they are reported at the rounding level 10 eps max |theta|,
    # flagged as limited by precision (not by tol, which the floor is far below)
    level = 10 * np.finfo(np.float64).eps * nonzero.max()
    np.testing.assert_allclose(res.residuals, level, rtol=1e-12)
    assert res.precision_limited.all()
    assert np.all(level < 1e-8 * np.abs(res.eigenvalues))


@pytest.mark.parametrize(
    ("which", "k", "expected"),
    [
        ("SA", 3, [-6.0, -5.0, -4.5]),
        ("BE", 5, [7.0, 6.5, 5.8, -6.0, -5.0]),
        ("LA", 2, [7.0, 6.5]),
    ],
)
def test_indefinite_ends(which, k, expected):
    # n = 300, indefinite: a negative end -6, -5, -4.5 and a positive end 7, 6.5, 5.8
    # around a bulk in [-1, 1].
    rng = np.random.default_rng(4)
    lam = np.concatenate([[-6.0, -5.0, -4.5, 7.0, 6.5, 5.8], rng.uniform(-1, 1, 294)])
    op = dense_op(lam, seed=4)
    res = hs.eigsh(op, k, which=which, tol=1e-8, seed=4)
    check_pairs(op, res, expected, 1e-8)
    assert res.which == which


def test_largest_magnitude_order():
    # n = 250, k = 4: LM returns -10, 9, -8, 7 by descending magnitude.
    rng = np.random.default_rng(5)
    lam = np.concatenate([[-10.0, 9.0, -8.0, 7.0], rng.uniform(-2, 2, 246)])
    op = dense_op(lam, seed=5)
    res = hs.eigsh(op, 4, which="LM", tol=1e-8, seed=5)
    check_pairs(op, res, [-10.0, 9.0, -8.0, 7.0], 1e-8)


def test_thick_restart_matches_unrestarted_run():
    # n = 400, k = 6, a basis of at most 14 vectors: restarts lock converged pairs
    # and give the same eigenvalues as one long run.
    rng = np.random.default_rng(6)
    lam = np.concatenate([[9.0, 8.0, 7.5, 7.0, 6.8, 6.6, 6.0], rng.uniform(0, 5.5, 393)])
    op = dense_op(lam, seed=6)
    full = hs.eigsh(op, 6, tol=1e-10, seed=6, max_basis=400)
    small = hs.eigsh(op, 6, tol=1e-10, seed=6, max_basis=14)
    assert full.restarts == 0 and small.restarts >= 2
    assert max(rec["basis_size"] for rec in small.history) <= 14
    assert small.converged.all() and full.converged.all()
    np.testing.assert_allclose(small.eigenvalues, full.eigenvalues, rtol=1e-9)
    check_pairs(op, small, lam[:6], 1e-10)
    assert small.settings["max_basis"] == 14


def test_callback_stops_the_run():
    # n = 200, k = 4: a callback returning True after 7 products stops there.
    rng = np.random.default_rng(7)
    op = dense_op(np.concatenate([[5.0, 4.0, 3.0, 2.5], rng.uniform(0, 2, 196)]), seed=7)
    seen = []

    def cb(rec):
        seen.append(rec["matvecs"])
        return rec["matvecs"] >= 7

    res = hs.eigsh(op, 4, tol=1e-10, seed=0, callback=cb)
    assert res.num_matvecs == 7 and seen == list(range(1, 8))
    assert res.stop_reason == "callback"
    assert len(res.history) == 7
    assert not res.converged.all()


def test_history_records_every_step():
    # n = 200, k = 3: one record per product with the wanted Ritz values and residuals.
    rng = np.random.default_rng(8)
    op = dense_op(np.concatenate([[5.0, 4.0, 3.0], rng.uniform(0, 2, 197)]), seed=8)
    res = hs.eigsh(op, 3, tol=1e-8, seed=0)
    mv = [rec["matvecs"] for rec in res.history]
    assert mv == list(range(1, res.num_matvecs + 1))
    secs = [rec["seconds"] for rec in res.history]
    assert all(b >= a for a, b in zip(secs, secs[1:], strict=False))
    last = res.history[-1]
    np.testing.assert_allclose(last["ritz_values"], res.eigenvalues)
    np.testing.assert_allclose(last["residuals"], res.residuals)
    assert len(res.history[0]["ritz_values"]) == 1  # one Ritz value after one step
    assert len(last["all_ritz_values"]) == res.num_matvecs


def test_float32_operator_stops_on_precision_floor():
    # n = 300, k = 4, float32, tol = 1e-12 (below float32 precision): the run stops on
    # the floor eps * max|theta| and flags the pairs as limited by precision.
    rng = np.random.default_rng(9)
    top = np.array([10.0, 8.0, 6.0, 5.0])
    lam = np.concatenate([top, rng.uniform(0, 3, 296)])
    op = dense_op(lam, seed=9, dtype=torch.float32)
    res = hs.eigsh(op, 4, tol=1e-12, seed=0, verify=True)
    assert res.stop_reason == "converged" and res.num_matvecs < 150
    assert res.precision_limited.all()
    assert res.converged.all()  # judged on the true residuals (verify=True)
    assert res.eigenvectors.dtype == torch.float32
    np.testing.assert_allclose(res.eigenvalues, top, rtol=1e-5)
    floor = float(torch.finfo(torch.float32).eps) * 10.0
    assert np.all(res.residuals < 100 * floor)


def test_float64_default_is_not_precision_limited():
    # n = 200, k = 3, float64 at tol 1e-8: the floor (2e-16 * 5) is far below tol * theta.
    rng = np.random.default_rng(10)
    op = dense_op(np.concatenate([[5.0, 4.0, 3.0], rng.uniform(0, 2, 197)]), seed=10)
    res = hs.eigsh(op, 3, tol=1e-8, seed=0)
    assert not res.precision_limited.any()


def test_verify_reports_true_residuals_with_one_block_product():
    # n = 250, k = 5: verify multiplies the 5 vectors once more (5 products).
    rng = np.random.default_rng(11)
    top = np.array([6.0, 5.0, 4.0, 3.5, 3.0])
    op = dense_op(np.concatenate([top, rng.uniform(0, 2, 245)]), seed=11)
    plain = hs.eigsh(op, 5, tol=1e-6, seed=3)
    op.num_matvecs = 0
    ver = hs.eigsh(op, 5, tol=1e-6, seed=3, verify=True)
    assert ver.verified and not plain.verified
    assert ver.num_matvecs == plain.num_matvecs + 5
    np.testing.assert_allclose(ver.residuals, true_residuals(op, ver), rtol=1e-8, atol=1e-14)
    # the recurrence's estimates agree with the true residuals down to rounding (eps ||H||)
    np.testing.assert_allclose(ver.residuals, plain.residuals, rtol=1e-3, atol=1e-14 * 6.0)


def test_warm_start_from_an_invariant_subspace():
    # n = 200, k = 4: v0 = the 4 exact top eigenvectors. Lanczos starts from a random
    # combination of the columns; that Krylov space is invariant after 4 steps.
    rng = np.random.default_rng(12)
    lam = np.concatenate([[6.0, 5.0, 4.0, 3.0], rng.uniform(0, 2, 196)])
    A = matrix_with_spectrum(lam, 12)
    op = DenseOperator(A)
    w, U = np.linalg.eigh(A)
    V0 = torch.as_tensor(U[:, ::-1][:, :4].copy())
    res = hs.eigsh(op, 4, tol=1e-10, seed=0, v0=V0)
    assert res.num_matvecs == 4
    np.testing.assert_allclose(res.eigenvalues, [6.0, 5.0, 4.0, 3.0], rtol=1e-12)
    assert res.settings["warm_start"] is True


def test_seed_is_drawn_recorded_and_reproducible():
    # n = 100, k = 2.
    rng = np.random.default_rng(13)
    op = dense_op(np.concatenate([[3.0, 2.0], rng.uniform(0, 1, 98)]), seed=13)
    a = hs.eigsh(op, 2, tol=1e-6)
    assert isinstance(a.seed, int)
    b = hs.eigsh(op, 2, tol=1e-6, seed=a.seed)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    assert a.num_matvecs == b.num_matvecs


def test_orthogonality_loss_voids_convergence(monkeypatch):
    # n = 400, k = 3: with reorthogonalization disabled (the study's plain recurrence)
    # the basis loses orthogonality once the top converges; eigsh reports the loss
    # and claims no pair converged.
    monkeypatch.setattr(LanczosProcess, "_orthogonalize", lambda self, w, upto: w)
    rng = np.random.default_rng(14)
    lam = np.concatenate([[100.0, 60.0, 40.0], rng.uniform(0, 1, 397)])
    op = dense_op(lam, seed=14)
    with pytest.warns(ConvergenceWarning, match="the basis lost orthogonality"):
        res = hs.eigsh(op, 3, tol=1e-12, seed=0, max_matvecs=120, max_basis=200)
    assert res.orthogonality_loss > math.sqrt(float(torch.finfo(torch.float64).eps))
    assert not res.converged.any()


def test_result_round_trips_through_json(tmp_path):
    # n = 120, k = 3.
    rng = np.random.default_rng(15)
    op = dense_op(np.concatenate([[3.0, 2.0, 1.5], rng.uniform(0, 1, 117)]), seed=15)
    res = hs.eigsh(op, 3, tol=1e-8, seed=1)
    path = res.to_json(tmp_path / "top.json")
    back = EigshResult.from_json(path)
    np.testing.assert_array_equal(back.eigenvalues, res.eigenvalues)
    torch.testing.assert_close(back.eigenvectors, res.eigenvectors)
    np.testing.assert_array_equal(back.converged, res.converged)
    assert back.seed == 1 and back.num_matvecs == res.num_matvecs
    assert back.stop_reason == "converged"
    assert len(back.history) == len(res.history)


def test_accepts_a_dense_matrix():
    # n = 60, k = 2: a NumPy matrix is wrapped in a DenseOperator.
    rng = np.random.default_rng(16)
    A = matrix_with_spectrum(np.concatenate([[4.0, 3.0], rng.uniform(0, 1, 58)]), 16)
    res = hs.eigsh(A, 2, tol=1e-8, seed=0)
    np.testing.assert_allclose(res.eigenvalues, [4.0, 3.0], rtol=1e-8)


# --------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small_op():
    return dense_op(np.arange(1.0, 11.0))  # n = 10


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 10}, ValueError, "below the operator size"),
        ({"k": 12}, ValueError, "below the operator size"),
        ({"k": 0}, ValueError, "at least 1"),
        ({"k": -2}, ValueError, "at least 1"),
        ({"k": 2, "which": "LR"}, ValueError, "unknown which"),
        ({"k": 2, "method": "arnoldi"}, ValueError, "unknown method"),
        ({"k": 2, "v0": torch.ones(9, dtype=torch.float64)}, ValueError, "v0 must have shape"),
        ({"k": 2, "v0": torch.ones(10, 2, 2, dtype=torch.float64)}, ValueError, "v0 must"),
        ({"k": 2, "v0": torch.zeros(10, dtype=torch.float64)}, ValueError, "v0 is zero"),
        ({"k": 2, "v0": torch.zeros(10, 3, dtype=torch.float64)}, ValueError, "v0 is zero"),
        ({"k": 2, "v0": torch.full((10,), float("nan"))}, ValueError, "NaN"),
        ({"k": 4, "max_matvecs": 3}, ValueError, "too small for k=4"),
        ({"k": 4, "method": "block", "block_size": 3, "max_matvecs": 5}, ValueError, "too small"),
        ({"k": 3, "method": "power", "max_matvecs": 5}, ValueError, "too small"),
        ({"k": 2, "tol": 0.0}, ValueError, "tol must be"),
        ({"k": 2, "tol": float("nan")}, ValueError, "tol must be"),
        ({"k": 2, "block_size": 0, "method": "block"}, ValueError, "block_size"),
        ({"k": 2, "stop": "never"}, ValueError, "unknown stop"),
        ({"k": 2, "stop": "relative_change"}, ValueError, "power iteration's rule"),
        ({"k": 4, "max_basis": 5}, ValueError, "max_basis"),
        ({"k": 2.0}, TypeError, "k must be an int"),
    ],
)
def test_bad_input_is_refused(small_op, kwargs, error, match):
    # n = 10.
    kwargs = dict(kwargs)
    k = kwargs.pop("k")
    with pytest.raises(error, match=match):
        hs.eigsh(small_op, k, **kwargs)


def test_not_an_operator_is_refused():
    with pytest.raises(TypeError, match="LinearOperator"):
        hs.eigsh([[1.0, 0.0], [0.0, 2.0]], 1)


# --------------------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(20, 60),
    k=st.integers(1, 5),
    which=st.sampled_from(["LA", "SA", "LM", "BE"]),
    seed=st.integers(0, 10_000),
)
def test_ritz_values_interlace_and_sit_within_residuals(n, k, which, seed):
    # Random spectra (n in [20, 60], k in [1, 5]): every returned value lies within
    # its residual of an eigenvalue, and Ritz values interlace (Cauchy): the i-th
    # largest is at most the i-th largest eigenvalue, the i-th smallest at least the
    # i-th smallest.
    rng = np.random.default_rng(seed)
    lam = rng.standard_normal(n) * rng.choice([0.1, 1.0, 10.0])
    op = dense_op(lam, seed=seed)
    res = hs.eigsh(op, k, which=which, tol=1e-10, seed=seed)
    scale = float(np.abs(lam).max())
    # locking drops couplings of size <= tol |theta|: the laws hold to that level
    slack = 1e-10 * scale
    for theta, r in zip(res.eigenvalues, res.residuals, strict=True):
        assert np.min(np.abs(lam - theta)) <= r + slack
    assert res.converged.all()
    desc = np.sort(lam)[::-1]
    vals_desc = np.sort(res.eigenvalues)[::-1]
    assert np.all(vals_desc <= desc[: vals_desc.size] + slack)
    vals_asc = np.sort(res.eigenvalues)
    assert np.all(vals_asc >= np.sort(lam)[: vals_asc.size] - slack)


def test_lanczos_process_restart_keeps_the_krylov_relation():
    # n = 300, a basis of 15: after each thick restart (locking converged pairs) the
    # active basis satisfies H Q = Q T + q c^T on the complement of the locked vectors,
    # and locked plus active vectors stay orthonormal.
    rng = np.random.default_rng(17)
    lam = np.concatenate([[10.0, 9.0, 8.5, 8.0, 7.9], rng.uniform(0, 5, 295)])
    op = dense_op(lam, seed=17)
    gen = torch.Generator().manual_seed(0)
    proc = LanczosProcess(op, torch.randn(300, dtype=torch.float64, generator=gen), 15)
    restarts = 0
    while proc.num_locked < 5 and proc.num_matvecs < 300:
        proc.step()
        if not proc.done:
            continue
        Qa, T = proc.basis.numpy(), proc.projected_matrix()
        L = proc.locked_basis.numpy()
        R = op.matrix.numpy() @ Qa - Qa @ T - np.outer(proc.next_vector.numpy(), proc._coupling())
        R -= L @ (L.T @ R)
        assert np.abs(R).max() < 1e-12
        assert proc.orthogonality_loss() < 1e-12
        theta, _, res = proc.ritz()
        order = np.argsort(-theta)
        wanted = order[: 5 - proc.num_locked]
        lock = [bool(res[i] < 1e-10 * abs(theta[i])) for i in wanted]
        proc.restart([*wanted, *order[len(wanted) : len(wanted) + 4]], lock + [False] * 4)
        restarts += 1
    assert restarts >= 2 and proc.num_locked == 5
    np.testing.assert_allclose(np.sort(proc.locked_values)[::-1], lam[:5], rtol=1e-10)
    with pytest.raises(RuntimeError, match="tridiagonal"):
        proc.decomposition()
