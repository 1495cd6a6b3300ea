"""PreconditionedOperator against a dense P^-1/2 H P^-1/2 in float64, P read off the steps taken."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hessian_spectra as hs
from hessian_spectra.operators import HessianOperator, PreconditionedOperator, stability_threshold
from hessian_spectra.operators.base import DenseOperator


def make_problem(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(40, 3, dtype=torch.float64)
    y = torch.randn(40, 2, dtype=torch.float64)
    return model, (x, y)


def loss_of(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = data
    return nn.functional.mse_loss(model(x), y)


def dense_hessian(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The Hessian of the mean loss in float64 by torch.autograd.functional.hessian."""
    params = [p for p in model.parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    names = [n for n, _ in model.named_parameters()]

    def f(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, sizes)
        tensors = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        out = torch.func.functional_call(model, tensors, (data[0],))
        return nn.functional.mse_loss(out, data[1])

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    H = torch.autograd.functional.hessian(f, flat)
    assert torch.allclose(H, H.T, atol=1e-12)
    return H


def train_and_read_p(model, data, opt, steps: int, kind: str) -> torch.Tensor:
    """Take `steps` steps; read P off the last one: delta = -lr * direction / P."""
    for _ in range(steps):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        loss_of(model, data).backward()
        opt.step()
    ps = []
    for p, b in zip(model.parameters(), before, strict=True):
        g = opt.param_groups[0]
        st = opt.state[p]
        lr = g["lr"]
        if kind == "adam":
            t = float(st["step"])
            delta = p.detach() - b
            direction = st["exp_avg"] / (1 - g["betas"][0] ** t)
        elif kind == "adamw":
            t = float(st["step"])
            delta = p.detach() - b * (1 - lr * g["weight_decay"])
            direction = st["exp_avg"] / (1 - g["betas"][0] ** t)
        else:  # rmsprop and adagrad without momentum: delta = -clr * grad / P
            delta = p.detach() - b
            direction = p.grad
            if kind == "adagrad":
                lr = lr / (1 + (float(st["step"]) - 1) * g["lr_decay"])
        ps.append((-lr * direction / delta).reshape(-1))
    return torch.cat(ps)


CASES = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-6),
    "adam-amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, eps=1e-6, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, eps=1e-6),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-6),
    "rmsprop-centered": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, eps=1e-6, centered=True),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2, lr_decay=0.01, eps=1e-6),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("steps", [1, 7])
def test_equals_dense_construction_with_p_from_the_steps_taken(case, steps):
    model, data = make_problem()
    opt = CASES[case](model.parameters())
    kind = case.split("-")[0]
    P_ref = train_and_read_p(model, data, opt, steps, kind)
    op = PreconditionedOperator(HessianOperator(model, nn.MSELoss(), data), opt)
    # P is what the optimizer applied (bias correction included), to rounding
    assert torch.allclose(op.preconditioner, P_ref, rtol=1e-6), case
    D = op.preconditioner.rsqrt()
    dense = D[:, None] * dense_hessian(model, data) * D[None, :]
    got = op.matmat(torch.eye(op.shape[0], dtype=torch.float64))
    assert ((got - dense).norm() / dense.norm()).item() < 1e-12
    assert op.num_matvecs == op.shape[0]
    # its spectrum is that of P^-1 H (similar matrices)
    H = dense_hessian(model, data)
    nonsym = torch.linalg.eigvals(H / op.preconditioner[:, None]).real.sort().values
    assert torch.allclose(torch.linalg.eigvalsh(got), nonsym, rtol=1e-8, atol=1e-8)


def test_top_eigenvalue_by_lanczos_and_groups_with_their_own_eps():
    model, data = make_problem(1)
    first, last = model[0], model[2]
    opt = torch.optim.Adam(
        [{"params": first.parameters(), "eps": 1e-3}, {"params": last.parameters()}], lr=1e-2
    )
    for _ in range(5):
        opt.zero_grad()
        loss_of(model, data).backward()
        opt.step()
    H = HessianOperator(model, nn.MSELoss(), data)
    op = hs.PreconditionedOperator(H, opt)
    n0 = sum(p.numel() for p in first.parameters())
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in model.parameters()])
    corr = (1 - 0.999**5) ** 0.5
    eps = torch.tensor([1e-3] * n0 + [1e-8] * (v.numel() - n0), dtype=torch.float64)
    assert torch.allclose(op.preconditioner, v.sqrt() / corr + eps, rtol=1e-12)
    D = op.preconditioner.rsqrt()
    dense = D[:, None] * dense_hessian(model, data) * D[None, :]
    top = hs.eigsh(op, k=2, seed=0, tol=1e-9)
    exact = torch.linalg.eigvalsh(dense).flip(0)[:2].numpy()
    assert np.allclose(top.eigenvalues, exact, rtol=1e-7)


