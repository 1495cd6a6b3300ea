"""Trace estimators on dense float64 operators with known traces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hessian_spectra.algorithms._linalg import rademacher
from hessian_spectra.algorithms._run import resolve_seed
from hessian_spectra.algorithms.trace import trace
from hessian_spectra.algorithms.trace_estimators import XTrace as _XTrace
from hessian_spectra.operators.base import DenseOperator
from hessian_spectra.results import TraceResult, load_result
from tests.helpers import matrix_with_spectrum

N = 1000
NUM_SEEDS = 200
BUDGET = 60
METHODS = ("hutchinson", "hutch++", "xtrace")


def _blocks(n: int) -> dict[str, slice | torch.Tensor]:
    """Four blocks partitioning range(n): three slices and one strided index set."""
    q = n // 4
    rest = torch.arange(3 * q, n)
    return {
        "a": slice(0, q),
        "b": slice(q, 2 * q),
        "c": torch.cat([torch.arange(2 * q, 3 * q, 2), rest[1::2]]),
        "d": torch.cat([torch.arange(2 * q + 1, 3 * q, 2), rest[0::2]]),
    }


@pytest.fixture(scope="module")
def decaying():
    """n = 1000, eigenvalues 1/k (a slowly decaying spectrum), 200 seeds per estimator
    at 60 products, with four blocks."""
    lam = 1.0 / np.arange(1, N + 1)
    A = matrix_with_spectrum(lam, seed=0)
    op = DenseOperator(A)
    blocks = _blocks(N)
    diag = np.diag(A)
    true_blocks = {k: float(diag[v].sum()) for k, v in blocks.items()}
    runs = {
        m: [
            trace(op, method=m, num_matvecs=BUDGET, seed=s, blocks=blocks, block_size=BUDGET)
            for s in range(NUM_SEEDS)
        ]
        for m in METHODS
    }
    return {"true": float(lam.sum()), "true_blocks": true_blocks, "runs": runs}


@pytest.mark.parametrize("method", METHODS)
def test_mean_over_seeds_within_four_standard_errors(decaying, method):
    # n = 1000, 200 seeds. Each estimator is unbiased, so the mean of 200
    # independent estimates has standard error std / sqrt(200); |bias| < 4 of
    # them fails by chance with probability ~6e-5.
    est = np.array([r.estimate for r in decaying["runs"][method]])
    se = est.std(ddof=1) / math.sqrt(NUM_SEEDS)
    assert abs(est.mean() - decaying["true"]) < 4 * se


@pytest.mark.parametrize("method", METHODS)
def test_block_traces_unbiased_and_sum_to_total(decaying, method):
    # n = 1000, 200 seeds, 4 blocks. Each block estimate is unbiased for the
    # block's trace (the sum of its diagonal entries): same 4-standard-error
    # test per block. The blocks partition the coordinates, so they sum to the
    # total in every run (to rounding).
    runs = decaying["runs"][method]
    for r in runs:
        assert r.block_estimates is not None
        assert sum(r.block_estimates.values()) == pytest.approx(r.estimate, rel=1e-10, abs=1e-12)
    for name, truth in decaying["true_blocks"].items():
        x = np.array([r.block_estimates[name] for r in runs])
        assert abs(x.mean() - truth) < 4 * x.std(ddof=1) / math.sqrt(NUM_SEEDS), name


@pytest.mark.parametrize(
    ("method", "low", "high"),
    [("hutchinson", 0.7, 1.3), ("hutch++", 0.7, 1.3), ("xtrace", 0.5, 2.0)],
)
def test_reported_stderr_matches_spread_over_seeds(decaying, method, low, high):
    # n = 1000, 200 seeds. The reported variance is an unbiased estimate of the
    # estimator's variance for Hutchinson and Hutch++ (whose low-rank part is
    # exact given Q and whose remainder estimate is unbiased given Q), so the
    # root-mean-square reported stderr must match the empirical standard
    # deviation over seeds; that deviation is itself known to ~5% (1/sqrt(2*199))
    # so 30% leaves room only for a wrong formula. XTrace's error estimate is
    # known to under-report (its leave-one-out estimates are dependent): a
    # factor of 2 either way.
    runs = decaying["runs"][method]
    est = np.array([r.estimate for r in runs])
    rep = np.sqrt(np.mean([r.stderr**2 for r in runs]))
    ratio = rep / est.std(ddof=1)
    assert low <= ratio <= high, ratio
    if method != "xtrace":
        for name in decaying["true_blocks"]:
            xb = np.array([r.block_estimates[name] for r in runs])
            rb = np.sqrt(np.mean([r.block_stderrs[name] ** 2 for r in runs]))
            assert low <= rb / xb.std(ddof=1) <= high, name


def test_xtrace_and_hutchpp_beat_hutchinson_on_decaying_spectrum(decaying):
    # n = 1000, eigenvalues 1/k, 60 products, 200 seeds. Hutch++ and XTrace
    # remove the top of the spectrum exactly, so their error is several times
    # smaller; the RMS errors are known to ~5% each, so "at most 0.6 times
    # Hutchinson's" is a margin no bias-free noise can cross.
    truth = decaying["true"]

    def rms(method):
        return math.sqrt(np.mean([(r.estimate - truth) ** 2 for r in decaying["runs"][method]]))

    assert rms("hutch++") < 0.6 * rms("hutchinson")
    assert rms("xtrace") < 0.6 * rms("hutchinson")


def test_xtrace_matches_its_leave_one_out_definition():
    # n = 200: XTrace computed by small-matrix formulas from a basis grown in
    # blocks of 7 probes (7 + 7 + 6) equals the definition evaluated directly:
    # for each probe i, Q_i = orth(H Omega without column i), tr_i =
    # tr(Q_i^T H Q_i) + (n - m + 1) r^T H r / |r|^2 with r = (I - Q_i Q_i^T) w_i;
    # and so do the per-block shares (diag(2 H P - P H P) + scale * r * (B r)).
    n, m = 200, 20
    rng = np.random.default_rng(1)
    lam = np.r_[np.linspace(30, 5, 8), rng.uniform(-1, 1, n - 8)]
    A = matrix_with_spectrum(lam, seed=2)
    blocks = {"x": slice(0, 70), "y": slice(70, 200)}
    _, gen = resolve_seed(5)
    est = _XTrace(DenseOperator(A), gen, blocks)
    for b in (7, 7, 6):
        est.extend(b)
    value, err, x, be, bs = est.summary()
    Om = est.Om.numpy()
    Y = A @ Om
    tr_i, shares = [], []
    for i in range(m):
        Qi, _ = np.linalg.qr(np.delete(Y, i, axis=1))
        P = Qi @ Qi.T
        r = Om[:, i] - P @ Om[:, i]
        scale = (n - m + 1) / (r @ r)
        tr_i.append(np.trace(Qi.T @ A @ Qi) + scale * r @ A @ r)
        B = (np.eye(n) - P) @ A @ (np.eye(n) - P)
        c = np.diag(2 * A @ P - P @ A @ P) + scale * r * (B @ r)
        shares.append([c[:70].sum(), c[70:].sum()])
    tr_i, shares = np.array(tr_i), np.array(shares)
    np.testing.assert_allclose(x.numpy(), tr_i, rtol=1e-10, atol=1e-10)
    assert value == pytest.approx(tr_i.mean(), rel=1e-12)
    assert err == pytest.approx(tr_i.std(ddof=1) / math.sqrt(m), rel=1e-8)
    np.testing.assert_allclose(be.numpy(), shares.mean(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bs.numpy(), shares.std(0, ddof=1) / math.sqrt(m), rtol=1e-8)


@pytest.mark.parametrize("method", ["hutch++", "xtrace"])
def test_exact_on_low_rank_operator(method):
    # n = 300, rank 5: a sketch of 10 or 20 directions holds the whole range,
    # so Hutch++ (remainder zero) and XTrace (rank-deficient sketch) are exact.
    lam = np.zeros(300)
    lam[:5] = [9.0, 4.0, 2.0, -1.0, 0.5]
    op = DenseOperator(matrix_with_spectrum(lam, seed=3))
    res = trace(op, method=method, num_matvecs=40, seed=0, blocks={"all": slice(0, 300)})
    assert res.estimate == pytest.approx(lam.sum(), abs=1e-10)
    assert res.stderr < 1e-10
    assert res.block_estimates is not None
    assert res.block_estimates["all"] == pytest.approx(lam.sum(), abs=1e-10)


def test_hutchinson_samples_are_the_probes_quadratic_forms():
    # n = 1000, 10 probes drawn in one block: samples are z_i^T A z_i for the
    # Rademacher probes the seed gives, and the estimate is their mean.
    A = matrix_with_spectrum(np.linspace(-1, 2, N), seed=4)
    op = DenseOperator(A)
    res = trace(op, method="hutchinson", num_matvecs=10, seed=11)
    _, gen = resolve_seed(11)
    Z = rademacher(op, 10, gen).numpy()
    expected = np.einsum("ij,ij->j", Z, A @ Z)
    np.testing.assert_allclose(res.samples, expected, rtol=1e-12)
    assert res.estimate == pytest.approx(expected.mean(), rel=1e-12)
    assert res.num_matvecs == 10 == op.num_matvecs


@pytest.mark.parametrize("method", METHODS)
def test_rtol_stops_on_standard_error(method):
    # n = 1000, eigenvalues in [1, 2] (tr = 1500, small relative variance):
    # rtol = 1% is met quickly, after at least 10 probes; rtol = 1e-9 cannot
    # be met and the run stops at the cap.
    op = DenseOperator(matrix_with_spectrum(np.linspace(1, 2, N), seed=5))
    res = trace(op, method=method, rtol=1e-2, seed=0)
    assert res.converged is True
    assert res.stderr <= 1e-2 * abs(res.estimate)
    assert res.samples is not None and res.samples.size >= 10
    assert res.num_matvecs < 2000
    assert abs(res.estimate - 1500) < 5 * max(res.stderr, 1e-3)
    counts = [h["matvecs"] for h in res.history]
    assert counts == sorted(counts) and counts[-1] == res.num_matvecs
    assert res.history[-1]["estimate"] == res.estimate

    capped = trace(op, method=method, rtol=1e-9, max_matvecs=64, seed=0)
    assert capped.converged is False
    assert 60 <= capped.num_matvecs <= 64


@pytest.mark.parametrize("method", METHODS)
def test_fixed_budget_is_spent_exactly(method):
    # n = 1000: the budget is the number of products (XTrace: two per probe).
    op = DenseOperator(matrix_with_spectrum(np.linspace(0, 1, N), seed=6))
    res = trace(op, method=method, num_matvecs=47, seed=0, block_size=8)
    assert res.num_matvecs == op.num_matvecs
    assert res.num_matvecs == (46 if method == "xtrace" else 47)
    assert res.converged is None
    assert res.seed == 0


def test_callback_stops_early_and_result_round_trips(tmp_path):
    # n = 1000: a callback returning True after the first block stops the run;
    # the record, its blocks and samples survive the JSON round trip.
    op = DenseOperator(matrix_with_spectrum(np.linspace(0, 1, N), seed=7))
    seen = []

    def cb(rec):
        seen.append(rec)
        return True

    res = trace(op, method="xtrace", num_matvecs=100, seed=1, blocks=_blocks(N), callback=cb)
    assert len(seen) == 1 and res.num_matvecs == 20
    back = load_result(res.to_json(tmp_path / "trace.json"))
    assert isinstance(back, TraceResult)
    assert back.estimate == res.estimate and back.stderr == res.stderr
    assert back.block_estimates == res.block_estimates
    np.testing.assert_array_equal(back.samples, res.samples)


def test_seed_reproducible_and_float32_operator():
    # n = 1000: the same seed gives the same estimate; a float32 operator gives
    # an estimate within 4 of its standard errors (the trace is 500).
    A = matrix_with_spectrum(np.linspace(0, 1, N), seed=8)
    op = DenseOperator(A)
    r1 = trace(op, num_matvecs=40, seed=3)
    r2 = trace(op, num_matvecs=40, seed=3)
    assert r1.estimate == r2.estimate
    r32 = trace(DenseOperator(A, dtype=torch.float32), num_matvecs=40, seed=3)
    assert abs(r32.estimate - 500.0) < 4 * r32.stderr


def test_invalid_arguments_say_what_to_do():
    op = DenseOperator(matrix_with_spectrum(np.linspace(0, 1, 50), seed=9))
    with pytest.raises(ValueError, match="not both"):
        trace(op, num_matvecs=10, rtol=0.1)
    with pytest.raises(ValueError, match="method must be one of"):
        trace(op, method="girard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compute the trace exactly"):
        trace(op, method="xtrace", num_matvecs=200)
    with pytest.raises(ValueError, match="outside"):
        trace(op, method="hutchinson", num_matvecs=4, blocks={"x": torch.tensor([0, 50])})
    with pytest.raises(ValueError, match="num_matvecs >= 3"):
        trace(op, method="hutch++", num_matvecs=2)
