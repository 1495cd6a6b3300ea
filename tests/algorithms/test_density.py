"""Stochastic Lanczos quadrature on dense float64 operators with known spectra."""

from __future__ import annotations

import numpy as np
import pytest

from hessian_spectra.algorithms.density import density
from hessian_spectra.operators.base import DenseOperator
from hessian_spectra.results import DensityResult, load_result
from tests.helpers import matrix_with_spectrum

N = 1000


def _exact_cdf(lam: np.ndarray):
    s = np.sort(lam)
    return lambda x: np.searchsorted(s, x, side="right") / s.size


def levy_distance(F, G, lo: float, hi: float, points: int = 20001) -> float:
    """inf{eps: F(x - eps) - eps <= G(x) <= F(x + eps) + eps for all x}, by bisection,
    with x on a grid of spacing (hi - lo) / points (1e-4 here, far below the 0.05 tested)."""
    x = np.linspace(lo, hi, points)
    g = G(x)

    def ok(eps: float) -> bool:
        return bool(np.all(F(x - eps) - eps <= g + 1e-12) and np.all(g <= F(x + eps) + eps + 1e-12))

    a, b = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (a + b)
        a, b = (a, mid) if ok(mid) else (mid, b)
    return b


rng = np.random.default_rng(0)
SPECTRA = {
    # Eigenvalues on an O(1) scale, so a Levy distance of 0.05 is 0.05 in
    # eigenvalue units and 5% in probability.
    "semicircle": 2 * rng.beta(1.5, 1.5, N) - 1,
    "two_clusters_and_outliers": np.r_[
        rng.normal(-0.5, 0.05, 400), rng.normal(0.4, 0.1, 590), np.linspace(3.0, 1.5, 10)
    ],
    "student_t": np.clip(rng.standard_t(3, N) * 0.2, -3, 3),
}


@pytest.mark.parametrize("name", list(SPECTRA))
def test_levy_distance_to_exact_cdf(name):
    # n = 1000, 10 Rademacher probes, 100 steps: the probe-averaged Gauss rules'
    # CDF is within Levy distance 0.05 of the exact spectral CDF (no large atom).
    lam = SPECTRA[name]
    op = DenseOperator(matrix_with_spectrum(lam, seed=2))
    den = density(op, num_steps=100, num_probes=10, seed=0)
    assert den.nodes.shape == den.weights.shape == (10, 100)
    assert den.num_matvecs == 1000
    np.testing.assert_allclose(den.weights.sum(1), 1.0, atol=1e-12)
    lo, hi = lam.min() - 0.5, lam.max() + 0.5
    assert levy_distance(_exact_cdf(lam), den.cdf, lo, hi) <= 0.05


def test_ninety_percent_zeros_puts_mass_at_zero():
    # n = 1000 with 900 zero eigenvalues, the rest uniform in [0.05, 1] and
    # distinct: the mass within 1e-3 of zero is 0.9 +- 0.05. Per probe, the
    # null-space weight z^T P0 z / n has standard deviation
    # sqrt(2 (900 - 900^2/1000)) / 1000 = 0.013; over 10 probes 0.004.
    lam = np.r_[np.zeros(900), np.random.default_rng(3).uniform(0.05, 1.0, 100)]
    op = DenseOperator(matrix_with_spectrum(lam, seed=4))
    den = density(op, num_steps=100, num_probes=10, seed=1)
    mass = den.cdf(1e-3) - den.cdf(-1e-3 - 1e-15)
    assert abs(mass - 0.9) <= 0.05
    # the bulk above zero: 100 eigenvalues, all located by the quadrature
    assert den.count_above(0.025) == pytest.approx(100, abs=5)


