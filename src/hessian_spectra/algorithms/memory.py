"""Memory checks before large allocations: what a call needs, what the machine has.

Each long-running algorithm has a function that estimates the bytes its own
buffers take (`eigsh_memory`, `trace_memory`, `density_memory`, defined
beside the algorithm); the algorithm calls `check_memory` with that need
before it allocates anything. The operator's own memory (a model's
activations during a Hessian-vector product) is not counted.

Available memory is read without extra dependencies: ``MemAvailable`` of
``/proc/meminfo`` for the CPU (Linux; elsewhere the automatic check is
skipped), ``torch.cuda.mem_get_info`` plus the cached, unused blocks of
PyTorch's allocator for a CUDA device; other devices are not checked. A
``max_memory`` the user gives replaces the automatic limit (and applies to
all devices together).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path

import torch

from hessian_spectra.algorithms.errors import InsufficientMemoryError

MEMINFO = Path("/proc/meminfo")


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes of one number of `dtype`."""
    return int(torch.empty((), dtype=dtype).element_size())


def format_bytes(num: float) -> str:
    """A byte count for people: ``"16.2 GB"`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(num) < 1000 or unit == "TB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1000
    raise AssertionError("unreachable")


def available_memory(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on `device`, or None where that is not known.

    CPU: ``MemAvailable`` from ``/proc/meminfo`` (None when the file cannot be
    read, e.g. off Linux). CUDA: the free device memory plus what PyTorch's
    caching allocator holds but does not use. Other devices: None.
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        try:
            text = MEMINFO.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("MemAvailable:"):
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    scale = 1024 if len(parts) < 3 or parts[2].lower() == "kb" else 1
                    return int(parts[1]) * scale
        return None
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return int(free + max(0, cached))
    return None


def check_max_memory(max_memory: object) -> None:
    """Refuse a `max_memory` that is not a positive, finite number of bytes."""
    if max_memory is None:
        return
    if (
        isinstance(max_memory, bool)
        or not isinstance(max_memory, numbers.Real)
        or not math.isfinite(max_memory)
        or max_memory < 1
    ):
        raise ValueError(
            f"max_memory must be a positive number of bytes (e.g. 8e9), got {max_memory!r}"
        )


def _device_key(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def check_memory(
    need: Sequence[tuple[torch.device | str, int]],
    *,
    what: str,
    lower: str,
    max_memory: float | None = None,
) -> None:
    """Refuse a call whose buffers would not fit: raise `InsufficientMemoryError`.

    Args:
        need: (device, bytes) pairs of what the call allocates (pairs that
            name the same device add up).
        what: the call, for the message (e.g. ``"eigsh(method='lanczos', k=5000)"``).
        lower: the options that lower the need, for the message.
        max_memory: the user's limit in bytes for all devices together; None
            checks each device against its available memory (where known).
    """
    if max_memory is not None:
        check_max_memory(max_memory)
        limit = int(max_memory)
        total = sum(int(b) for _, b in need)
        if total > limit:
            raise InsufficientMemoryError(
                f"{what} needs about {format_bytes(total)} ({total} bytes) for its vectors, "
                f"more than max_memory={limit} ({format_bytes(limit)}): {lower}; "
                "or raise max_memory"
            )
        return
    per_device: dict[str, int] = {}
    for device, num in need:
        key = _device_key(device)
        per_device[key] = per_device.get(key, 0) + int(num)
    for key, num in per_device.items():
        avail = available_memory(key)
        if avail is not None and num > avail:
            raise InsufficientMemoryError(
                f"{what} needs about {format_bytes(num)} ({num} bytes) for its vectors on "
                f"{key}, but only {format_bytes(avail)} ({avail} bytes) are available there: "
                f"{lower}; or pass max_memory=<bytes> to set the limit yourself"
            )


__all__ = ["available_memory", "check_max_memory", "check_memory", "dtype_bytes", "format_bytes"]
