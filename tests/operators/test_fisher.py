"""FisherOperator: the empirical Fisher against dense sums of g g^T built from per-sample
gradients, and the Monte-Carlo Fisher's convergence to the GGN at the rate its variance sets.

References are built here with plain autograd, one sample at a time, with
torch's own criterion (``reduction='sum'``) for each sample's loss; the
mean's denominator is read off torch as sum / mean. Float64 throughout.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import hessian_spectra as hs
from hessian_spectra.operators import fisher as fisher_module
from hessian_spectra.operators.fisher import FisherOperator
from hessian_spectra.operators.ggn import GGNOperator
from tests.operators.test_ggn import (
    DT,
    LOSSES,
    SIZES,
    C,
    batch_weights,
    dense,
    make_batches,
    make_model,
    output_jacobian,
    rel_err,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")


def dense_empirical_fisher(model, criterion, batches, weights) -> torch.Tensor:
    """sum_k w_k (1/c_k) sum_i g_i g_i^T / sum_k w_k, g_i the gradient of sample i's summed loss."""
    summed = copy.copy(criterion)
    summed.reduction = "sum"
    params = list(model.parameters())
    total = 0.0
    for (x, y), w in zip(batches, weights, strict=True):
        with torch.no_grad():
            f = model(x)
            c = float(summed(f, y) / criterion(f, y))  # the mean's denominator
        outer = 0.0
        for i in range(x.shape[0]):
            loss = summed(model(x[i : i + 1]), y[i : i + 1])
            g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])
            outer = outer + torch.outer(g, g)
        total = total + w * outer / c
    return total / sum(weights)


@pytest.mark.parametrize("name", list(LOSSES))
def test_empirical_fisher_equals_dense_sum_of_per_sample_outer_products(name):
    criterion = LOSSES[name][0]
    model, batches = make_model(name), make_batches(name)
    op = FisherOperator(model, criterion, batches)
    F = dense_empirical_fisher(model, criterion, batches, batch_weights(op))
    assert rel_err(dense(op), F) <= 1e-10
    V = torch.randn(op.shape[0], 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    assert rel_err(op.matmat(V), F @ V) <= 1e-10
    lam = torch.linalg.eigvalsh(dense(op))
    assert float(lam[0]) >= -1e-10 * float(lam[-1])


def test_empirical_fisher_of_a_classifier_is_the_mean_of_g_g_transpose():
    # the definition, on unequal batches: mean over all samples of g_i g_i^T with
    # g_i the gradient of the criterion on sample i alone
    model, batches = make_model("ce"), make_batches("ce")
    params = list(model.parameters())
    gs = []
    for x, y in batches:
        for i in range(x.shape[0]):
            loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
            gs.append(torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)]))
    G = torch.stack(gs)
    F = G.T @ G / len(gs)
    assert len(gs) == sum(SIZES)
    assert rel_err(dense(FisherOperator(model, nn.CrossEntropyLoss(), batches)), F) <= 1e-10


def test_per_sample_gradients_in_chunks_give_the_same_products(monkeypatch):
    model, batches = make_model("ce_sequence"), make_batches("ce_sequence")
    criterion = LOSSES["ce_sequence"][0]
    whole = dense(FisherOperator(model, criterion, batches))
    n = whole.shape[0]
    monkeypatch.setattr(fisher_module, "CHUNK_ELEMENTS", 3 * n)  # three samples a chunk
    assert rel_err(dense(FisherOperator(model, criterion, batches)), whole) <= 1e-13


# ------------------------------------------------------------------ Monte-Carlo


def _mc(model, criterion, batches, S, seed):
    op = FisherOperator(
        model, criterion, batches, kind="mc", num_samples=S, seed=seed, check_deterministic=False
    )
    return op