def test_invariant_krylov_space_stops_the_quadrature():
    # n = 1000 with 950 zero eigenvalues and 50 distinct non-zero ones: every
    # probe's Krylov space has dimension 51 (52 in floating point, where the
    # null space is null only to ~1e-16 |H| and the zero atom may split into
    # two nodes, both zero to 1e-15), so the run stops there (not at 100
    # steps, and never restarts): the Gauss rule is then exact, every node
    # is an eigenvalue, the mass at zero is 0.95 +- 0.05, and the 50 non-zero
    # nodes are located eigenvalues counting one each. A single eigenvalue's
    # n * w is chi-squared(1) and reaches the atom threshold 10 with
    # probability 0.0016, adding ~10 to one probe's count in 1 of 600 cases:
    # the mean over probes is 50 within 3.
    nonzero = np.linspace(0.1, 2.0, 50)
    lam = np.r_[np.zeros(950), nonzero]
    op = DenseOperator(matrix_with_spectrum(lam, seed=5))
    den = density(op, num_steps=100, num_probes=10, seed=2)
    assert np.all(den.num_nodes <= 52)
    assert den.num_matvecs == int(den.num_nodes.sum()) <= 520
    np.testing.assert_allclose(den.weights.sum(1), 1.0, atol=1e-12)
    for p in range(10):
        k = int(den.num_nodes[p])
        nodes = den.nodes[p, :k]
        dist = np.min(np.abs(nodes[:, None] - np.r_[0.0, nonzero][None, :]), axis=1)
        assert dist.max() < 1e-6
        assert np.all(den.weights[p, k:] == 0)
        assert np.all(den.converged[p, :k]) and not np.any(den.converged[p, k:])
    mass = den.cdf(1e-3) - den.cdf(-1e-3)
    assert abs(mass - 0.95) <= 0.05
    assert abs(den.count_above(0.05) - 50) <= 3


def test_count_above_outliers_and_bulk():
    # n = 1000: 10 outliers in [10, 100] over a uniform bulk in [0, 1]. Above 5
    # only the outliers: they converge and count one each -> exactly 10.
    # Above 0.5: 10 + the bulk's count, whose error has two parts: the weight
    # noise (the probe-to-probe standard error, 4 of them) and the Gauss
    # rule's own error, at most the weight of the nodes bracketing t
    # (Chebyshev-Markov-Stieltjes inequalities), times n.
    bulk = np.random.default_rng(6).uniform(0.0, 1.0, N - 10)
    lam = np.r_[np.linspace(100.0, 10.0, 10), bulk]
    op = DenseOperator(matrix_with_spectrum(lam, seed=7))
    den = density(op, num_steps=100, num_probes=10, seed=3)
    assert den.count_above(5.0) == pytest.approx(10.0, abs=1e-12)
    assert np.all(den.count_above(5.0, per_probe=True) == 10)
    t = 0.5
    true = int((lam > t).sum())
    quad = []
    for p in range(10):
        th, w = den.nodes[p], den.weights[p]
        below, above = w[th <= t], w[th > t]
        quad.append(max(below[-1] if below.size else 0, above[0] if above.size else 0))
    tol = 4 * den.count_above_stderr(t) + N * float(np.mean(quad))
    assert abs(den.count_above(t) - true) <= tol


def test_pdf_is_a_normalized_kernel_sum():
    # n = 1000, 3 probes: the pdf is the probes' mean of weight-scaled Gaussians
    # (checked against the formula with a given sigma) and integrates to 1
    # with the default, node-spacing widths.
    lam = np.random.default_rng(8).uniform(-1.0, 1.0, N)
    den = density(
        DenseOperator(matrix_with_spectrum(lam, seed=9)), num_steps=40, num_probes=3, seed=4
    )
    grid = np.linspace(-1.5, 1.5, 3001)
    p = den.pdf(grid)
    assert abs(np.sum(p) * (grid[1] - grid[0]) - 1.0) < 1e-3
    x = np.array([-0.3, 0.0, 0.7])
    sigma = 0.05
    z = (x[None, None, :] - den.nodes[:, :, None]) / sigma
    expected = (den.weights[:, :, None] * np.exp(-0.5 * z**2)).sum(1).mean(0) / (
        sigma * np.sqrt(2 * np.pi)
    )
    np.testing.assert_allclose(den.pdf(x, sigma), expected, rtol=1e-12)
    widths = den.node_widths(grid)
    span = den.nodes.max() - den.nodes.min()
    assert np.all(widths >= 2 * (grid[1] - grid[0]) - 1e-15)
    assert np.all(widths <= span / 40 + 1e-15)
    assert den.pdf(grid, per_probe=True).shape == (3, grid.size)


