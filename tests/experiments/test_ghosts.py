"""Ghost copies of plain Lanczos at the study's 45 steps, on a study-shaped spectrum."""

import numpy as np
import pytest

import hessian_spectra as hs
from hessian_spectra.experiments.ghosts import count_copies, lanczos_ghosts
from hessian_spectra.experiments.synthetic import STUDY_TOP20, study_like_matrix


@pytest.fixture(scope="module")
def study_op():
    # n = 600: the study's top 20 (168 ... 8.6) over a bulk in [-0.05, 0.3].
    m = study_like_matrix(600, seed=0)
    return hs.DenseOperator(m.matrix), m.eigenvalues


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plain_lanczos_at_45_steps_repeats_the_top_eigenvalue(study_op, seed):
    op, lam = study_op
    plain = lanczos_ghosts(op, lam[:20], num_steps=45, k=20, reorth="none", seed=seed)
    full = lanczos_ghosts(op, lam[:20], num_steps=45, k=20, reorth="full", seed=seed)
    assert plain.top_copies >= 2
    assert plain.distinct < 20  # the study's "20 converged" list is not 20 eigenvalues
    assert plain.ghosts >= 20 - plain.distinct - plain.unmatched
    assert plain.orthogonality_loss > 0.1
    assert full.top_copies == 1
    assert full.ghosts == 0
    assert full.distinct == 20
    assert full.orthogonality_loss < 1e-10
    assert plain.num_steps == full.num_steps == 45
    # the per-step history ends at the reported top Ritz values
    assert [h["step"] for h in plain.history] == list(range(1, 46))
    np.testing.assert_allclose(plain.history[-1]["ritz_top"], plain.ritz_top, rtol=1e-12)
    assert plain.history[-1]["matvecs"] == 45


def test_ghost_values_are_the_top_eigenvalue_to_high_accuracy(study_op):
    # The repeated values are not rough estimates: at least two copies equal the
    # top eigenvalue to 1e-12 relative (further copies may still be converging).
    op, lam = study_op
    plain = lanczos_ghosts(op, lam[:20], num_steps=45, reorth="none", seed=0)
    top = np.array(plain.ritz_top[: plain.top_copies])
    assert np.sum(np.abs(top - STUDY_TOP20[0]) < 1e-12 * STUDY_TOP20[0]) >= 2
    assert np.all(np.abs(top - STUDY_TOP20[0]) <= plain.rtol * STUDY_TOP20[0])


def test_count_copies_matches_nearest_within_tolerance():
    ref = np.array([10.0, 5.0, 1.0])
    vals = np.array([10.0, 10.000001, 9.0, 5.0000001, 0.5])
    copies, unmatched = count_copies(vals, ref, rtol=1e-3)
    assert copies == [2, 1, 0]
    assert unmatched == 2


def test_bad_arguments_refused(study_op):
    op, lam = study_op
    with pytest.raises(ValueError, match="reorth"):
        lanczos_ghosts(op, lam[:20], reorth="partial")
    with pytest.raises(ValueError, match="at least k"):
        lanczos_ghosts(op, lam[:20], num_steps=10, k=20)
    with pytest.raises(ValueError, match="empty"):
        count_copies(np.ones(3), np.array([]), 1e-3)
