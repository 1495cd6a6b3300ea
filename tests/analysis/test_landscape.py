"""loss_landscape: values, batching, restoration of the parameters, direction kinds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hessian_spectra.analysis.landscape import loss_landscape, random_directions
from hessian_spectra.operators import select_parameters
from hessian_spectra.results import LandscapeResult, load_result


def _regression(seed: int = 0, n: int = 40, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(1, generator=g, dtype=torch.float64))
    return model, x, y


def _bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {f"p:{n}": p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"b:{n}": b.detach().clone() for n, b in model.named_buffers()})
    return state


def _assert_same(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    now = _snapshot(model)
    assert now.keys() == before.keys()
    for key in before:
        assert torch.equal(now[key], before[key]), f"{key} changed"


def test_linear_regression_curve_is_the_exact_quadratic():
    # MSE of a linear model is quadratic in the parameters: L(a) = L0 + a g.d + a^2 d^T H d / 2
    # with H = 2/N [x 1]^T [x 1]; the landscape must reproduce it to rounding.
    model, x, y = _regression()
    d = torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = loss_landscape(model, nn.MSELoss(), (x, y), d, span=2.0, steps=9, slopes=True)
    X = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    H = 2.0 / len(x) * X.T @ X
    # the flat order is weight (5) then bias (1), as in named_parameters
    r = X @ torch.cat([model.weight.detach().ravel(), model.bias.detach()]) - y[:, 0]
    g = 2.0 / len(x) * X.T @ r
    L0 = float((r**2).mean())
    a = res.coordinates[0]
    expect = L0 + a * float(g @ d) + 0.5 * a**2 * float(d @ H @ d)
    np.testing.assert_allclose(res.losses, expect, rtol=1e-12, atol=1e-12)
    assert res.origin_loss == pytest.approx(L0, rel=1e-12)
    assert res.slopes is not None and res.slopes[0] == pytest.approx(float(g @ d), rel=1e-10)
    assert res.num_evaluations == 9


def test_plane_matches_direct_evaluation_and_index_order():
    model, x, y = _regression(seed=1)
    gen = torch.Generator().manual_seed(5)
    d1 = torch.randn(6, generator=gen, dtype=torch.float64)
    d2 = torch.randn(6, generator=gen, dtype=torch.float64)
    res = loss_landscape(
        model, nn.MSELoss(), (x, y), [d1, d2], span=[(-1.0, 1.0), (0.0, 0.5)], steps=[5, 3]
    )
    assert res.losses.shape == (5, 3)
    w0 = torch.cat([model.weight.detach().ravel(), model.bias.detach()])
    for i, a in enumerate(res.coordinates[0]):
        for j, b in enumerate(res.coordinates[1]):
            w = w0 + a * d1 + b * d2
            direct = float(((x @ w[:5] + w[5] - y[:, 0]) ** 2).mean())
            assert res.losses[i, j] == pytest.approx(direct, rel=1e-12)


def test_batches_are_weighted_by_their_size():
    model, x, y = _regression(seed=2, n=37)
    d = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    one = loss_landscape(model, nn.MSELoss(), (x, y), d, span=1.0, steps=5)
    batches = [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])]  # last one short
    many = loss_landscape(model, nn.MSELoss(), batches, d, span=1.0, steps=5)
    np.testing.assert_allclose(many.losses, one.losses, rtol=1e-12)
    assert many.num_evaluations == 15


def test_dict_batches_are_weighted_by_their_leading_dimension():
    # loss_fn returns only the mean: a dict batch weighs its number of samples (the leading
    # dimension its tensors share), so uneven dict batches give the full-data mean loss
    model, x, y = _regression(seed=6, n=37)
    d = torch.randn(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss_fn(m, batch):
        return nn.functional.mse_loss(m(batch["x"]), batch["y"])

    one = loss_landscape(model, nn.MSELoss(), (x, y), d, span=1.0, steps=5)
    batches = [{"x": x[:30], "y": y[:30]}, {"x": x[30:], "y": y[30:]}]  # 30 and 7 samples
    many = loss_landscape(model, data=batches, directions=d, span=1.0, steps=5, loss_fn=loss_fn)
    np.testing.assert_allclose(many.losses, one.losses, rtol=1e-12)
    assert many.origin_loss == pytest.approx(one.origin_loss, rel=1e-12)
    # a lone dict is one batch
    lone = loss_landscape(
        model, data={"x": x, "y": y}, directions=d, span=1.0, steps=5, loss_fn=loss_fn
    )
    np.testing.assert_allclose(lone.losses, one.losses, rtol=1e-12)


def test_dict_batch_tensors_that_disagree_are_refused():
    model, x, y = _regression(seed=6, n=12)
    d = torch.ones(6, dtype=torch.float64)

    def loss_fn(m, batch):
        return nn.functional.mse_loss(m(batch["x"]), batch["y"][: len(batch["x"])])

    batch = {"x": x[:6], "y": y}  # 6 against 12 samples: no weight rule applies
    with pytest.raises(ValueError, match=r"disagree.*\(mean_loss, num_samples\)"):
        loss_landscape(model, data=[batch], directions=d, steps=3, loss_fn=loss_fn)

    def counted(m, batch):
        return loss_fn(m, batch), 6

    res = loss_landscape(model, data=[batch], directions=d, steps=3, loss_fn=counted)
    assert res.losses.shape == (3,)


def test_dict_batches_are_moved_to_the_parameters_dtype():
    # a float64 model, float32 inputs in dict batches: the floating tensors are cast to the
    # model's dtype (integer ones keep theirs), so the landscape is the one at the rounded inputs
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 4, generator=g)  # float32
    y = torch.randint(0, 3, (20,), generator=g)
    seen = []

    def loss_fn(m, batch):
        seen.append((batch["x"].dtype, batch["y"].dtype))
        return nn.functional.cross_entropy(m(batch["x"]), batch["y"])

    d = torch.randn(43, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    res = loss_landscape(
        model,
        data=[{"x": x[:12], "y": y[:12]}, {"x": x[12:], "y": y[12:]}],
        directions=d,
        span=0.5,
        steps=3,
        loss_fn=loss_fn,
    )
    assert set(seen) == {(torch.float64, torch.int64)}
    ref = loss_landscape(model, nn.CrossEntropyLoss(), (x.double(), y), d, span=0.5, steps=3)
    np.testing.assert_allclose(res.losses, ref.losses, rtol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_batches_are_moved_to_the_model_device():
    model, x, y = _regression(seed=7)
    d = torch.randn(6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = loss_landscape(model, nn.MSELoss(), (x, y), d, span=1.0, steps=5)
    cuda = model.to("cuda")

    def loss_fn(m, batch):
        assert batch["x"].is_cuda and batch["y"].is_cuda
        return nn.functional.mse_loss(m(batch["x"]), batch["y"])

    res = loss_landscape(
        cuda, data={"x": x, "y": y}, directions=d, span=1.0, steps=5, loss_fn=loss_fn
    )
    np.testing.assert_allclose(res.losses, ref.losses, rtol=1e-10)
    crit = loss_landscape(
        cuda, nn.MSELoss(), [(x[:20], y[:20]), (x[20:], y[20:])], d, span=1.0, steps=5
    )
    np.testing.assert_allclose(crit.losses, ref.losses, rtol=1e-10)


def test_criterion_keyword_and_loss_alias():
    model, x, y = _regression(seed=8)
    d = torch.randn(6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    positional = loss_landscape(model, nn.MSELoss(), (x, y), d, span=1.0, steps=5)
    by_name = loss_landscape(
        model, criterion=nn.MSELoss(), data=(x, y), directions=d, span=1.0, steps=5
    )
    alias = loss_landscape(model, loss=nn.MSELoss(), data=(x, y), directions=d, span=1.0, steps=5)
    np.testing.assert_array_equal(by_name.losses, positional.losses)
    np.testing.assert_array_equal(alias.losses, positional.losses)
    with pytest.raises(ValueError, match="not both"):
        loss_landscape(model, nn.MSELoss(), (x, y), d, loss=nn.MSELoss())
    with pytest.raises(ValueError, match="exactly one"):
        loss_landscape(model, data=(x, y), directions=d)


def test_parameters_and_buffers_restored_bit_for_bit():
    # train mode (asked for): every evaluation updates BatchNorm's running statistics
    model = _bn_net().train()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    before = _snapshot(model)
    res = loss_landscape(
        model, nn.CrossEntropyLoss(), (x, y), "random", span=0.7, steps=4, allow_train_mode=True
    )
    assert res.losses.shape == (4, 4)
    assert np.ptp(res.losses) > 0  # the parameters did move during the evaluation
    _assert_same(model, before)
    assert model.training


def test_parameters_restored_when_an_evaluation_raises():
    model = _bn_net(1).eval()
    x = torch.randn(8, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    before = _snapshot(model)
    calls = {"n": 0}
    seen: list[torch.Tensor] = []

    def flaky(m: nn.Module, batch):
        calls["n"] += 1
        seen.append(m[0].weight.detach().clone())
        if calls["n"] == 6:
            raise RuntimeError("simulated failure in the middle of the grid")
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    with pytest.raises(RuntimeError, match="simulated failure"):
        loss_landscape(model, None, (x, y), "random", span=1.0, steps=5, loss_fn=flaky)
    # the failure happened while the weights were perturbed ...
    assert not torch.equal(seen[-1], before["p:0.weight"])
    # ... and still every parameter and buffer is back exactly
    _assert_same(model, before)


def test_dict_directions_and_parameter_subset():
    model = _bn_net(2).eval()
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    d = {"3.weight": torch.ones(3, 8, dtype=torch.float64)}
    res = loss_landscape(model, nn.CrossEntropyLoss(), (x, y), d, span=0.5, steps=3)
    assert res.param_names == [n for n, _ in model.named_parameters()]
    # with only the last layer selected, a flat direction has that layer's size
    sub = loss_landscape(
        model,
        nn.CrossEntropyLoss(),
        (x, y),
        torch.ones(27, dtype=torch.float64),
        span=0.5,
        steps=3,
        params=r"^3\.",
    )
    assert sub.param_names == ["3.weight", "3.bias"]
    # the same direction on the weight only: the bias part is zero in the dict case
    flat = torch.cat([torch.ones(24), torch.zeros(3)]).double()
    again = loss_landscape(
        model, nn.CrossEntropyLoss(), (x, y), flat, span=0.5, steps=3, params=r"^3\."
    )
    np.testing.assert_allclose(again.losses, res.losses, rtol=1e-13)


def test_random_directions_are_filter_normalized():
    model = _bn_net(3)
    (d,) = random_directions(model, 1, seed=7)
    for name, p in model.named_parameters():
        if p.ndim <= 1:
            assert torch.count_nonzero(d[name]) == 0, name  # biases and BatchNorm get zero
        else:
            dn = d[name].reshape(p.shape[0], -1).norm(dim=1)
            wn = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(dn, wn, rtol=1e-12, atol=0)
    (e,) = random_directions(model, 1, seed=7)
    assert all(torch.equal(d[k], e[k]) for k in d)  # seeded
    (u,) = random_directions(model, 1, seed=7, filter_normalize=False)
    total = torch.cat([t.ravel() for t in u.values()]).norm()
    assert float(total) == pytest.approx(1.0, rel=1e-12)


def test_gradient_direction_descends():
    model, x, y = _regression(seed=4)
    res = loss_landscape(model, nn.MSELoss(), (x, y), "gradient", span=0.05, steps=5)
    assert res.ndim == 1 and res.kind == "gradient"
    # a small step against the gradient lowers the loss, along it raises it
    assert res.losses[0] < res.origin_loss < res.losses[-1]
    assert res.direction_norms[0] == pytest.approx(1.0, rel=1e-12)
    two = loss_landscape(model, nn.MSELoss(), (x, y), "gradient", dims=2, span=0.05, steps=3)
    assert two.losses.shape == (3, 3)


def test_json_round_trip(tmp_path):
    model, x, y = _regression(seed=5)
    d = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = loss_landscape(model, nn.MSELoss(), (x, y), d, span=1.0, steps=3)
    back = load_result(res.to_json(tmp_path / "land.json"))
    assert isinstance(back, LandscapeResult)
    np.testing.assert_array_equal(back.losses, res.losses)
    assert back.ndim == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss_fn": lambda m, b: m(b[0]).sum()}, ValueError, "exactly one"),
        ({"directions": torch.ones(5)}, ValueError, r"shape \(6,\)"),
        ({"directions": torch.zeros(6)}, ValueError, "zero"),
        ({"directions": "sideways"}, ValueError, "unknown directions"),
        ({"span": -1.0}, ValueError, "span"),
        ({"steps": 1}, ValueError, "at least 2"),
        ({"params": "nothing-matches"}, ValueError, "matches no"),
    ],
)
def test_bad_input_is_refused(kwargs, error, match):
    model, x, y = _regression()
    args = {"directions": torch.ones(6, dtype=torch.float64), "span": 1.0, "steps": 3}
    args.update(kwargs)
    before = _snapshot(model)
    with pytest.raises(error, match=match):
        loss_landscape(model, nn.MSELoss(), (x, y), **args)
    _assert_same(model, before)


def test_generator_data_is_refused():
    model, x, y = _regression()
    with pytest.raises(TypeError, match="one-shot"):
        loss_landscape(model, nn.MSELoss(), ((x, y) for _ in range(1)), torch.ones(6).double())


def test_select_parameters_by_module():
    model = _bn_net()
    chosen = select_parameters(model, [model[3]])
    assert [n for n, _ in chosen] == ["3.weight", "3.bias"]


def test_eigen_directions_have_their_eigenvalue_as_curvature():
    # a float64 MLP: along the top eigenvector v1 the second difference of the loss at the
    # origin is v1^T H v1 = lambda_1, computed here from the dense Hessian
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(50, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (50,))
    params = list(model.parameters())
    g = torch.cat(
        [
            t.reshape(-1)
            for t in torch.autograd.grad(
                nn.functional.cross_entropy(model(x), y), params, create_graph=True
            )
        ]
    )
    H = torch.stack(
        [
            torch.cat([t.reshape(-1) for t in torch.autograd.grad(g[i], params, retain_graph=True)])
            for i in range(g.numel())
        ]
    ).detach()
    lam = np.sort(np.linalg.eigvalsh(((H + H.T) / 2).numpy()))[::-1]
    h = 1e-3
    res = loss_landscape(
        model, nn.CrossEntropyLoss(), (x, y), "eigen", dims=1, span=h, steps=3, seed=0
    )
    assert res.kind == "eigen" and res.num_matvecs > 0
    np.testing.assert_allclose(res.curvatures, lam[:1], rtol=1e-6)
    second = (res.losses[0] - 2 * res.losses[1] + res.losses[2]) / h**2
    assert second == pytest.approx(lam[0], rel=1e-4)
    plane = loss_landscape(model, nn.CrossEntropyLoss(), (x, y), "eigen", span=h, steps=3)
    np.testing.assert_allclose(plane.curvatures, lam[:2], rtol=1e-6)
    assert plane.direction_norms == pytest.approx([1.0, 1.0], rel=1e-10)


def test_train_mode_batchnorm_or_dropout_is_refused():
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    torch.manual_seed(0)
    dropout = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 3)).double().train()
    for model in (_bn_net().train(), dropout):
        with pytest.raises(RuntimeError, match=r"model\.eval\(\).*allow_train_mode=True"):
            loss_landscape(model, nn.CrossEntropyLoss(), (x, y), "random", span=0.5, steps=3)
        with pytest.raises(RuntimeError, match="allow_train_mode=True"):
            loss_landscape(model, nn.CrossEntropyLoss(), (x, y), "eigen", span=0.5, steps=3)
    # in eval mode two identical calls agree to the bit
    a = loss_landscape(dropout.eval(), nn.CrossEntropyLoss(), (x, y), "random", span=0.5, steps=3)
    b = loss_landscape(dropout, nn.CrossEntropyLoss(), (x, y), "random", span=0.5, steps=3)
    np.testing.assert_array_equal(a.losses, b.losses)


def test_each_submodule_keeps_its_own_mode():
    """A frozen eval-mode BatchNorm inside a train-mode model stays in eval mode."""
    model = _bn_net().train()
    model[1].eval()  # frozen statistics
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    loss_landscape(model, nn.CrossEntropyLoss(), (x, y), "random", span=0.5, steps=3)
    assert model.training and model[0].training and not model[1].training


def test_ignored_targets_weigh_as_for_the_hessian():
    """The origin loss over two unequal batches is the full-data mean, ignored labels excluded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(30, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    y[:10] = -100
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    crit = nn.CrossEntropyLoss()
    res = loss_landscape(model, crit, batches, "random", span=0.5, steps=3)
    assert res.origin_loss == pytest.approx(float(crit(model(x), y).detach()), rel=1e-12)
    dict_batches = [{"x": bx, "y": by} for bx, by in batches]
    res = loss_landscape(
        model,
        None,
        dict_batches,
        "random",
        span=0.5,
        steps=3,
        loss_fn=lambda m, b: (crit(m(b["x"]), b["y"]), int((b["y"] != -100).sum())),
    )
    assert res.origin_loss == pytest.approx(float(crit(model(x), y).detach()), rel=1e-12)
