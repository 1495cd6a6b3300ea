"""Model handling: parameter selection, batch preparation, the batch weight, the loss call."""

from __future__ import annotations

import copy
from collections import namedtuple

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from hessian_spectra.operators.hessian import HessianOperator
from hessian_spectra.operators.model import (
    ModelLoss,
    ParameterSelection,
    batch_weight,
    prepare_batch,
    running_stats_kept,
    select_parameters,
)

CE = nn.CrossEntropyLoss()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _data(n: int = 12):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


# ----------------------------------------------------------- batch weight


def test_batch_weight_is_the_shared_leading_dimension():
    x, y = torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)
    assert batch_weight((x, y)) == 5
    assert batch_weight([x, y]) == 5
    assert batch_weight(x) == 5
    nested = {
        "inputs": {"ids": torch.zeros(4, 7, dtype=torch.long), "mask": torch.ones(4, 7)},
        "labels": torch.zeros(4, 7, dtype=torch.long),
        "temperature": torch.tensor(2.0),  # no dimension: does not count
        "text": ["a", "b", "c", "d"],  # not a tensor: does not count
    }
    assert batch_weight(nested) == 4


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ({"ids": torch.zeros(4, 7), "table": torch.zeros(10, 3)}, r"\['ids'\]: 4, \['table'\]: 10"),
        ((torch.zeros(3, 2), torch.zeros(5)), r"\[0\]: 3, \[1\]: 5"),
        ({"scale": torch.tensor(1.0), "text": ["a"]}, "no tensor with a batch dimension"),
    ],
)
def test_batch_weight_refuses_what_has_no_single_size(batch, match):
    with pytest.raises(ValueError, match=match):
        batch_weight(batch)
    with pytest.raises(ValueError, match=r"\(mean_loss, num_samples\)"):
        batch_weight(batch)


def test_operator_refuses_a_dict_batch_whose_tensors_disagree_unless_counted():
    # the weight of {"x": 12 rows, "w": 3 rows} is not "whichever value comes first"
    model = _mlp()
    x, y = _data()
    b1 = {"x": x[:8], "y": y[:8], "w": torch.ones(3, dtype=torch.float64)}
    b2 = {"x": x[8:], "y": y[8:], "w": torch.ones(3, dtype=torch.float64)}

    def mean_only(m, b):
        return CE(m(b["x"]), b["y"]) * b["w"].mean()

    op = HessianOperator(model, loss_fn=mean_only, data=[b1, b2])
    v = torch.ones(op.shape[0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"disagree.*\['x'\]: 8.*\['w'\]: 3"):
        op.matvec(v)

    def counted(m, b):
        return mean_only(m, b), len(b["y"])

    op = HessianOperator(model, loss_fn=counted, data=[b1, b2])
    ref = HessianOperator(model, CE, (x, y))
    torch.testing.assert_close(op.matvec(v), ref.matvec(v), rtol=1e-12, atol=1e-14)
    assert op.num_samples == 12


# ----------------------------------------------------------- batch preparation


def test_prepare_batch_casts_floating_tensors_and_keeps_integer_ones():
    Pair = namedtuple("Pair", ["inputs", "targets"])
    batch = {
        "pair": Pair(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)),
        "more": [torch.ones(2, dtype=torch.float16), (torch.ones(2, dtype=torch.int32),)],
        "name": "keep me",
    }
    out = prepare_batch(batch, torch.device("cpu"), torch.float64)
    assert isinstance(out["pair"], Pair)
    assert out["pair"].inputs.dtype == torch.float64
    assert out["pair"].targets.dtype == torch.long
    assert out["more"][0].dtype == torch.float64
    assert isinstance(out["more"][1], tuple) and out["more"][1][0].dtype == torch.int32
    assert out["name"] == "keep me"


def test_model_loss_yields_prepared_batches_and_weights():
    model = _mlp()
    x, y = _data()
    batches = [{"x": x[:7].float(), "y": y[:7]}, {"x": x[7:].float(), "y": y[7:]}]
    problem = ModelLoss(model, data=batches, loss_fn=lambda m, b: CE(m(b["x"]), b["y"]))
    assert problem.dtype == torch.float64 and problem.num_batches == 2
    seen = list(problem.batches())
    assert [b["x"].dtype for b in seen] == [torch.float64, torch.float64]
    weights = [problem.loss(b)[1] for b in seen]
    assert weights == [7.0, 5.0]
    one = ModelLoss(model, CE, (x, y))
    assert one.num_batches == 1
    loss, weight = one.loss(next(one.batches()))
    assert weight == 12.0 and loss.ndim == 0
    with pytest.raises(ValueError, match="exactly one.*neither"):
        ModelLoss(model, data=(x, y))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ModelLoss(lambda x: x, CE, (x, y))  # type: ignore[arg-type]