def test_mc_fisher_converges_to_the_ggn_at_the_rate_its_variance_sets():
    """E ||(F_S - G) V||^2 = v(V) / S, with v computed exactly by summing over the classes.

    One draw for sample i adds a_i u u^T with u = J_i^T (p_i - e_c), c ~ p_i, a_i = 1/N
    (the mean over N samples), so v(V) = sum_i a_i^2 (sum_c p_ic |u_c|^2 |V^T u_c|^2
    - |G_i V|^2) with G_i = sum_c p_ic u_c u_c^T.
    """
    model, batches = make_model("ce"), make_batches("ce")
    criterion = nn.CrossEntropyLoss()
    G = dense(GGNOperator(model, criterion, batches))
    n, N = G.shape[0], sum(SIZES)
    V = torch.randn(n, 6, dtype=DT, generator=torch.Generator().manual_seed(4))
    v = 0.0
    for x, _ in batches:
        for i in range(x.shape[0]):
            f, J = output_jacobian(model, x[i : i + 1])
            p = torch.softmax(f[0], 0)
            U = J.T @ (p[:, None] - torch.eye(C, dtype=DT))  # columns u_c
            Gi_V = (U * p) @ (U.T @ V)
            second = (p * (U * U).sum(0) * ((V.T @ U) ** 2).sum(0)).sum()
            v += float(second - (Gi_V**2).sum()) / N**2
    ratios = []
    for seed in range(4):
        for S in (1, 8, 64):
            err = _mc(model, criterion, batches, S, seed).matmat(V) - G @ V
            ratios.append(float((err**2).sum()) / (v / S))
    # each ratio has mean 1 (and a spread of about 0.4, measured): none far out, and their
    # mean within 4 standard errors of 1
    assert max(ratios) < 4.0, ratios
    assert 0.5 < float(np.mean(ratios)) < 1.6, ratios
    # and the error itself falls: 64 draws are ~8x closer than one
    err1 = np.mean([r / 1 for r in ratios[0::3]]) * v
    err64 = np.mean([r / 64 for r in ratios[2::3]]) * v
    assert err64 < err1 / 16


@pytest.mark.parametrize("name", ["mse", "bce", "ce_sequence"])
def test_mc_fisher_is_unbiased_for_the_ggn(name):
    # w^T F_S v over 8 seeds: a t-test (7 degrees of freedom) against w^T G v, for three
    # random pairs; |t| > 6 has probability 5e-4 under the hypothesis
    criterion = LOSSES[name][0]
    model, batches = make_model(name), make_batches(name)
    G = dense(GGNOperator(model, criterion, batches))
    gen = torch.Generator().manual_seed(5)
    V = torch.randn(G.shape[0], 3, dtype=DT, generator=gen)
    W = torch.randn(G.shape[0], 3, dtype=DT, generator=gen)
    K = 8
    runs = torch.stack(
        [(W * _mc(model, criterion, batches, 4, s).matmat(V)).sum(0) for s in range(K)]
    )
    exact = (W * (G @ V)).sum(0)
    t = (runs.mean(0) - exact) / (runs.std(0) / K**0.5)
    assert bool((t.abs() < 6).all()), t
    # the empirical Fisher is another matrix: the same test tells them apart
    emp = (W * (dense(FisherOperator(model, criterion, batches)) @ V)).sum(0)
    t_emp = (runs.mean(0) - emp) / (runs.std(0) / K**0.5)
    assert bool((t_emp.abs() > 6).any()), t_emp


def test_mc_draws_are_fixed_by_the_seed():
    model, batches = make_model("ce"), make_batches("ce")
    ce = nn.CrossEntropyLoss()
    op = FisherOperator(model, ce, batches, kind="mc", num_samples=2, seed=7)
    v = torch.randn(op.shape[0], dtype=DT)
    first = op @ v
    assert torch.equal(op @ v, first)  # every product the same matrix
    assert torch.equal(
        FisherOperator(model, ce, batches, kind="mc", num_samples=2, seed=7) @ v, first
    )
    other = FisherOperator(model, ce, batches, kind="mc", num_samples=2, seed=8) @ v
    assert not torch.allclose(other, first)
    drawn = FisherOperator(model, ce, batches, kind="mc", num_samples=2)
    assert isinstance(drawn.seed, int)
    assert op.fingerprint()["seed"] == 7 and op.fingerprint()["kind"] == "mc"
    assert FisherOperator(model, ce, batches, check_deterministic=True).seed is None


def test_mc_keeps_ignored_targets_out():
    # positions whose target is ignore_index contribute nothing: the same operator as on
    # the data without those positions
    model = make_model("ce")
    x = torch.randn(10, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, C, (10,), generator=torch.Generator().manual_seed(1))
    y_ignored = y.clone()
    y_ignored[5:] = -100
    ce = nn.CrossEntropyLoss()
    a = dense(FisherOperator(model, ce, (x, y_ignored), kind="mc", num_samples=3, seed=0))
    b = dense(FisherOperator(model, ce, (x[:5], y[:5]), kind="mc", num_samples=3, seed=0))
    G = dense(GGNOperator(model, ce, (x[:5], y[:5])))
    # same samples kept, same denominator; draws differ only in where the generator is
    assert rel_err(dense(GGNOperator(model, ce, (x, y_ignored))), G) <= 1e-12
    assert float(torch.linalg.norm(a - G)) < 2 * float(torch.linalg.norm(G))
    assert float(torch.linalg.norm(b - G)) < 2 * float(torch.linalg.norm(G))


