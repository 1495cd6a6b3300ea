"""Data parallel: which part of the data each rank of a process group multiplies by.

No sample may be counted twice across ranks. A DataLoader with a
``DistributedSampler`` is the rank's shard as it is (a sampler that pads the
data set with repeated samples is refused); any other re-iterable of batches
must be the same full data on every rank and is sharded by batch (rank r takes
batches r, r + W, ...); one batch is split into W contiguous slices of samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

NO_ROWS: Any = object()  # a rank's empty slice of a lone batch

ShardMode = Literal["none", "rows", "sampler", "batches"]


@dataclass(frozen=True)
class Shard:
    """This rank's share of the data.

    Attributes:
        mode: "none" (all the data: no process group), "rows" (a slice of the
            samples of one batch), "sampler" (what the DataLoader's
            DistributedSampler yields on this rank) or "batches" (every
            `world`-th batch, starting at `rank`).
        rank, world: this process's rank and the number of ranks.
    """

    mode: ShardMode = "none"
    rank: int = 0
    world: int = 1

    def takes(self, index: int) -> bool:
        """Whether this rank multiplies by batch `index` of a pass over the data."""
        return self.mode != "batches" or index % self.world == self.rank


def plan_shard(data: Any, *, one_batch: bool, rank: int, world: int) -> Shard:
    """Choose how rank `rank` of `world` takes its share of `data`; refuse double counting.

    Raises:
        ValueError: a DistributedSampler built for another group, one that pads
            the data set with repeated samples, or a shuffling DataLoader (whose
            batch order differs between ranks) without a DistributedSampler.
    """
    if one_batch:
        return Shard("rows", rank, world)
    sampler = getattr(data, "sampler", None) if isinstance(data, DataLoader) else None
    if isinstance(sampler, DistributedSampler):
        if sampler.num_replicas != world or sampler.rank != rank:
            raise ValueError(
                f"the DataLoader's DistributedSampler has num_replicas={sampler.num_replicas}"
                f", rank={sampler.rank}, but this process is rank {rank} of {world}: build it "
                "with the default group's values, DistributedSampler(dataset)"
            )
        size = len(sampler.dataset)  # type: ignore[arg-type]
        if not sampler.drop_last and sampler.total_size > size:
            raise ValueError(
                f"the DataLoader's DistributedSampler pads the {size} samples to "
                f"{sampler.total_size} ({world} ranks) by repeating "
                f"{sampler.total_size - size} of them, which the Hessian would count "
                "twice: pass drop_last=True to the DistributedSampler (it drops "
                f"{size % world} samples instead), use a data set whose size is a multiple of "
                f"{world}, or pass the full data on every rank (a list of batches or a "
                "DataLoader without a DistributedSampler) to have it sharded by batch"
            )
        return Shard("sampler", rank, world)
    if isinstance(sampler, RandomSampler):
        raise ValueError(
            "the DataLoader shuffles (RandomSampler): each rank would see its batches in "
            "another order, so sharding by batch index would count samples twice. Pass "
            "shuffle=False (the order does not matter for the Hessian), or give the "
            "DataLoader a DistributedSampler"
        )
    return Shard("batches", rank, world)


def _collect(x: Any, tensors: list[torch.Tensor]) -> None:
    if isinstance(x, torch.Tensor):
        tensors.append(x)
    elif isinstance(x, Mapping):
        for v in x.values():
            _collect(v, tensors)
    elif isinstance(x, (tuple, list)):
        for v in x:
            _collect(v, tensors)
    else:
        raise TypeError(
            f"cannot split a batch holding a {type(x).__name__} across ranks; pass a list "
            "of batches (sharded by batch) or a DataLoader with a DistributedSampler"
        )


def _cut(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x[start:stop]
    if isinstance(x, Mapping):
        return {k: _cut(v, start, stop) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
        return type(x)(*(_cut(v, start, stop) for v in x))
    return type(x)(_cut(v, start, stop) for v in x)


def split_rows(batch: Any, rank: int, world: int) -> Any:
    """Rank `rank`'s contiguous slice of the samples of one batch (or `NO_ROWS`).

    The W slices differ in size by at most one sample; every tensor in the
    batch must have the same number of samples along dim 0.
    """
    tensors: list[torch.Tensor] = []
    _collect(batch, tensors)
    sizes = {int(t.shape[0]) if t.ndim else -1 for t in tensors}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(
            "to split one batch across ranks every tensor in it needs the same number of "
            f"samples along dim 0, got sizes {sorted(sizes)}; pass a list of batches instead"
        )
    size = sizes.pop()
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    if stop == start:
        return NO_ROWS
    return _cut(batch, start, stop)
