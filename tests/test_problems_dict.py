"""The registry's loaders for models that take dict batches: data factories returning dict
batches, and checkpoints whose keys carry a prefix (--checkpoint-prefix)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from hessian_spectra.problems import ProblemError, load_data, load_loss_fn, load_state_dict


@pytest.fixture
def factory(monkeypatch):
    mod = types.ModuleType("dict_factory_mod")
    ids = torch.arange(40).reshape(8, 5)
    mod.one = lambda: {"input_ids": ids, "labels": ids, "meta": {"mask": torch.ones(8, 5)}}
    mod.many = lambda: [{"input_ids": ids[:3]}, {"input_ids": ids[3:]}]
    mod.not_callable = 3

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": ids[i], "labels": ids[i]}

    mod.loader = lambda: torch.utils.data.DataLoader(Rows(), batch_size=3)
    mod.loss = lambda model, batch: model(**batch).loss
    monkeypatch.setitem(sys.modules, "dict_factory_mod", mod)
    return ids


def test_one_dict_batch_split_and_subset(factory) -> None:
    data = load_data("dict_factory_mod:one", batch_size=3, dtype=torch.float64)
    assert data.num_samples == 8
    assert [b["input_ids"].shape[0] for b in data.batches] == [3, 3, 2]
    assert data.batches[0]["meta"]["mask"].dtype == torch.float64  # nested, cast
    assert data.batches[0]["input_ids"].dtype == torch.long  # integers keep theirs
    assert torch.equal(torch.cat([b["labels"] for b in data.batches]), factory)
    assert "8 samples in 3 dict batches" in data.description
    sub = load_data("dict_factory_mod:one", samples=4)
    assert sub.num_samples == 4 and len(sub.batches) == 1
    again = load_data("dict_factory_mod:one", samples=4)
    assert torch.equal(sub.batches[0]["input_ids"], again.batches[0]["input_ids"])
    assert isinstance(sub.example, dict)


def test_list_of_dict_batches(factory) -> None:
    data = load_data("dict_factory_mod:many")
    assert data.num_samples == 8 and len(data.batches) == 2
    with pytest.raises(ProblemError, match="need one dict batch to split"):
        load_data("dict_factory_mod:many", batch_size=2)


def test_dataloader_of_dict_batches(factory) -> None:
    data = load_data("dict_factory_mod:loader")
    assert data.num_samples == 8
    assert isinstance(data.example, dict)
    assert torch.equal(data.example["input_ids"], factory[:3])


def test_loss_fn_spec(factory) -> None:
    assert callable(load_loss_fn("dict_factory_mod:loss"))
    with pytest.raises(ProblemError, match="not a function"):
        load_loss_fn("dict_factory_mod:not_callable")


def test_checkpoint_prefix(tmp_path) -> None:
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {f"model.{k}": v for k, v in src.state_dict().items()}
    state["loss.weight"] = torch.ones(2)
    path = tmp_path / "c.ckpt"
    torch.save({"state_dict": state}, path)
    dst = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    with pytest.raises(ProblemError, match="--checkpoint-prefix maps a prefix"):
        load_state_dict(dst, path, "net")
    with pytest.raises(ProblemError, match="starts with 'enc.'"):
        load_state_dict(dst, path, "net", prefix="enc.")
    load_state_dict(dst, path, "net", prefix="model.")
    assert all(torch.equal(a, b) for a, b in zip(src.parameters(), dst.parameters(), strict=True))
    # OLD=NEW replaces the prefix
    wrapped = nn.Module()
    wrapped.net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    load_state_dict(wrapped, path, "wrapped", prefix="model.=net.")
    assert torch.equal(wrapped.net[1].weight, src[1].weight)
