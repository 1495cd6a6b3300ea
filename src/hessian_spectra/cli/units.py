"""Amounts of memory as the command line reads and prints them (GB = 10^9 bytes)."""

from __future__ import annotations

import math
import re

from hessian_spectra.cli.errors import CLIError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_memory(text: str) -> int:
    """Bytes from ``--max-memory``: ``8GB``, ``512MB``, ``1.5e9``, ``16GiB`` (GB = 10^9 bytes)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise CLIError(
            f"--max-memory {text!r} is not an amount of memory; write e.g. 8GB, 512MB, 16GiB "
            "or a number of bytes"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value < 1:
        raise CLIError(f"--max-memory must be at least 1 byte, got {text!r}")
    return int(value)


def format_bytes(num: float) -> str:
    """``"16.3 GB"`` (powers of 1000, as --max-memory reads them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(num) < 1000:
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1000
    return f"{num:.1f} TB"