def test_per_probe_spread_and_json_round_trip(tmp_path):
    # n = 1000, 4 probes: per-probe CDFs are distribution functions whose mean
    # is `cdf`; the standard error is their std / 2; one probe has none (NaN).
    lam = np.random.default_rng(10).uniform(0.0, 1.0, N)
    op = DenseOperator(matrix_with_spectrum(lam, seed=11))
    den = density(op, num_steps=30, num_probes=4, seed=5)
    x = np.linspace(-0.1, 1.1, 50)
    rows = den.cdf(x, per_probe=True)
    assert rows.shape == (4, 50)
    assert np.all(np.diff(rows, axis=1) >= 0) and np.allclose(rows[:, -1], 1.0)
    np.testing.assert_allclose(rows.mean(0), den.cdf(x))
    np.testing.assert_allclose(den.cdf_stderr(x), rows.std(0, ddof=1) / 2)
    assert isinstance(den.cdf(0.5), float)
    one = density(op, num_steps=30, num_probes=1, seed=5)
    assert np.isnan(one.cdf_stderr(0.5)) and np.isnan(one.count_above_stderr(0.5))
    back = load_result(den.to_json(tmp_path / "den.json"))
    assert isinstance(back, DensityResult)
    np.testing.assert_array_equal(back.nodes, den.nodes)
    np.testing.assert_array_equal(back.converged, den.converged)
    assert back.count_above(0.5) == den.count_above(0.5)
    np.testing.assert_allclose(back.pdf(x), den.pdf(x))
    assert back.settings["num_probes"] == 4 and back.seed == 5


def test_steps_capped_at_n_and_invalid_arguments():
    # n = 30: more steps than n are capped (the rule is then exact).
    lam = np.linspace(1.0, 3.0, 30)
    op = DenseOperator(matrix_with_spectrum(lam, seed=12))
    den = density(op, num_steps=100, seed=0)
    assert den.num_matvecs <= 30
    np.testing.assert_allclose(np.sort(den.nodes[0, : den.num_nodes[0]]), lam, atol=1e-8)
    with pytest.raises(ValueError, match="num_steps"):
        density(op, num_steps=0)
    with pytest.raises(ValueError, match="num_probes"):
        density(op, num_probes=0)


def test_probes_in_one_block_match_probes_one_by_one():
    # n = 300, 5 probes, 30 steps: running the probes in lockstep (one block
    # product per step) gives the same quadrature as running them one by one,
    # with the same products counted, in 30 block products instead of 150.
    lam = np.random.default_rng(13).uniform(-1.0, 2.0, 300)
    A = matrix_with_spectrum(lam, seed=14)

    class Counting(DenseOperator):
        calls = 0

        def _matmat(self, V):
            Counting.calls += 1
            return super()._matmat(V)

    together = density(Counting(A), num_steps=30, num_probes=5, seed=6, block_size=5)
    calls_together, Counting.calls = Counting.calls, 0
    alone = density(Counting(A), num_steps=30, num_probes=5, seed=6, block_size=1)
    assert calls_together == 30 and Counting.calls == 150
    assert together.num_matvecs == alone.num_matvecs == 150
    np.testing.assert_allclose(together.nodes, alone.nodes, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(together.weights, alone.weights, rtol=1e-10, atol=1e-14)
