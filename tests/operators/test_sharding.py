"""Each rank's share of the data, without a process group (the 2-rank run is test_distributed)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from hessian_spectra.operators.sharding import NO_ROWS, Shard, plan_shard, split_rows


def test_split_rows_covers_every_sample_once():
    x = torch.arange(14.0).reshape(7, 2)
    batch = {"x": x, "pair": (torch.arange(7), [torch.arange(7) * 2])}
    parts = [split_rows(batch, r, 3) for r in range(3)]
    assert [len(p["x"]) for p in parts] == [3, 2, 2]
    assert torch.equal(torch.cat([p["x"] for p in parts]), x)
    assert torch.equal(torch.cat([p["pair"][1][0] for p in parts]), torch.arange(7) * 2)
    assert isinstance(parts[0]["pair"], tuple) and isinstance(parts[0]["pair"][1], list)
    assert split_rows((x, torch.arange(7)), 7, 8) is NO_ROWS  # more ranks than samples


def test_split_rows_refuses_what_cannot_be_split():
    with pytest.raises(ValueError, match=r"same number of samples.*\[3, 4\]"):
        split_rows((torch.zeros(3), torch.zeros(4)), 0, 2)
    with pytest.raises(TypeError, match="holding a str"):
        split_rows({"x": torch.zeros(3), "name": "a"}, 0, 2)


def test_plan_shard_modes():
    x, y = torch.zeros(30, 2), torch.zeros(30, dtype=torch.long)
    assert plan_shard((x, y), one_batch=True, rank=0, world=2).mode == "rows"
    batches = plan_shard([(x, y)] * 5, one_batch=False, rank=1, world=2)
    assert batches == Shard("batches", 1, 2)
    assert [i for i in range(5) if batches.takes(i)] == [1, 3]
    assert all(Shard().takes(i) for i in range(3))
    ds = TensorDataset(x, y)
    loader = DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, num_replicas=2, rank=1))
    assert plan_shard(loader, one_batch=False, rank=1, world=2).mode == "sampler"


def test_plan_shard_refuses_double_counting():
    x, y = torch.zeros(29, 2), torch.zeros(29, dtype=torch.long)
    ds = TensorDataset(x, y)
    padded = DataLoader(ds, sampler=DistributedSampler(ds, num_replicas=2, rank=0))
    with pytest.raises(ValueError, match="pads the 29 samples to 30.*drop_last=True"):
        plan_shard(padded, one_batch=False, rank=0, world=2)
    dropped = DataLoader(ds, sampler=DistributedSampler(ds, num_replicas=2, rank=0, drop_last=True))
    assert plan_shard(dropped, one_batch=False, rank=0, world=2).mode == "sampler"
    other = DataLoader(ds, sampler=DistributedSampler(ds, num_replicas=3, rank=0))
    with pytest.raises(ValueError, match="num_replicas=3.*rank 0 of 2"):
        plan_shard(other, one_batch=False, rank=0, world=2)
    with pytest.raises(ValueError, match="shuffle=False"):
        plan_shard(DataLoader(ds, shuffle=True), one_batch=False, rank=0, world=2)