def test_algorithms_run_on_the_fisher():
    model, batches = make_model("ce"), make_batches("ce")
    op = FisherOperator(model, nn.CrossEntropyLoss(), batches)
    F = dense(op)
    top = hs.eigsh(op, k=2, seed=0, tol=1e-10)
    assert np.allclose(top.eigenvalues, torch.linalg.eigvalsh(F).flip(0)[:2].numpy(), rtol=1e-8)
    assert "kind='empirical'" in repr(op)


# ------------------------------------------------------------------ refusals


def test_refusals_say_what_to_do():
    model, batches = make_model("ce"), make_batches("ce")
    ce = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="kind must be one of"):
        FisherOperator(model, ce, batches, kind="true")
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        FisherOperator(model, ce, batches, kind="mc", num_samples=0)
    with pytest.raises(ValueError, match="are for kind='mc'"):
        FisherOperator(model, ce, batches, seed=0)
    with pytest.raises(ValueError, match="use kind='empirical'"):
        FisherOperator(
            model, nn.CrossEntropyLoss(weight=torch.ones(C, dtype=DT)), batches, kind="mc"
        )
    with pytest.raises(ValueError, match="use kind='empirical'"):
        FisherOperator(model, nn.CrossEntropyLoss(label_smoothing=0.1), batches, kind="mc")
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.ones(C, dtype=DT))
    with pytest.raises(ValueError, match="use kind='empirical'"):
        FisherOperator(make_model("bce"), bce, make_batches("bce"), kind="mc")
    with pytest.raises(TypeError, match="takes no allow_train_mode"):
        FisherOperator(model, ce, batches, allow_train_mode=True)
    with pytest.raises(ValueError, match="supported criteria"):
        FisherOperator(model, nn.L1Loss(), batches)
    with pytest.raises(TypeError, match="seed must be an int"):
        FisherOperator(model, ce, batches, kind="mc", seed=1.5)


# ------------------------------------------------------------------ another library


@pytest.mark.parametrize("name", ["ce", "mse", "bce"])
def test_equals_curvlinops_empirical_fisher(name):
    curvlinops = pytest.importorskip(
        "curvlinops", reason="curvlinops-for-pytorch is not installed (pip install it to compare)"
    )
    criterion = LOSSES[name][0]
    model, batches = make_model(name), make_batches(name)
    theirs = curvlinops.EFLinearOperator(
        model, criterion, list(model.parameters()), batches, check_deterministic=False
    )
    ours = FisherOperator(model, criterion, batches)
    V = torch.randn(ours.shape[0], 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    assert rel_err(ours.matmat(V), theirs @ V) <= 1e-8


# ------------------------------------------------------------------ data parallel


def _two_rank_worker(rank, world, init_file, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, batches = make_model("ce"), make_batches("ce", sizes=(7, 13, 4, 6))
        ce = nn.CrossEntropyLoss()
        out = {}
        for name, op in (
            ("ggn", GGNOperator(model, ce, batches)),
            ("ef", FisherOperator(model, ce, batches)),
            ("mc", FisherOperator(model, ce, batches, kind="mc", num_samples=3, seed=1)),
        ):
            V = torch.randn(op.shape[0], 3, dtype=DT, generator=torch.Generator().manual_seed(0))
            out[name] = (op.is_distributed, op.matmat(V), op.matmat(V), op.num_samples)
        torch.save(out, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_reduce_ggn_and_fisher_products(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(_two_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    model, batches = make_model("ce"), make_batches("ce", sizes=(7, 13, 4, 6))
    ce = nn.CrossEntropyLoss()
    for name, op in (
        ("ggn", GGNOperator(model, ce, batches)),
        ("ef", FisherOperator(model, ce, batches)),
    ):
        V = torch.randn(op.shape[0], 3, dtype=DT, generator=torch.Generator().manual_seed(0))
        ref = op.matmat(V)
        for r in (r0, r1):
            distributed, first, again, samples = r[name]
            assert distributed and samples == 30.0
            assert rel_err(first, ref) <= 1e-12, name  # each rank: the full-data product
            assert torch.equal(first, again)
    # the Monte-Carlo Fisher: each rank draws its own labels, and both ranks hold the same
    # reduced product, the same on every product
    assert torch.equal(r0["mc"][1], r1["mc"][1]) and torch.equal(r0["mc"][1], r0["mc"][2])
