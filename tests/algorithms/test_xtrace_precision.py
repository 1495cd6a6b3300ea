"""XTrace's error bar stays honest at half precision and on exactly low-rank operators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.operators.base import DenseOperator
from tests.helpers import matrix_with_spectrum


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spectrum", ["flat", "decaying", "low rank"])
def test_xtrace_error_bar_honest_at_half_precision(dtype, spectrum):
    # n = 200: at half precision the "range captured" shortcut fired on any
    # spectrum (its 1e3 eps is about 1), reporting stderr = 0 with errors up to 79%.
    rng = np.random.default_rng(4)
    lam = {
        "flat": rng.uniform(0.0, 1.0, 200),
        "decaying": 10.0 * 0.8 ** np.arange(200),
        "low rank": np.concatenate([rng.uniform(1.0, 10.0, 10), np.zeros(190)]),
    }[spectrum]
    z = []
    for seed in range(8):
        op = DenseOperator(matrix_with_spectrum(lam, seed=seed), dtype=dtype)
        exact = float(op.matrix.double().trace())  # the trace of the operator as stored
        res = hs.trace(op, method="xtrace", num_matvecs=60, seed=seed)
        assert res.stderr > 0
        z.append(abs(res.estimate - exact) / res.stderr)
    assert max(z) < 5, z


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_xtrace_on_exactly_low_rank_operator_over_several_blocks(dtype):
    # rank 7 < the 10 probes of the first block: the later blocks lie in range(Q)
    # (before, their made-up QR directions broke Q's orthogonality and xtrace
    # blamed "linearly dependent probes")
    d = torch.zeros(200, dtype=torch.float64)
    d[:7] = torch.arange(1.0, 8.0)
    op = DenseOperator(torch.diag(d), dtype=dtype)
    res = hs.trace(op, method="xtrace", num_matvecs=60, seed=0)
    assert 0 < res.stderr < 0.05 * 28.0
    assert abs(res.estimate - 28.0) <= 3 * res.stderr