def test_a_subset_of_parameters_and_a_wrapped_optimizer():
    model, data = make_problem(2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        loss_of(model, data).backward()
        opt.step()

    class Wrapper:  # as accelerate's AcceleratedOptimizer holds the optimizer
        def __init__(self, inner):
            self.optimizer = inner

    H = HessianOperator(model, nn.MSELoss(), data, params=[model[2]])
    op = PreconditionedOperator(H, Wrapper(opt))
    assert op.shape == (12, 12) and op.optimizer_name == "Adam"
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in model[2].parameters()])
    assert torch.allclose(op.preconditioner, v.sqrt() / (1 - 0.999**3) ** 0.5 + 1e-8)
    assert "preconditioner" in op.fingerprint() and "inner" in op.fingerprint()


def test_refuses_what_has_no_preconditioner():
    model, data = make_problem()
    H = HessianOperator(model, nn.MSELoss(), data)
    with pytest.raises(TypeError, match="no diagonal preconditioner"):
        PreconditionedOperator(H, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="first optimizer.step"):
        PreconditionedOperator(H, torch.optim.Adam(model.parameters()))
    other = torch.optim.Adam(model[0].parameters())
    with pytest.raises(ValueError, match="not optimized by this Adam"):
        PreconditionedOperator(H, other)
    dense = DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="does not list its parameters"):
        PreconditionedOperator(dense, torch.optim.Adam(model.parameters()))
    w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="hold 2 numbers but the operator is 3 x 3"):
        PreconditionedOperator(dense, torch.optim.Adam([w]), params=[w])


def test_threshold_formulas():
    w = nn.Parameter(torch.zeros(3))
    assert stability_threshold(torch.optim.SGD([w], lr=0.1)).value == pytest.approx(20.0)
    th = stability_threshold(torch.optim.Adam([w], lr=1e-3))
    assert th.value == pytest.approx(38_000.0) and th.preconditioned and th.formula == "38 / lr"
    adamw = stability_threshold(torch.optim.AdamW([w], lr=2e-3, betas=(0.8, 0.999)))
    assert adamw.value == pytest.approx((2 + 1.6) / 0.2 / 2e-3)
    rms = stability_threshold(torch.optim.RMSprop([w], lr=1e-2, momentum=0.5))
    assert rms.value == pytest.approx(300.0) and rms.preconditioned
    assert stability_threshold(torch.optim.LBFGS([w])) is None
    assert stability_threshold(object()) is None
    v = nn.Parameter(torch.zeros(2))
    two_lrs = torch.optim.SGD([{"params": [w], "lr": 0.1}, {"params": [v], "lr": 0.2}])
    assert stability_threshold(two_lrs) is None
    assert stability_threshold(two_lrs, params=[v]).value == pytest.approx(10.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps, lr: torch.optim.SGD(ps, lr=lr),
        lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9),
        lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.5, dampening=0.5),
        lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9, nesterov=True),
    ],
    ids=["plain", "momentum", "dampening", "nesterov"],
)
def test_threshold_separates_stable_from_unstable_steps_on_a_quadratic(make):
    """Curvature 3% below the threshold: the iterates shrink; 3% above: they blow up."""
    lr = 0.1
    w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    threshold = stability_threshold(make([w], lr)).value
    for factor, grows in [(0.97, False), (1.03, True)]:
        x = nn.Parameter(torch.ones(1, dtype=torch.float64))
        opt = make([x], lr)
        lam = factor * threshold
        for _ in range(1000):
            opt.zero_grad()
            (0.5 * lam * x**2).sum().backward()
            opt.step()
        size = x.detach().abs().item()
        assert (not size < 1.0) == grows, (factor, size)
