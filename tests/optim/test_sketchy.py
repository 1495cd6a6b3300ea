"""SketchySGD: Newton's step on a quadratic, the closure convention, HVP counts, resuming."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import hessian_spectra as hs
from hessian_spectra.optim import SketchySGD
from tests.helpers import matrix_with_spectrum


def _quadratic(n=8, cond=1e6, seed=0):
    A = torch.as_tensor(matrix_with_spectrum(np.logspace(0, -np.log10(cond), n), seed=seed))
    b = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x = nn.Parameter(torch.zeros(n, dtype=torch.float64))
    return A, b, x, lambda: 0.5 * x @ (A @ x) - b @ x


@pytest.mark.parametrize("rank", [8, 20])
def test_step_is_newtons_on_a_quadratic(rank):
    """rank >= n, rho -> 0, lr = 1: one step lands on the minimizer A^-1 b."""
    A, b, x, f = _quadratic()
    opt = SketchySGD([x], rank=rank, rho=1e-13, lr=1.0, seed=0)
    opt.step(f)
    x_star = torch.linalg.solve(A, b)
    err = torch.linalg.vector_norm(x.detach() - x_star) / torch.linalg.vector_norm(x_star)
    assert float(err) < 1e-6


def test_auto_step_on_a_quadratic_is_half_newton():
    """The preconditioned Hessian is I, so L = 1 and the automatic step is lr_scale = 1/2."""
    A, b, x, f = _quadratic()
    opt = SketchySGD([x], rank=8, rho=1e-13, cap_decrease=False, seed=0)
    opt.step(f)
    assert opt.lambda_max == pytest.approx(1.0, rel=1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5, rel=1e-6)
    x_star = torch.linalg.solve(A, b)
    assert torch.allclose(x.detach(), 0.5 * x_star, rtol=1e-6, atol=1e-9)
    # the gradient of the step is left in .grad
    assert torch.allclose(x.grad, -b)


def test_decrease_cap_on_the_automatic_step():
    """The step never promises (by the quadratic model) more decrease than the loss."""
    A, b, x, quadratic = _quadratic()
    x_star = torch.linalg.solve(A, b)
    delta2 = float(b @ x_star)  # g^T H^-1 g at x = 0
    for offset, capped in [(delta2 / 2, False), (delta2 / 20, True)]:
        with torch.no_grad():
            x.zero_()
        opt = SketchySGD([x], rank=8, rho=1e-13, seed=0)
        opt.step(lambda offset=offset: quadratic() + offset)  # loss at x = 0: offset
        t = 1 - (1 - 2 * offset / delta2) ** 0.5 if capped else 0.5
        assert opt.last_step_size == pytest.approx(t, rel=1e-6)
        assert torch.allclose(x.detach(), t * x_star, rtol=1e-6)
    # a quadratic whose minimum is 0 is never capped: the full step promises exactly f - f*
    with torch.no_grad():
        x.zero_()
    opt = SketchySGD([x], rank=8, rho=1e-13, seed=0)
    opt.step(lambda: quadratic() + delta2 / 2)
    assert opt.last_step_size == pytest.approx(0.5, rel=1e-6)


def test_guard_undoes_a_step_that_blows_up_the_loss():
    """A huge fixed step: the next loss is far above the running average, so it is undone."""
    A, b, x, quadratic = _quadratic(n=8, cond=10.0)
    f_min = float(-0.5 * b @ torch.linalg.solve(A, b))

    def f():
        return quadratic() - f_min + 1.0  # positive, 1 at the minimum

    opt = SketchySGD([x], rank=8, lr=50.0, update_every=100, seed=0)
    start = float(f().detach())
    opt.step(f)
    after_first = x.detach().clone()
    assert float(f().detach()) > 10 * start  # the step overshot
    opt.step(f)
    assert torch.equal(x.detach(), torch.zeros(8, dtype=torch.float64))  # back to the start
    assert opt.damping == 0.5 and opt.num_rejected == 1
    assert opt.history[-1]["kind"] == "rejected"
    opt.step(f)  # the curvature is sketched again at the restored point, half the step
    assert opt.history[-1]["kind"] == "refresh"
    assert torch.allclose(x.detach(), 0.5 * after_first)


def test_hvps_are_counted():
    A, b, x, f = _quadratic(n=30, cond=1e3)
    opt = SketchySGD([x], rank=5, update_every=4, lanczos_steps=6, lr_checks=2, seed=0)
    counts = []
    for _ in range(5):
        opt.step(f)
        counts.append(opt.num_matvecs)
    # refresh: 5 sketch + 6 Lanczos; two checks of 6; a plain step; refresh again
    assert counts == [11, 17, 23, 23, 34]
    assert opt.num_graphs == 4
    kinds = [r["kind"] for r in opt.history]
    assert kinds == ["refresh", "check", "check", "refresh"]


def test_fixed_lr_spends_only_sketch_hvps():
    A, b, x, f = _quadratic(n=30, cond=1e3)
    opt = SketchySGD([x], rank=5, update_every=3, lr=0.1, seed=0)
    for _ in range(4):
        opt.step(f)
    assert opt.num_matvecs == 10 and opt.param_groups[0]["lr"] == 0.1


def _regression(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(256, 6, generator=g) * torch.tensor([30.0, 10.0, 3.0, 1.0, 0.3, 0.1])
    y = torch.tanh(X @ torch.randn(6, 1, generator=g)) + 0.1 * torch.randn(256, 1, generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    return X.double(), y.double(), model


def _batches(seed, count, n=256, b=32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, n, (b,), generator=g) for _ in range(count)]


def _run(model, opt, X, y, batches):
    losses = []
    for i in batches:
        losses.append(float(opt.step(lambda i=i: ((model(X[i]) - y[i]) ** 2).mean())))
    return losses


def test_state_dict_round_trip_resumes_the_same_iterates():
    X, y, model = _regression()
    opt = SketchySGD(
        model.parameters(), rank=6, update_every=3, momentum=0.5, weight_decay=1e-3, seed=3
    )
    first, second = _batches(1, 7), _batches(2, 8)
    _run(model, opt, X, y, first)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    losses = _run(model, opt, X, y, second)
    # a fresh model and optimizer, loaded from the checkpoint, take the same steps
    _, _, model2 = _regression(seed=5)  # other initial weights: all must come from the checkpoint
    model2.load_state_dict(saved_model)
    opt2 = SketchySGD(
        model2.parameters(), rank=6, update_every=3, momentum=0.5, weight_decay=1e-3, seed=0
    )
    opt2.load_state_dict(saved_opt)
    losses2 = _run(model2, opt2, X, y, second)
    assert losses2 == losses
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    assert opt2.num_matvecs == opt.num_matvecs and opt2.history == opt.history


def test_load_refuses_a_plain_optimizer_state():
    X, y, model = _regression()
    opt = SketchySGD(model.parameters(), seed=0)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not written by SketchySGD"):
        opt.load_state_dict(sgd.state_dict())


def test_closure_that_calls_backward_is_refused():
    X, y, model = _regression()
    opt = SketchySGD(model.parameters(), seed=0)

    def closure():
        loss = ((model(X) - y) ** 2).mean()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="closure called backward"):
        opt.step(closure)


def test_closure_must_return_a_differentiable_scalar():
    X, y, model = _regression()
    opt = SketchySGD(model.parameters(), seed=0)
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()
    with pytest.raises(ValueError, match="scalar tensor"):
        opt.step(lambda: ((model(X) - y) ** 2).mean().item())
    with pytest.raises(ValueError, match="scalar tensor"):
        opt.step(lambda: (model(X) - y) ** 2)

    def no_graph():
        with torch.no_grad():
            return ((model(X) - y) ** 2).mean()

    with pytest.raises(ValueError, match="no gradient graph"):
        opt.step(no_graph)


def test_hessian_batch_callable_and_operator_agree():
    """Sketching a larger batch through a closure or through a HessianOperator: same step."""
    X, y, model = _regression()
    big = (X[:128], y[:128])
    start = copy.deepcopy(model.state_dict())
    i = torch.arange(200, 232)

    def step_with(hessian_batch):
        model.load_state_dict(start)
        opt = SketchySGD(model.parameters(), rank=6, hessian_batch=hessian_batch, seed=0)
        opt.step(lambda: ((model(X[i]) - y[i]) ** 2).mean())
        return [p.detach().clone() for p in model.parameters()], opt

    a, opt_a = step_with(lambda: ((model(big[0]) - big[1]) ** 2).mean())
    b, opt_b = step_with(hs.HessianOperator(model, nn.MSELoss(), big))
    for p, q in zip(a, b, strict=True):
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-12)
    assert opt_a.num_matvecs == opt_b.num_matvecs
    with pytest.raises(ValueError, match="same parameters"):
        op = hs.HessianOperator(model, nn.MSELoss(), big)
        SketchySGD(model[0].parameters(), hessian_batch=op)


def test_noise_between_batches_is_measured_and_used():
    """The fresh-batch check raises L above the sketched batch's, and the ratio carries over."""
    X, y, model = _regression()
    opt = SketchySGD(model.parameters(), rank=4, update_every=5, lr_checks=2, seed=0)
    _run(model, opt, X, y, _batches(3, 11))
    refreshes = [r for r in opt.history if r["kind"] == "refresh"]
    checks = [r for r in opt.history if r["kind"] == "check"]
    assert len(refreshes) == 3 and len(checks) == 4
    for c in checks:
        assert c["L"] >= c["estimate"] * (1 - 1e-12)  # never below a measured value
        assert c["lr"] == pytest.approx(0.5 / c["L"])
    first_ratio = max(checks[0]["ratio"], checks[1]["ratio"])
    assert refreshes[1]["noise"] == pytest.approx(first_ratio)
    assert refreshes[1]["L"] == pytest.approx(refreshes[1]["estimate"] * first_ratio)


