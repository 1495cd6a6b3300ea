"""Data-parallel Hessian products: 2 gloo processes on this machine against one process."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import hessian_spectra as hs
from hessian_spectra.operators.hessian import HessianOperator

CE = nn.CrossEntropyLoss()
SIZES = (5, 5, 5, 5, 5, 3, 2)  # 30 samples in 7 uneven batches: rank 0 gets 4, rank 1 gets 3


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(sum(SIZES), 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (sum(SIZES),), generator=g)
    batches, start = [], 0
    for size in SIZES:
        batches.append((x[start : start + size], y[start : start + size]))
        start += size
    return model, x, y, batches


def _probe(n):
    return torch.randn(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def _computations(op):
    """What both the 2-rank run and the single process compute on the full data."""
    out = {}
    top = hs.eigsh(op, 5, tol=1e-10, seed=0)
    out["eigenvalues"] = top.eigenvalues
    out["num_matvecs"] = top.num_matvecs
    out["ranks"] = top.settings["operator"].get("ranks")
    out["trace"] = hs.trace(op, num_matvecs=40, seed=0).estimate
    return out


def _worker(rank, world, init_file, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, x, y, batches = _problem()
        op = HessianOperator(model, CE, batches)  # distributed="auto"
        out = _computations(op)
        out["is_distributed"] = op.is_distributed
        out["samples"] = (op.num_samples, op.local_num_samples)
        out["seed_none"] = hs.eigsh(op, 2, tol=1e-6).seed  # drawn on rank 0 only
        v = _probe(op.shape[0])
        out["hv_rows"] = HessianOperator(model, CE, (x, y)).matvec(v)  # one batch, split
        ds = TensorDataset(x, y)
        sampler = DistributedSampler(ds, shuffle=True, seed=3)
        loader = DataLoader(ds, batch_size=4, sampler=sampler)
        op_sampler = HessianOperator(model, CE, loader)
        out["hv_sampler"] = op_sampler.matvec(v)
        out["samples_sampler"] = (op_sampler.num_samples, op_sampler.local_num_samples)
        errors = {}
        ds29 = TensorDataset(x[:29], y[:29])
        padded = DataLoader(ds29, sampler=DistributedSampler(ds29))
        shuffled = DataLoader(ds, batch_size=4, shuffle=True)
        for name, data in (("padded", padded), ("shuffled", shuffled)):
            try:
                HessianOperator(model, CE, data)
            except ValueError as err:
                errors[name] = str(err)
        out["errors"] = errors
        # each rank passes its OWN part of the data (rank 0 the first 4 batches, rank 1 the
        # last 3): compared by digest, used whole, not sharded a second time
        own_part = batches[:4] if rank == 0 else batches[4:]
        op_local = HessianOperator(model, CE, own_part)
        out["shard_auto"] = (op.settings["shard"], op_local.settings["shard"])
        out["hv_local"] = op_local.matvec(v)
        out["samples_local"] = (op_local.num_samples, op_local.local_num_samples)
        out["eigenvalues_local"] = hs.eigsh(op_local, 5, tol=1e-10, seed=0).eigenvalues
        rows = (x[:13], y[:13]) if rank == 0 else (x[13:], y[13:])  # one batch each
        out["hv_local_rows"] = HessianOperator(model, CE, rows).matvec(v)
        forced = HessianOperator(model, CE, own_part, shard="full")  # the former behaviour
        out["shard_forced"] = (forced.settings["shard"], forced.model_loss.num_batches)
        out["fingerprint_local"] = op_local.fingerprint()["data"]
        # only rank 0 writes checkpoints: each rank names its own file, then both
        # resume from rank 0's
        own = os.path.join(tmp, f"ckpt{rank}.pt")

        def interrupt(record):
            if record["matvecs"] == 7:
                raise KeyboardInterrupt

        try:
            hs.eigsh(op, 5, tol=1e-10, seed=0, checkpoint=own, callback=interrupt)
        except KeyboardInterrupt:
            pass
        dist.barrier()
        out["own_checkpoint_written"] = os.path.exists(own)
        saved = os.path.join(tmp, "ckpt0.pt")
        resumed = hs.eigsh(op, 5, tol=1e-10, seed=0, checkpoint=saved, resume=True)
        out["resumed"] = resumed.eigenvalues
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)

    model, x, y, batches = _problem()
    op = HessianOperator(model, CE, batches)
    assert not op.is_distributed
    ref = _computations(op)
    assert r0["is_distributed"] and r1["is_distributed"]
    # each sample counted once: rank 0 took batches 0, 2, 4, 6, rank 1 batches 1, 3, 5
    assert r0["samples"] == (30.0, 17.0) and r1["samples"] == (30.0, 13.0)
    assert r0["samples_sampler"] == (30.0, 15.0) and r1["samples_sampler"] == (30.0, 15.0)
    # the ranks ran the identical computation, equal to one process on the full data
    assert np.array_equal(r0["eigenvalues"], r1["eigenvalues"]) and r0["trace"] == r1["trace"]
    np.testing.assert_allclose(r0["eigenvalues"], ref["eigenvalues"], rtol=1e-6, atol=0)
    assert r0["trace"] == pytest.approx(ref["trace"], rel=1e-6)
    assert r0["num_matvecs"] == ref["num_matvecs"]
    assert r0["ranks"] == 2 and ref["ranks"] is None  # recorded in the result's settings
    assert r0["seed_none"] == r1["seed_none"]
    # one batch split by rows, and a DistributedSampler's shards, give the full product
    hv = HessianOperator(model, CE, (x, y)).matvec(_probe(op.shape[0]))
    for r in (r0, r1):
        for key in ("hv_rows", "hv_sampler"):
            rel = float(torch.linalg.vector_norm(r[key] - hv) / torch.linalg.vector_norm(hv))
            assert rel < 1e-12, (key, rel)
    assert "pads the 29 samples to 30" in r0["errors"]["padded"]
    assert "drop_last=True" in r0["errors"]["padded"]
    assert "shuffle=False" in r0["errors"]["shuffled"]
    # data that differ between ranks are each rank's shard: the full-data answer
    assert r0["shard_auto"] == r1["shard_auto"] == ("batches", "local")
    assert r0["samples_local"] == (30.0, 20.0) and r1["samples_local"] == (30.0, 10.0)
    for r in (r0, r1):
        for key in ("hv_local", "hv_local_rows"):
            rel = float(torch.linalg.vector_norm(r[key] - hv) / torch.linalg.vector_norm(hv))
            assert rel < 1e-12, (key, rel)
        np.testing.assert_allclose(r["eigenvalues_local"], ref["eigenvalues"], rtol=1e-6, atol=0)
    assert r0["shard_forced"] == ("batches", 2) and r1["shard_forced"] == ("batches", 1)
    assert r0["fingerprint_local"] == r1["fingerprint_local"]  # one digest of all ranks' data
    # rank 0 alone wrote its checkpoint; resuming from it on both ranks finished the run
    assert r0["own_checkpoint_written"] and not r1["own_checkpoint_written"]
    assert np.array_equal(r0["resumed"], r0["eigenvalues"])
    assert np.array_equal(r1["resumed"], r0["eigenvalues"])
    assert not (tmp_path / "ckpt0.pt").exists()
