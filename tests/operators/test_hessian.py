"""HessianOperator against dense Hessians built by double backward on unit vectors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hessian_spectra.operators.hessian import HessianOperator

N = 30  # samples


def dense_hessian(loss_of: callable, params: list[torch.Tensor]) -> torch.Tensor:
    """Row i = d(grad_i)/d(params), one backward per row; checked symmetric."""
    loss = loss_of()
    g = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([t.reshape(-1) for t in g])
    rows = []
    for i in range(flat.numel()):
        r = torch.autograd.grad(flat[i], params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (z if z is not None else torch.zeros_like(p)).reshape(-1)
                    for z, p in zip(r, params, strict=True)
                ]
            )
        )
    H = torch.stack(rows).detach()
    scale = H.abs().max().item()
    assert scale > 0
    eps = torch.finfo(H.dtype).eps
    assert (H - H.T).abs().max().item() <= 1e3 * eps * scale, "reference Hessian not symmetric"
    return H


def rel(A: torch.Tensor, B: torch.Tensor) -> float:
    return ((A.double() - B.double()).norm() / B.double().norm()).item()


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.LayerNorm(6), nn.Linear(6, 3))


def make_cnn() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(48, 3),
    )
    bn = model[1]
    with torch.no_grad():  # non-trivial eval-mode statistics and affine parameters
        bn.running_mean.copy_(torch.randn(3) * 0.3)
        bn.running_var.copy_(torch.rand(3) + 0.5)
        bn.weight.copy_(torch.rand(3) + 0.5)
        bn.bias.copy_(torch.randn(3) * 0.1)
    return model.eval()


def make_data(shape: tuple[int, ...], dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(7)
    x = torch.randn((N, *shape), generator=g, dtype=dtype)
    y = torch.randint(0, 3, (N,), generator=g)
    return x, y


CE = nn.CrossEntropyLoss()


class Problem:
    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x, self.y = model, x, y
        self.params = list(model.parameters())
        self.names = [n for n, _ in model.named_parameters()]
        self.H = dense_hessian(lambda: CE(model(x), y), self.params)
        self.n = self.H.shape[0]


@pytest.fixture(scope="module")
def mlp() -> Problem:
    return Problem(make_mlp().double(), *make_data((5,)))


@pytest.fixture(scope="module")
def cnn() -> Problem:
    return Problem(make_cnn().double(), *make_data((2, 4, 4)))


def full(op: HessianOperator) -> torch.Tensor:
    return op.matmat(torch.eye(op.shape[0], dtype=op.dtype))


# ----------------------------------------------------------- against dense


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_matmat_equals_dense_hessian(name, request):
    p = request.getfixturevalue(name)
    op = HessianOperator(p.model, CE, (p.x, p.y))
    assert op.shape == (p.n, p.n) and op.dtype == torch.float64
    assert rel(full(op), p.H) < 1e-10
    # a random block and a single vector
    V = torch.randn(p.n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert rel(op.matmat(V), p.H @ V) < 1e-10
    assert rel(op.matvec(V[:, 0]), p.H @ V[:, 0]) < 1e-10
    assert rel(op @ V[:, 1], p.H @ V[:, 1]) < 1e-10


def test_float32_model_within_float32_accuracy(cnn):
    model32 = copy.deepcopy(cnn.model).float()
    model64 = copy.deepcopy(model32).double()  # exactly the float32 weights
    x32 = cnn.x.float()
    H = dense_hessian(lambda: CE(model64(x32.double()), cnn.y), list(model64.parameters()))
    op = HessianOperator(model32, CE, (x32, cnn.y))
    assert op.dtype == torch.float32
    out = full(op)
    assert out.dtype == torch.float32
    err = rel(out, H)
    assert err < 1e-5
    assert err > 0  # it really ran in float32


def test_float64_model_casts_float32_inputs(mlp):
    op = HessianOperator(mlp.model, CE, (mlp.x.float(), mlp.y))
    # the float32 inputs are rounded, so compare with the Hessian at the rounded inputs
    x = mlp.x.float().double()
    H = dense_hessian(lambda: CE(mlp.model(x), mlp.y), mlp.params)
    assert rel(full(op), H) < 1e-10


def test_forward_over_reverse_matches_double_backward(mlp, cnn):
    for p in (mlp, cnn):
        op = HessianOperator(p.model, CE, (p.x, p.y), hvp_mode="forward_over_reverse")
        V = torch.randn(p.n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        assert rel(op.matmat(V), p.H @ V) < 1e-10
        assert rel(op.matvec(V[:, 0]), p.H @ V[:, 0]) < 1e-10


# ----------------------------------------------------------- data handling


def test_short_last_batch_is_weighted_by_its_size(cnn):
    batches = [(cnn.x[i : i + 8], cnn.y[i : i + 8]) for i in range(0, N, 8)]  # 8, 8, 8, 6
    assert len(batches[-1][0]) == 6
    op = HessianOperator(cnn.model, CE, batches)
    assert rel(full(op), cnn.H) < 1e-10
    # an unweighted mean of batch Hessians would differ visibly
    per = [full(HessianOperator(cnn.model, CE, b)) for b in batches]
    assert rel(sum(per) / len(per), cnn.H) > 1e-4


def test_dataloader_yielding_lists(mlp):
    loader = DataLoader(TensorDataset(mlp.x, mlp.y), batch_size=7, shuffle=False)
    assert isinstance(next(iter(loader)), list)
    op = HessianOperator(mlp.model, CE, loader)
    assert rel(full(op), mlp.H) < 1e-10
    # re-iterated on every product
    assert rel(full(op), mlp.H) < 1e-10


@settings(max_examples=8, deadline=None)
@given(st.lists(st.integers(1, N - 1), max_size=5, unique=True))
def test_any_split_into_batches_gives_the_same_hessian(mlp, cuts):
    edges = [0, *sorted(cuts), N]
    batches = [(mlp.x[a:b], mlp.y[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    op = HessianOperator(mlp.model, CE, batches)
    V = torch.randn(mlp.n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert rel(op.matmat(V), mlp.H @ V) < 1e-10


def test_loss_fn_with_count_equals_criterion(cnn):
    batches = [(cnn.x[:20], cnn.y[:20]), (cnn.x[20:], cnn.y[20:])]

    def loss_fn(model, batch):
        x, y = batch
        return CE(model(x), y), len(y)

    op = HessianOperator(cnn.model, loss_fn=loss_fn, data=batches)
    assert rel(full(op), cnn.H) < 1e-10


def test_loss_fn_count_is_the_weight(mlp):
    # the closure's count, not len(batch[0]), weights the batches
    b1, b2 = (mlp.x[:10], mlp.y[:10]), (mlp.x[10:], mlp.y[10:])

    def loss_fn(model, batch):
        x, y = batch
        return CE(model(x), y), 3.0 if len(y) == 10 else 1.0

    op = HessianOperator(mlp.model, loss_fn=loss_fn, data=[b1, b2])
    H1 = full(HessianOperator(mlp.model, CE, b1))
    H2 = full(HessianOperator(mlp.model, CE, b2))
    assert rel(full(op), (3 * H1 + H2) / 4) < 1e-10


def test_loss_fn_with_dict_batches(mlp):
    batches = [{"x": mlp.x[:16], "y": mlp.y[:16]}, {"x": mlp.x[16:], "y": mlp.y[16:]}]
    op = HessianOperator(mlp.model, loss_fn=lambda m, b: CE(m(b["x"]), b["y"]), data=batches)
    assert rel(full(op), mlp.H) < 1e-10
    one = HessianOperator(
        mlp.model, loss_fn=lambda m, b: CE(m(b["x"]), b["y"]), data={"x": mlp.x, "y": mlp.y}
    )
    assert rel(full(one), mlp.H) < 1e-10


def test_gradient_constant_in_parameters_gives_zero_block(mlp):
    model = copy.deepcopy(mlp.model)
    model.register_parameter("offset", nn.Parameter(torch.ones(2, dtype=torch.float64)))

    def loss_fn(m, batch):
        x, y = batch
        return CE(m(x), y) + m.offset.sum()  # linear in offset: zero curvature

    op = HessianOperator(model, loss_fn=loss_fn, data=(mlp.x, mlp.y))
    assert op.param_names[0] == "offset"  # a module's own parameters come first
    H = full(op)
    assert torch.equal(H[:2], torch.zeros_like(H[:2]))
    assert torch.equal(H[:, :2], torch.zeros_like(H[:, :2]))
    assert rel(H[2:, 2:], mlp.H) < 1e-10


# ----------------------------------------------------------- parameter subsets


def sub_block(p: Problem, names: list[str]) -> torch.Tensor:
    idx, start = [], 0
    for name, t in zip(p.names, p.params, strict=True):
        if name in names:
            idx.extend(range(start, start + t.numel()))
        start += t.numel()
    i = torch.tensor(idx)
    return p.H[i][:, i]


@pytest.mark.parametrize(
    "spec,names",
    [
        (["4.weight", "1.bias"], ["1.bias", "4.weight"]),
        (r"weight$", ["0.weight", "1.weight", "4.weight"]),
        ("module:1", ["1.weight", "1.bias"]),
        ("modules:0,4", ["0.weight", "0.bias", "4.weight", "4.bias"]),
        ("tensors", ["0.bias"]),
    ],
)
def test_parameter_subsets_equal_the_sub_block(cnn, spec, names):
    if spec == "module:1":
        spec = cnn.model[1]
    elif spec == "modules:0,4":
        spec = [cnn.model[4], cnn.model[0]]
    elif spec == "tensors":
        spec = [cnn.model[0].bias]
    op = HessianOperator(cnn.model, CE, (cnn.x, cnn.y), params=spec)
    assert op.param_names == names  # model order, whatever the order asked
    assert rel(full(op), sub_block(cnn, names)) < 1e-10


def test_blocks_and_unflatten(cnn):
    op = HessianOperator(cnn.model, CE, (cnn.x, cnn.y))
    assert list(op.blocks) == op.param_names == cnn.names
    flat = torch.cat([p.detach().reshape(-1) for p in cnn.params])
    parts = op.unflatten(flat)
    for (name, p), s in zip(cnn.model.named_parameters(), op.blocks.values(), strict=True):
        assert torch.equal(parts[name], p.detach())
        assert s.stop - s.start == p.numel()
    assert op.blocks[cnn.names[-1]].stop == op.shape[0]
    assert torch.equal(op.flatten(parts), flat)
    assert torch.equal(op.flatten(list(parts.values())), flat)
    with pytest.raises(ValueError, match="flat vector"):
        op.unflatten(flat[:-1])


# ----------------------------------------------------------- contract


def test_to_scipy_and_num_matvecs(mlp):
    op = HessianOperator(mlp.model, CE, (mlp.x, mlp.y))
    assert op.num_matvecs == 0
    op.matmat(torch.ones(mlp.n, 3, dtype=torch.float64))
    assert op.num_matvecs == 3
    op.matvec(torch.ones(mlp.n, dtype=torch.float64))
    assert op.num_matvecs == 4
    A = op.to_scipy()
    rng = np.random.default_rng(0)
    v, M = rng.standard_normal(mlp.n), rng.standard_normal((mlp.n, 2))
    Hn = mlp.H.numpy()
    np.testing.assert_allclose(A.matvec(v), Hn @ v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(A.matmat(M), Hn @ M, rtol=1e-10, atol=1e-12)
    assert op.num_matvecs == 7


def test_wrong_vector_size_or_dtype(mlp):
    op = HessianOperator(mlp.model, CE, (mlp.x, mlp.y))
    with pytest.raises(ValueError, match="shape"):
        op.matvec(torch.ones(mlp.n + 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="float64"):
        op.matvec(torch.ones(mlp.n, dtype=torch.float32))
    assert op.num_matvecs == 0


def test_distributed_and_determinism_options(mlp):
    op = HessianOperator(mlp.model, CE, (mlp.x, mlp.y))
    # the first product is checked by default (see test_deterministic.py)
    assert op.distributed == "auto" and op.check_deterministic == "first"
    assert op.is_distributed is False  # no process group here
    op = HessianOperator(mlp.model, CE, (mlp.x, mlp.y), distributed=False)
    assert op.distributed is False
    op = HessianOperator(mlp.model, CE, (mlp.x, mlp.y), check_deterministic=True)
    assert op.num_matvecs == 0  # the check's two products are not counted
    with pytest.raises(ValueError, match="process group"):
        HessianOperator(mlp.model, CE, (mlp.x, mlp.y), distributed=True)
    with pytest.raises(ValueError, match="distributed"):
        HessianOperator(mlp.model, CE, (mlp.x, mlp.y), distributed="yes")


# ----------------------------------------------------------- bad input


def test_exactly_one_of_criterion_and_loss_fn(mlp):
    with pytest.raises(ValueError, match="exactly one.*neither"):
        HessianOperator(mlp.model, data=(mlp.x, mlp.y))
    with pytest.raises(ValueError, match="exactly one.*both"):
        HessianOperator(mlp.model, CE, (mlp.x, mlp.y), loss_fn=lambda m, b: CE(m(b[0]), b[1]))


def test_one_shot_iterators_are_refused(mlp):
    gen = ((mlp.x[i : i + 10], mlp.y[i : i + 10]) for i in range(0, N, 10))
    with pytest.raises(TypeError, match="one-shot iterator.*list"):
        HessianOperator(mlp.model, CE, gen)
    with pytest.raises(TypeError, match="one-shot iterator"):
        HessianOperator(mlp.model, CE, iter([(mlp.x, mlp.y)]))


def test_empty_data(mlp):
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(mlp.model, CE, [])
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(mlp.model, CE, DataLoader(TensorDataset(mlp.x[:0], mlp.y[:0])))
    with pytest.raises(ValueError, match="pass data"):
        HessianOperator(mlp.model, CE)

    class Nothing:  # re-iterable, no len, yields nothing
        def __iter__(self):
            return iter(())

    with pytest.raises(ValueError, match="no length.*max_batches"):
        HessianOperator(mlp.model, CE, Nothing())
    op = HessianOperator(mlp.model, CE, Nothing(), max_batches=4)
    with pytest.raises(ValueError, match="no batches"):
        op.matvec(torch.ones(mlp.n, dtype=torch.float64))


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(6), nn.Dropout(0.5)])
def test_train_mode_with_batchnorm_or_dropout_is_refused(mlp, layer):
    model = nn.Sequential(nn.Linear(5, 6), layer, nn.Tanh(), nn.Linear(6, 3)).double()
    model.train()
    with pytest.raises(RuntimeError, match=r"model\.eval\(\).*allow_train_mode=True"):
        HessianOperator(model, CE, (mlp.x, mlp.y))
    # switching to train mode after construction is caught at the next product too
    op = HessianOperator(model.eval(), CE, (mlp.x, mlp.y))
    model.train()
    with pytest.raises(RuntimeError, match=type(layer).__name__):
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))


def test_train_mode_without_such_layers_is_fine(mlp):
    mlp.model.train()  # Linear / Tanh / LayerNorm: no mode dependence
    try:
        op = HessianOperator(mlp.model, CE, (mlp.x, mlp.y))
        assert rel(full(op), mlp.H) < 1e-10
    finally:
        mlp.model.eval()


def test_allow_train_mode_uses_batch_statistics_and_keeps_running_ones(cnn):
    model = copy.deepcopy(cnn.model).train()
    bn = model[1]
    before = {k: b.clone() for k, b in bn.named_buffers()}
    op = HessianOperator(model, CE, (cnn.x, cnn.y), allow_train_mode=True)
    Htrain = dense_hessian(lambda: CE(model(cnn.x), cnn.y), list(model.parameters()))
    for k, b in bn.named_buffers():  # restore what the reference's forward changed
        b.copy_(before[k])
    H = full(op)
    assert rel(H, Htrain) < 1e-10
    assert rel(H, cnn.H) > 1e-3  # batch statistics give a different Hessian
    for k, b in bn.named_buffers():
        assert torch.equal(b, before[k]), k


def test_non_scalar_loss(mlp):
    # a criterion that says so is refused when the operator is built (test_criteria.py)
    with pytest.raises(ValueError, match="reduction='none'.*reduction='mean'"):
        HessianOperator(mlp.model, nn.CrossEntropyLoss(reduction="none"), (mlp.x, mlp.y))
    # a loss_fn cannot say so: its per-sample losses are caught at the first product
    op = HessianOperator(
        mlp.model,
        data=(mlp.x, mlp.y),
        loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1], reduction="none"),
    )
    with pytest.raises(ValueError, match="scalar.*reduction='mean'"):
        op.matvec(torch.ones(mlp.n, dtype=torch.float64))


class WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(5, 3)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_parameters_without_gradient_are_named(mlp):
    model = WithUnused().double()
    op = HessianOperator(model, CE, (mlp.x, mlp.y))
    with pytest.raises(ValueError, match=r"\['unused.weight', 'unused.bias'\].*params="):
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))
    op = HessianOperator(model, CE, (mlp.x, mlp.y), hvp_mode="forward_over_reverse")
    with pytest.raises(ValueError, match=r"\['unused.weight', 'unused.bias'\]"):
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))
    # leaving them out works
    op = HessianOperator(model, CE, (mlp.x, mlp.y), params=r"^used\.")
    assert op.shape[0] == 18
    assert torch.isfinite(op.matvec(torch.ones(18, dtype=torch.float64))).all()


def test_nan_in_a_batch_names_the_batch(mlp):
    x = mlp.x.clone()
    x[15, 2] = float("nan")
    batches = [(x[i : i + 10], mlp.y[i : i + 10]) for i in range(0, N, 10)]
    op = HessianOperator(mlp.model, CE, batches)
    with pytest.raises(FloatingPointError, match="batch 1"):
        op.matvec(torch.ones(mlp.n, dtype=torch.float64))
    op = HessianOperator(mlp.model, CE, (mlp.x, mlp.y))
    with pytest.raises(FloatingPointError, match="input block"):
        op.matvec(torch.full((mlp.n,), float("inf"), dtype=torch.float64))


def test_bad_params_specs(mlp):
    data = (mlp.x, mlp.y)
    with pytest.raises(ValueError, match="no parameter named 'nope'"):
        HessianOperator(mlp.model, CE, data, params=["nope"])
    with pytest.raises(ValueError, match="regex"):
        HessianOperator(mlp.model, CE, data, params="^conv")
    with pytest.raises(ValueError, match="not a parameter of the model"):
        HessianOperator(mlp.model, CE, data, params=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="empty list"):
        HessianOperator(mlp.model, CE, data, params=[])
    with pytest.raises(TypeError, match="params"):
        HessianOperator(mlp.model, CE, data, params=3)
    model = copy.deepcopy(mlp.model)
    model[0].weight.requires_grad_(False)
    op = HessianOperator(model, CE, data)  # default: only trainable parameters
    assert "0.weight" not in op.param_names and op.shape[0] == mlp.n - 30
    with pytest.raises(ValueError, match=r"\['0.weight'\].*requires_grad=False"):
        HessianOperator(model, CE, data, params=["0.weight"])


def test_other_bad_arguments(mlp):
    with pytest.raises(ValueError, match="hvp_mode"):
        HessianOperator(mlp.model, CE, (mlp.x, mlp.y), hvp_mode="fast")
    with pytest.raises(TypeError, match="re-iterable"):
        HessianOperator(mlp.model, CE, TensorDataset(mlp.x, mlp.y))
    op = HessianOperator(mlp.model, CE, [(mlp.x, mlp.y, mlp.y)])
    with pytest.raises(ValueError, match=r"\(inputs, targets\).*loss_fn"):
        op.matvec(torch.ones(mlp.n, dtype=torch.float64))


class OldStyleSquare(torch.autograd.Function):
    """An autograd.Function without setup_context: fine for autograd, not for torch.func."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class ItemModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return OldStyleSquare.apply(self.lin(x))


def test_forward_over_reverse_fails_clearly(mlp):
    model = ItemModel().double()
    data = (mlp.x, mlp.y)
    v = torch.ones(18, dtype=torch.float64)
    assert torch.isfinite(HessianOperator(model, CE, data).matvec(v)).all()
    op = HessianOperator(model, CE, data, hvp_mode="forward_over_reverse")
    with pytest.raises(RuntimeError, match="hvp_mode='double_backward'"):
        op.matvec(v)
