"""GGNOperator against dense J^T H_out J built from the output Jacobians of each batch.

The references are built here without the operator's closed forms: J by
``torch.func.jacrev`` of the model's output, H_out by autograd of the
criterion itself with respect to the output. Float64 throughout.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

import hessian_spectra as hs
from hessian_spectra.operators.ggn import GGNOperator, output_loss
from hessian_spectra.operators.hessian import HessianOperator

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")

SIZES = (7, 13, 4)  # unequal batches
C = 3  # classes, or output width
T = 2  # positions of a sequence output
DT = torch.float64


class PerPosition(nn.Module):
    """(B, T, 3) -> (B, C, T): a head applied at every position, classes on dim 1."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).movedim(-1, 1)


def mlp(out: int = C, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, out)).to(DT)


def linear(out: int = C, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(3, out).to(DT)


def _ce_targets(g, size):
    y = torch.randint(0, C, (size,), generator=g)
    return y


def _ce_ignored(g, size):
    y = torch.randint(0, C, (size,), generator=g)
    y[::3] = -100
    return y


def _soft(g, size):
    return torch.softmax(torch.randn(size, C, generator=g, dtype=DT), 1)


def _seq_targets(g, size):
    y = torch.randint(0, C, (size, T), generator=g)
    y[::2, 0] = 7  # ignore_index=7 below
    return y


def _regression(g, size):
    return torch.randn(size, C, generator=g, dtype=DT)


def _binary(g, size):
    return (torch.rand(size, C, generator=g, dtype=DT) < 0.4).to(DT)


def _soft_binary(g, size):
    return torch.rand(size, C, generator=g, dtype=DT)


WEIGHT = torch.tensor([0.5, 2.0, 1.25], dtype=DT)
# name -> (criterion, targets(generator, size), sequence model?)
LOSSES = {
    "ce": (nn.CrossEntropyLoss(), _ce_targets, False),
    "ce_weight_ignore_smooth": (
        nn.CrossEntropyLoss(weight=WEIGHT, label_smoothing=0.1),
        _ce_ignored,
        False,
    ),
    "ce_probs": (nn.CrossEntropyLoss(label_smoothing=0.05), _soft, False),
    "ce_sequence": (nn.CrossEntropyLoss(ignore_index=7), _seq_targets, True),
    "mse": (nn.MSELoss(), _regression, False),
    "bce": (nn.BCEWithLogitsLoss(), _binary, False),
    "bce_weight_pos_weight": (
        nn.BCEWithLogitsLoss(weight=WEIGHT, pos_weight=torch.tensor([3.0, 1.0, 0.5], dtype=DT)),
        _soft_binary,
        False,
    ),
}


def make_batches(name: str, sizes=SIZES, seed: int = 1):
    _, targets, sequence = LOSSES[name]
    g = torch.Generator().manual_seed(seed)
    out = []
    for size in sizes:
        shape = (size, T, 3) if sequence else (size, 3)
        out.append((torch.randn(*shape, generator=g, dtype=DT), targets(g, size)))
    return out


def make_model(name: str, kind=mlp, seed: int = 0) -> nn.Module:
    model = kind(seed=seed)
    return PerPosition(model) if LOSSES[name][2] else model


def output_jacobian(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output f and its Jacobian (f.numel(), n) over every parameter."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    J = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    f = model(x).detach()
    return f, torch.cat([J[k].reshape(f.numel(), -1) for k in params], 1)


def output_hessian(criterion, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian of criterion(f, y) in f, by autograd: (f.numel(), f.numel())."""
    H = torch.autograd.functional.hessian(lambda g: criterion(g, y), f)
    return H.reshape(f.numel(), f.numel())


def batch_weights(op: HessianOperator) -> list[float]:
    """The weights the operator gives its batches (HessianOperator's rule)."""
    return [op.model_loss.loss(b)[1] for b in op.model_loss.batches()]


def dense_ggn(model, criterion, batches, weights) -> torch.Tensor:
    """sum_k w_k J_k^T H_out,k J_k / sum_k w_k."""
    total = 0.0
    for (x, y), w in zip(batches, weights, strict=True):
        f, J = output_jacobian(model, x)
        total = total + w * (J.T @ output_hessian(criterion, f, y) @ J)
    return total / sum(weights)


def dense(op) -> torch.Tensor:
    return op.matmat(torch.eye(op.shape[0], dtype=op.dtype))


def rel_err(A: torch.Tensor, B: torch.Tensor) -> float:
    return float((A - B).abs().max() / B.abs().max())


@pytest.mark.parametrize("name", list(LOSSES))
def test_products_equal_dense_ggn_on_unequal_batches(name):
    criterion = LOSSES[name][0]
    model, batches = make_model(name), make_batches(name)
    op = GGNOperator(model, criterion, batches)
    weights = batch_weights(op)
    G = dense_ggn(model, criterion, batches, weights)
    assert rel_err(dense(op), G) <= 1e-10
    V = torch.randn(op.shape[0], 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    assert rel_err(op.matmat(V), G @ V) <= 1e-10
    assert op.num_samples == pytest.approx(sum(weights))


@pytest.mark.parametrize("name", ["ce", "mse", "bce"])
def test_batches_weigh_by_their_samples(name):
    # without ignored targets or class weights a batch counts its samples: the reference
    # does not depend on the operator's own rule
    criterion = LOSSES[name][0]
    model, batches = make_model(name), make_batches(name)
    G = dense_ggn(model, criterion, batches, [float(s) for s in SIZES])
    assert rel_err(dense(GGNOperator(model, criterion, batches)), G) <= 1e-10


def test_mse_scaling_is_torch_mean_over_every_element():
    # MSELoss averages over batch x outputs: for one batch, G = 2 J^T J / (B * C)
    model, batches = mlp(), make_batches("mse", sizes=(9,))
    x, _ = batches[0]
    _, J = output_jacobian(model, x)
    G = 2 * J.T @ J / (9 * C)
    assert rel_err(dense(GGNOperator(model, nn.MSELoss(), batches)), G) <= 1e-12


@pytest.mark.parametrize("name", list(LOSSES))
def test_ggn_equals_the_hessian_for_a_linear_model(name):
    criterion = LOSSES[name][0]
    model, batches = make_model(name, kind=linear), make_batches(name)
    G = dense(GGNOperator(model, criterion, batches))
    H = dense(HessianOperator(model, criterion, batches))
    assert rel_err(G, H) <= 1e-10


@pytest.mark.parametrize("name", list(LOSSES))
def test_ggn_is_positive_semidefinite_where_the_hessian_is_not(name):
    criterion = LOSSES[name][0]
    model, batches = make_model(name, seed=3), make_batches(name)
    G = dense(GGNOperator(model, criterion, batches))
    assert float((G - G.T).abs().max()) <= 1e-12 * float(G.abs().max())
    lam = torch.linalg.eigvalsh(G)
    assert float(lam[0]) >= -1e-10 * float(lam[-1])


def test_the_hessian_of_a_nonlinear_model_differs():
    # the residual term: H - G is not zero for a tanh network off a minimum
    model, batches = make_model("mse"), make_batches("mse")
    G = dense(GGNOperator(model, nn.MSELoss(), batches))
    H = dense(HessianOperator(model, nn.MSELoss(), batches))
    assert rel_err(G, H) > 1e-3
    assert float(torch.linalg.eigvalsh(H)[0]) < 0


def test_functional_criteria_are_supported():
    model, batches = make_model("ce"), make_batches("ce")
    a = dense(GGNOperator(model, nn.functional.cross_entropy, batches))
    b = dense(GGNOperator(model, nn.CrossEntropyLoss(), batches))
    assert rel_err(a, b) <= 1e-14


def test_parameter_selection_is_the_sub_block():
    model, batches = make_model("ce"), make_batches("ce")
    full = GGNOperator(model, nn.CrossEntropyLoss(), batches)
    part = GGNOperator(model, nn.CrossEntropyLoss(), batches, params=r"^2\.")
    s = torch.cat(
        [torch.arange(sl.start, sl.stop) for sl in [full.blocks["2.weight"], full.blocks["2.bias"]]]
    )
    assert list(part.blocks) == ["2.weight", "2.bias"]
    assert rel_err(dense(part), dense(full)[s][:, s]) <= 1e-12
    v = torch.randn(part.shape[0], dtype=DT)
    assert part.unflatten(v)["2.weight"].shape == (C, 5)


def test_one_batch_and_a_dataloader_agree():
    model, batches = make_model("ce"), make_batches("ce")
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    one = dense(GGNOperator(model, nn.CrossEntropyLoss(), (x, y)))
    many = dense(GGNOperator(model, nn.CrossEntropyLoss(), batches))
    assert rel_err(one, many) <= 1e-12


def test_float32_model_gives_float32_products_close_to_float64():
    model, batches = make_model("ce"), make_batches("ce")
    G64 = dense(GGNOperator(model, nn.CrossEntropyLoss(), batches))
    model32 = make_model("ce").float()
    op = GGNOperator(model32, nn.CrossEntropyLoss(), batches)
    assert op.dtype == torch.float32
    assert rel_err(dense(op).double(), G64) <= 1e-5


def test_algorithms_run_on_it_and_the_top_eigenvalue_is_exact():
    model, batches = make_model("ce"), make_batches("ce")
    op = GGNOperator(model, nn.CrossEntropyLoss(), batches)
    G = dense(op)
    top = hs.eigsh(op, k=2, seed=0, tol=1e-10)
    exact = torch.linalg.eigvalsh(G).flip(0)[:2]
    assert torch.allclose(torch.as_tensor(top.eigenvalues), exact, rtol=1e-8)
    assert top.settings["operator"]["type"] == "GGNOperator"
    assert "GGNOperator" in repr(op) and "CrossEntropyLoss" in repr(op)


def test_check_deterministic_passes_and_the_fingerprint_follows_the_parameters():
    model, batches = make_model("ce"), make_batches("ce")
    op = GGNOperator(model, nn.CrossEntropyLoss(), batches, check_deterministic=True)
    before = op.fingerprint()
    assert before["operator"] == "GGNOperator"
    with torch.no_grad():
        model[0].bias.add_(1.0)
    assert op.fingerprint()["params"] != before["params"]


def test_non_finite_products_name_the_batch():
    model, batches = make_model("mse"), make_batches("mse")
    batches[1][0][0, 0] = float("nan")
    op = GGNOperator(model, nn.MSELoss(), batches)
    with pytest.raises(FloatingPointError, match="batch 1"):
        op.matvec(torch.ones(op.shape[0], dtype=DT))


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("criterion", "match"),
    [
        (nn.L1Loss(), "CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss"),
        (nn.NLLLoss(), "drop the model's final log_softmax"),
        (nn.CrossEntropyLoss(reduction="sum"), "reduction='mean'"),
        (nn.MSELoss(reduction="none"), "reduction='mean'"),
        (lambda out, y: ((out - y) ** 2).mean(), "not known here"),
    ],
)
def test_unsupported_criteria_are_refused_with_the_supported_list(criterion, match):
    with pytest.raises(ValueError, match=match):
        output_loss(criterion)
    model, batches = make_model("mse"), make_batches("mse")
    with pytest.raises(ValueError, match=match):
        GGNOperator(model, criterion, batches)


def test_loss_fn_and_hvp_mode_are_refused():
    model, batches = make_model("ce"), make_batches("ce")
    with pytest.raises(TypeError, match="takes no loss_fn"):
        GGNOperator(model, data=batches, loss_fn=lambda m, b: m(b[0]).sum())
    with pytest.raises(TypeError, match="takes no hvp_mode"):
        GGNOperator(model, nn.CrossEntropyLoss(), batches, hvp_mode="double_backward")
    with pytest.raises(ValueError, match="needs a criterion"):
        GGNOperator(model, None, batches)


@pytest.mark.filterwarnings("ignore:Using a target size")
def test_mse_targets_of_another_shape_are_refused():
    model = mlp(out=1)
    x = torch.randn(6, 3, dtype=DT)
    op = GGNOperator(model, nn.MSELoss(), (x, torch.randn(6, dtype=DT)))
    with pytest.raises(ValueError, match="output's shape"):
        op.matvec(torch.ones(op.shape[0], dtype=DT))


def test_a_model_returning_a_tuple_is_refused():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, C).to(DT)

        def forward(self, x):
            return self.lin(x), None

    op_args = (Pair(), lambda out, y: nn.functional.cross_entropy(out[0], y))
    with pytest.raises(ValueError, match="not known here"):
        GGNOperator(*op_args, make_batches("ce"))
    with pytest.raises(TypeError, match="as one tensor"):
        op = GGNOperator(Pair(), nn.CrossEntropyLoss(), make_batches("ce"))
        op.matvec(torch.ones(op.shape[0], dtype=DT))


def test_train_mode_dropout_is_refused_as_for_the_hessian():
    model = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.5), nn.Linear(5, C)).to(DT)
    with pytest.raises(RuntimeError, match="train mode"):
        GGNOperator(model, nn.CrossEntropyLoss(), make_batches("ce"))


# ------------------------------------------------------------------ another library


def test_equals_curvlinops_ggn():
    curvlinops = pytest.importorskip(
        "curvlinops", reason="curvlinops-for-pytorch is not installed (pip install it to compare)"
    )
    for name in ("ce", "mse", "bce"):
        criterion = LOSSES[name][0]
        model, batches = make_model(name), make_batches(name)
        theirs = curvlinops.GGNLinearOperator(
            model, criterion, list(model.parameters()), batches, check_deterministic=False
        )
        ours = GGNOperator(model, criterion, batches)
        V = torch.randn(ours.shape[0], 4, dtype=DT, generator=torch.Generator().manual_seed(3))
        assert rel_err(ours.matmat(V), theirs @ V) <= 1e-8, name
