"""The peer benchmark's PyHessian tracker reads PyHessian's own eigenvalues off its products.

benchmarks/peers.py stops PyHessian's ``eigenvalues(top_n=...)`` after a time
limit on large models and then reports the eigenvalues it had finished, read
off the products it tracked; this checks that reading against what PyHessian
returns when it runs to the end, and our top-k against the dense Hessian, on a
small network (a few seconds). Needs the ``bench`` extra.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hessian_spectra as hs

pytest.importorskip("pyhessian", reason="PyHessian is in the bench extra")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peerlib  # noqa: E402  (a benchmarks/ module, on the path just above)


def _problem() -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor], np.ndarray]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    crit = nn.CrossEntropyLoss()
    op = hs.HessianOperator(copy.deepcopy(model).double(), crit, (x.double(), y))
    H = op.matmat(torch.eye(op.shape[0], dtype=torch.float64))
    exact = peerlib.order_lm(torch.linalg.eigvalsh((H + H.T) / 2).numpy())
    return model, crit, (x, y), exact


def test_tracked_values_are_pyhessians_and_counts_add_up() -> None:
    model, crit, batch, exact = _problem()
    k = 3
    out = peerlib.pyhessian_topk(peerlib.pyhessian_object(model, crit, batch), exact[:k], None, k)
    assert out["finished"] and out["eigenvalues_finished"] == k
    assert out["hvps"] == sum(out["hvps_per_eigenvalue"]) > k
    # the values read off the tracked products are exactly those PyHessian returns
    assert out["finished_values"] == pytest.approx(out["eigenvalues_as_returned"], rel=0, abs=0)
    # the same seeded run without the tracker returns the same values
    torch.manual_seed(0)
    plain, _ = peerlib.pyhessian_object(model, crit, batch).eigenvalues(top_n=k)
    assert out["eigenvalues_as_returned"] == pytest.approx(plain, rel=1e-6)
    assert np.isfinite(out["max_rel_err"])


def test_our_topk_in_the_benchmark_setting_matches_the_dense_hessian() -> None:
    model, crit, batch, exact = _problem()
    res = hs.eigsh(peerlib.ours(model, crit, batch), 3, which="LM", tol=1e-4, seed=0)
    assert peerlib.max_rel_err(res.eigenvalues, exact[:3]) < 1e-4
