"""eigsh on the Hessian of a small trained network, against its dense Hessian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hessian_spectra as hs


def dense_hessian(loss_of, params: list[torch.Tensor]) -> torch.Tensor:
    """The Hessian by double backward on unit vectors (float64), one column at a time."""
    loss = loss_of()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.cat([x.reshape(-1) for x in grads])
    n = g.numel()
    H = torch.zeros(n, n, dtype=g.dtype)
    for i in range(n):
        cols = torch.autograd.grad(g[i], params, retain_graph=True)
        H[:, i] = torch.cat([c.reshape(-1) for c in cols])
    return H


@pytest.fixture(scope="module")
def trained_mlp():
    # A 6-16-3 tanh MLP (163 parameters) trained for 300 Adam steps on 96 seeded
    # samples, in float64.
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=gen, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.5).long() + (x[:, 2] > 1.0).long()
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    crit = nn.CrossEntropyLoss()
    for _ in range(300):
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
    params = list(model.parameters())
    H = dense_hessian(lambda: crit(model(x), y), params)
    return model, crit, x, y, H


def test_top10_of_a_trained_mlp_hessian_match_eigvalsh(trained_mlp):
    # n = 163 parameters, k = 10, tol = 1e-8: every one of the top 10 within 1e-6
    # relative of numpy.linalg.eigvalsh on the dense Hessian.
    model, crit, x, y, H = trained_mlp
    asym = float((H - H.T).abs().max())
    assert asym <= 1e-12 * float(H.abs().max())  # check the oracle before trusting it
    exact = np.linalg.eigvalsh(((H + H.T) / 2).numpy())[::-1][:10]
    op = hs.HessianOperator(model, crit, (x, y))
    assert op.shape == (163, 163) and op.dtype == torch.float64
    res = hs.eigsh(op, 10, tol=1e-8, seed=0)
    assert res.converged.all()
    rel = np.abs(res.eigenvalues - exact) / np.abs(exact)
    assert np.all(rel <= 1e-6), rel
    # the residuals reported from the recurrence are the true ones
    V = res.eigenvectors
    R = H @ V - V * torch.as_tensor(res.eigenvalues)
    true = torch.linalg.vector_norm(R, dim=0).numpy()
    np.testing.assert_allclose(res.residuals, true, rtol=1e-2, atol=1e-12 * exact[0])
    assert res.num_matvecs < 163  # fewer products than columns of the Hessian


def test_block_method_on_the_same_hessian(trained_mlp):
    # n = 163, k = 10, block_size 4: the same top 10 from block products.
    model, crit, x, y, H = trained_mlp
    exact = np.linalg.eigvalsh(((H + H.T) / 2).numpy())[::-1][:10]
    op = hs.HessianOperator(model, crit, (x, y))
    res = hs.eigsh(op, 10, method="block", block_size=4, tol=1e-8, seed=0)
    assert res.converged.all()
    np.testing.assert_allclose(res.eigenvalues, exact, rtol=1e-6)
