"""Data parallel: which part of the data each rank of a process group multiplies by.

No sample may be counted twice across ranks, and none left out. A DataLoader
with a ``DistributedSampler`` is the rank's shard as it is (a sampler that
pads the data set with repeated samples is refused). Other data are compared
across ranks by a digest of their samples (`data_digest`, one small
all-reduce): the same data on every rank are sharded (a re-iterable of batches
by batch, rank r taking batches r, r + W, ...; one batch split into W
contiguous slices of samples); different data are each rank's own shard, used
whole. ``shard="full"`` or ``"local"`` forces either reading (`choose_shard`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

NO_ROWS: Any = object()  # a rank's empty slice of a lone batch

ShardMode = Literal["none", "rows", "sampler", "batches", "local"]
ShardOption = Literal["auto", "full", "local"]
SHARD_OPTIONS = ("auto", "full", "local")


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


def choose_shard(
    data: Any,
    *,
    one_batch: bool,
    rank: int,
    world: int,
    option: str = "auto",
    same_everywhere: bool = True,
) -> Shard:
    """This rank's share: its own data whole, or a shard of data every rank holds.

    Args:
        data: the data as passed on this rank.
        one_batch: whether `data` is one batch.
        rank, world: this process's rank and the number of ranks.
        option: "auto" (a DataLoader with a DistributedSampler is the rank's
            shard; other data are sharded when `same_everywhere`, else used
            whole), "full" (the data are the full data on every rank: shard
            them) or "local" (each rank passed its own shard: use it whole).
        same_everywhere: whether every rank's data have the same digest.

    Raises:
        ValueError: an unknown option, or what `plan_shard` refuses.
    """
    if option not in SHARD_OPTIONS:
        raise ValueError(f"shard must be one of {SHARD_OPTIONS}, got {option!r}")
    if option == "local":
        return Shard("local", rank, world)
    sampler = getattr(data, "sampler", None) if isinstance(data, DataLoader) else None
    if option == "auto" and not same_everywhere and not isinstance(sampler, DistributedSampler):
        return Shard("local", rank, world)
    return plan_shard(data, one_batch=one_batch, rank=rank, world=world)


# ------------------------------------------------------------------ data digests


def _leaves(x: Any, tensors: list[torch.Tensor], others: list[str]) -> None:
    if isinstance(x, torch.Tensor):
        tensors.append(x)
    elif isinstance(x, Mapping):
        for k, v in x.items():
            others.append(repr(k))
            _leaves(v, tensors, others)
    elif isinstance(x, (tuple, list)):
        for v in x:
            _leaves(v, tensors, others)
    else:
        others.append(repr(x))


def _tensor_rows(t: torch.Tensor, n: int) -> np.ndarray:
    """The bytes of `t` as an (n, bytes per sample) array: row i is sample i (no copy on CPU)."""
    raw = t.detach().cpu().contiguous().reshape(n, -1)
    if raw.dtype == torch.bool:
        raw = raw.to(torch.uint8)
    if raw.shape[1] == 0:
        return np.zeros((n, 0), dtype=np.uint8)
    return np.ascontiguousarray(raw.view(torch.uint8).numpy())


def sample_digests(batch: Any) -> list[bytes]:
    """A SHA-256 of each sample of a batch, or of the whole batch when it cannot be split.

    A batch whose tensors all share their leading dimension (and that holds
    nothing but tensors) is split into samples; any other batch is one unit.
    """
    tensors: list[torch.Tensor] = []
    others: list[str] = []
    _leaves(batch, tensors, others)
    header = "|".join(f"{t.dtype}{tuple(t.shape[1:])}" for t in tensors).encode()
    sizes = {int(t.shape[0]) if t.ndim else -1 for t in tensors}
    if tensors and not others and len(sizes) == 1 and -1 not in sizes:
        n = sizes.pop()
        rows = [_tensor_rows(t, n) for t in tensors]
        out = []
        for i in range(n):
            h = hashlib.sha256(header)
            for r in rows:
                h.update(r[i])
            out.append(h.digest())
        return out
    h = hashlib.sha256(header)
    for t in tensors:
        h.update(f"{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update("|".join(others).encode())
    return [h.digest()]


def data_digest(batches: Iterable[Any]) -> str:
    """A SHA-256 of the multiset of samples in `batches` (all of them).

    Independent of the batch order and of how samples are grouped into
    batches, so a shuffled DataLoader over a fixed data set has one digest;
    each sample's inputs, targets and other tensors (values, dtypes, shapes)
    enter it.
    """
    units: list[bytes] = []
    for batch in batches:
        units.extend(sample_digests(batch))
    units.sort()
    h = hashlib.sha256(f"{len(units)} samples".encode())
    for u in units:
        h.update(u)
    return h.hexdigest()


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
