"""The synthetic matrices of the sketch experiment: size, PSD, exact zero fraction."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from hessian_spectra.experiments.synthetic import (
    STUDY_TOP20,
    num_zero_eigenvalues,
    study_like_matrix,
    study_like_spectrum,
    synthetic_psd_matrix,
)


@pytest.mark.parametrize("frac", [0.1, 0.2, 0.4, 0.6, 0.8, 0.9])
def test_study_fractions_exact_psd_and_sized(frac):
    # n = 200 (n * fraction is whole for every study fraction).
    m = synthetic_psd_matrix(200, frac, seed=3)
    assert m.matrix.shape == (200, 200)
    assert np.array_equal(m.matrix, m.matrix.T)
    assert m.num_zero == round(frac * 200)
    assert int(np.sum(m.eigenvalues == 0.0)) == m.num_zero
    assert np.all(m.eigenvalues[: 200 - m.num_zero] > 0)
    assert np.all(np.diff(m.eigenvalues) <= 0)
    # The matrix really has that spectrum: eigvalsh agrees to rounding, so it is
    # PSD and has exactly num_zero eigenvalues at zero (to rounding).
    w = np.sort(np.linalg.eigvalsh(m.matrix))[::-1]
    scale = m.eigenvalues[0]
    np.testing.assert_allclose(w, m.eigenvalues, rtol=0, atol=1e-11 * scale)
    assert w.min() > -1e-11 * scale
    smallest_nonzero = m.eigenvalues[199 - m.num_zero]
    assert int(np.sum(np.abs(w) < smallest_nonzero / 2)) == m.num_zero


@settings(deadline=None, max_examples=15)
@given(
    n=st.integers(min_value=5, max_value=60),
    num_zero=st.integers(min_value=0, max_value=59),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_any_whole_count_of_zeros(n, num_zero, seed):
    num_zero = min(num_zero, n - 1)
    frac = num_zero / n
    m = synthetic_psd_matrix(n, frac, seed=seed)
    assert m.matrix.shape == (n, n)
    assert int(np.sum(m.eigenvalues == 0.0)) == num_zero
    assert np.all(m.eigenvalues >= 0)
    w = np.sort(np.linalg.eigvalsh(m.matrix))[::-1]
    np.testing.assert_allclose(w, m.eigenvalues, rtol=0, atol=1e-10 * m.eigenvalues[0])


def test_same_seed_same_matrix_other_seed_other():
    a = synthetic_psd_matrix(50, 0.2, seed=1)
    b = synthetic_psd_matrix(50, 0.2, seed=1)
    c = synthetic_psd_matrix(50, 0.2, seed=2)
    assert np.array_equal(a.matrix, b.matrix)
    assert not np.allclose(a.matrix, c.matrix)


def test_nonzeros_are_cauchy_magnitudes():
    # n = 1000, no zeros: the spectrum is |t_1|, whose CDF is 2 atan(x) / pi.
    # Kolmogorov-Smirnov at the 0.1% level (critical distance about 0.062).
    m = synthetic_psd_matrix(1000, 0.0, seed=0)
    res = stats.kstest(m.eigenvalues, lambda x: 2.0 * np.arctan(x) / np.pi)
    assert res.pvalue > 1e-3
    # and it is not, say, the square of a Cauchy sample
    res_sq = stats.kstest(m.eigenvalues**2, lambda x: 2.0 * np.arctan(x) / np.pi)
    assert res_sq.pvalue < 1e-6


def test_fraction_that_n_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="whole number"):
        synthetic_psd_matrix(15, 0.1, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        num_zero_eigenvalues(10, 1.0)


def test_study_like_spectrum():
    lam = study_like_spectrum(300, seed=0)
    assert lam.size == 300
    np.testing.assert_array_equal(lam[:20], np.array(STUDY_TOP20))
    assert lam[20] <= 0.3 and lam[-1] >= -0.05
    m = study_like_matrix(300, seed=0)
    w = np.sort(np.linalg.eigvalsh(m.matrix))[::-1]
    np.testing.assert_allclose(w, lam, atol=1e-10 * lam[0])