def test_train_mode_check_and_running_statistics():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)).double().train()
    x, y = _data()
    with pytest.raises(RuntimeError, match=r"1 \(BatchNorm1d\).*model\.eval\(\)"):
        ModelLoss(model, CE, (x, y))
    problem = ModelLoss(model, CE, (x, y), allow_train_mode=True)
    before = {k: b.clone() for k, b in model[1].named_buffers()}
    with problem.state_kept():
        problem.loss(next(problem.batches()))
        assert not torch.equal(model[1].running_mean, before["running_mean"])
    for k, b in model[1].named_buffers():
        assert torch.equal(b, before[k]), k
    with running_stats_kept(model):
        model(x)
    assert torch.equal(model[1].running_mean, before["running_mean"])


# ----------------------------------------------------------- parameter selection


def test_selection_layout_flatten_and_unflatten():
    model = _mlp()
    sel = ParameterSelection(model, [model[2], "0.bias"])
    assert sel.names == ["0.bias", "2.weight", "2.bias"]
    assert sel.numel == 5 + 15 + 3
    assert sel.blocks["2.weight"] == slice(5, 20)
    v = torch.arange(float(sel.numel), dtype=torch.float64)
    parts = sel.unflatten(v)
    assert parts["2.weight"].shape == (3, 5) and float(parts["2.bias"][0]) == 20.0
    assert torch.equal(sel.flatten(parts), v)
    assert [n for n, _ in sel.items()] == sel.names
    with pytest.raises(ValueError, match=r"shape \(23,\) over the selected parameters"):
        sel.unflatten(v[:-1])
    with pytest.raises(ValueError, match=r"missing entries for parameters \['0.bias'\]"):
        sel.flatten({k: t for k, t in parts.items() if k != "0.bias"})


def test_select_parameters_mixes_names_modules_and_tensors():
    model = _mlp()
    chosen = select_parameters(model, ["2.bias", model[0], model[2].weight])
    assert [n for n, _ in chosen] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(p is dict(model.named_parameters())[n] for n, p in chosen)


def test_regex_selects_trainable_parameters_and_names_frozen_ones():
    model = copy.deepcopy(_mlp())
    model[0].weight.requires_grad_(False)
    assert [n for n, _ in select_parameters(model, r"weight$")] == ["2.weight"]
    with pytest.raises(ValueError, match=r"only frozen ones \['0.weight'\]"):
        select_parameters(model, r"^0\.weight")
    with pytest.raises(ValueError, match="does not compile"):
        select_parameters(model, "(")
    with pytest.raises(ValueError, match=r"\['0.weight'\] have requires_grad=False"):
        select_parameters(model, [model[0]])
    with pytest.raises(ValueError, match="has no parameters"):
        select_parameters(nn.Sequential(nn.Tanh()))


# ----------------------------------------------------------- data without a length


class Endless(IterableDataset):
    """A stream of samples that never ends (an IterableDataset without __len__)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        i = 0
        while True:
            yield self.x[i % len(self.x)], self.y[i % len(self.y)]
            i += 1


def test_data_without_a_length_need_max_batches():
    model, (x, y) = _mlp(), _data(12)
    loader = DataLoader(Endless(x, y), batch_size=4)
    with pytest.raises(ValueError, match="have no length.*max_batches=N"):
        HessianOperator(model, CE, loader)
    with pytest.raises(ValueError, match="have no length"):
        ModelLoss(model, CE, Endless(x, y))
    # capped: the first 3 batches of 4 are the 12 samples, so the same Hessian
    op = HessianOperator(model, CE, loader, max_batches=3)
    ref = HessianOperator(model, CE, (x, y))
    v = torch.randn(op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(op.matvec(v), ref.matvec(v), rtol=1e-12, atol=1e-14)
    assert op.num_samples == 12 and op.model_loss.num_batches == 3
    # a DataLoader over a map-style data set keeps working, and max_batches caps it
    mapped = DataLoader(TensorDataset(x, y), batch_size=5)
    assert HessianOperator(model, CE, mapped).model_loss.num_batches == 3
    capped = HessianOperator(model, CE, mapped, max_batches=2)
    capped.matvec(v)
    assert capped.model_loss.num_batches == 2 and capped.num_samples == 10
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_batches must be a positive int"):
            ModelLoss(model, CE, mapped, max_batches=bad)