def test_defaults_train_an_ill_conditioned_regression():
    """Raw features spanning 300x in scale: defaults drive the loss down and never blow up."""
    X, y, model = _regression()
    opt = SketchySGD(model.parameters(), update_every=8, seed=0)
    losses = _run(model, opt, X, y, _batches(4, 60))
    assert all(np.isfinite(losses))
    full = float(((model(X) - y) ** 2).mean().detach())
    assert full < 0.2 * losses[0]


def test_bad_settings_are_refused():
    x = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="lr must be"):
        SketchySGD([x], lr="fast")
    with pytest.raises(ValueError, match="rank"):
        SketchySGD([x], rank=0)
    with pytest.raises(ValueError, match="momentum"):
        SketchySGD([x], momentum=1.0)
    with pytest.raises(TypeError, match="hessian_batch"):
        SketchySGD([x], hessian_batch=(1, 2))
    with pytest.raises(ValueError, match="mix dtypes"):
        SketchySGD([x, nn.Parameter(torch.zeros(2, dtype=torch.float64))])


def test_reachable_as_hs_optim():
    assert hs.optim.SketchySGD is SketchySGD is hs.SketchySGD


def test_ggn_as_the_sketched_curvature_where_the_hessian_is_indefinite():
    """hessian_batch=GGNOperator: the preconditioner holds the (PSD) GGN, not the Hessian."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(64, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (64,))
    criterion = nn.CrossEntropyLoss()
    ggn = hs.GGNOperator(model, criterion, (x, y))
    n = ggn.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    H = hs.HessianOperator(model, criterion, (x, y)).matmat(eye)
    assert float(torch.linalg.eigvalsh(H)[0]) < -1e-6  # the Hessian is indefinite here
    G = ggn.matmat(eye)
    full = hs.optim.NystromPreconditioner.from_operator(ggn, rank=n, seed=0)
    approx = full.approximation(eye)
    assert torch.allclose(approx, G, atol=1e-8 * float(torch.linalg.matrix_norm(G, ord=2)))
    opt = SketchySGD(model.parameters(), rank=10, hessian_batch=ggn, update_every=5, seed=0)
    losses = [float(opt.step(lambda: criterion(model(x), y)))]
    top = torch.linalg.eigvalsh(G)[-10:].flip(0)
    assert bool((opt.preconditioner.eigenvalues <= top * (1 + 1e-8) + 1e-12).all())  # below G
    for _ in range(10):
        losses.append(float(opt.step(lambda: criterion(model(x), y))))
    assert losses[-1] < losses[0] and opt.num_rejected == 0
