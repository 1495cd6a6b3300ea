"""An eigsh run that returns unconverged pairs says so with a ConvergenceWarning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.algorithms import ConvergenceWarning
from tests.helpers import dense_op

LAM = np.concatenate([[5.0, 4.9, 4.8, 4.7], np.linspace(0.0, 4.6, 296)])


@pytest.mark.parametrize("method", ["lanczos", "block", "power", "rqi"])
def test_budget_spent_with_unconverged_pairs_warns(method):
    with pytest.warns(ConvergenceWarning) as record:
        res = hs.eigsh(dense_op(LAM), 4, method=method, tol=1e-10, seed=0, max_matvecs=60)
    assert not res.converged.all()
    msg = str(record[0].message)
    nconv = int(res.converged.sum())
    assert f"eigsh(method={method!r}, k=4): {nconv} of 4 pairs converged" in msg
    rel = res.residuals[~res.converged] / np.abs(res.eigenvalues[~res.converged])
    assert f"the largest relative residual is {rel.max():.2g} (tol=1e-10)" in msg
    assert "max_matvecs=60" in msg and "raise max_matvecs" in msg
    assert record[0].filename == __file__  # points at the caller's line


def test_no_warning_when_converged_or_stopped_by_the_callback():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert hs.eigsh(dense_op(LAM), 2, seed=0).converged.all()
        res = hs.eigsh(dense_op(LAM), 4, tol=1e-10, seed=0, callback=lambda rec: True)
        assert not res.converged.all() and res.stop_reason == "callback"


def test_refine_warns_too():
    v = torch.randn(300, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="refine: 0 of 1 pairs converged"):
        hs.refine(dense_op(LAM), [3.0], v, tol=1e-12, max_matvecs=3)


def test_warning_is_a_user_warning_exported_at_the_top():
    assert issubclass(ConvergenceWarning, UserWarning)
    assert hs.algorithms.ConvergenceWarning is ConvergenceWarning
