"""The little torch.distributed glue the library needs (no home-made transport).

Algorithms run unchanged and identically on every rank (same seed, same
vectors); only the operator's product reduces across ranks, and only rank 0
writes files and shows progress.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _dist_ready() -> bool:
    return bool(dist.is_available() and dist.is_initialized())


def world_size() -> int:
    """Ranks in the default process group (1 when none is initialized)."""
    if not _dist_ready():
        return 1
    return int(dist.get_world_size())


def rank() -> int:
    """This process's rank in the default group (0 when none is initialized)."""
    if not _dist_ready():
        return 0
    return int(dist.get_rank())


def is_main_process() -> bool:
    """True on rank 0, and in a process without a distributed group."""
    return rank() == 0


def resolve_distributed(flag: bool | str) -> bool:
    """Whether an operator should reduce across ranks.

    Args:
        flag: "auto" (on when a default process group with more than one rank
            is initialized), True (required: error when there is none) or False.
    """
    if flag == "auto":
        return world_size() > 1
    if flag is True:
        if world_size() <= 1:
            raise ValueError(
                "distributed=True needs an initialized default process group with more "
                "than one rank: launch with torchrun, or call "
                "torch.distributed.init_process_group first; or pass distributed='auto'"
            )
        return True
    if flag is False:
        return False
    raise ValueError(f"distributed must be 'auto', True or False, got {flag!r}")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks, in place; returns it."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_from_main(obj: object) -> object:
    """Rank 0's value of a small picklable object, on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
