"""Plumbing shared by the experiments: claims, seeds, CSV, markdown tables, machine load.

JSON goes through `hessian_spectra.results.write_json` and figures through
`hessian_spectra.figures`; this module holds only what the experiments alone need.
"""

from __future__ import annotations

import csv
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hessian_spectra._atomic import atomic_open


@dataclass(frozen=True)
class Claim:
    """A statement checked on the run's numbers.

    Attributes:
        key: short stable name (used by the document and tests).
        source: "study" (claimed in the study) or "library" (what we claim).
        statement: the claim in words.
        holds: whether the run's numbers satisfy it.
        evidence: the numbers that decide it.
    """

    key: str
    source: str
    statement: str
    holds: bool
    evidence: dict[str, Any]


def derive_seed(*keys: int) -> int:
    """A 32-bit seed derived from a tuple of integers (NumPy SeedSequence).

    Every matrix and sketch of an experiment gets its own seed, derived from the
    run's seed and its position, so any single one can be redrawn alone.
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write `rows` (dicts) with exactly `columns`, in that order (atomically)."""
    path = Path(path)
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row[c]) for c in columns})
    return path


def _csv_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return repr(v)
    return v


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV as dicts of strings."""
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))


def machine_info() -> dict[str, Any]:
    """CPU count, torch threads and the load average (the machine may be shared)."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on every platform
        load = None
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1_5_15min": load,
        "machine": platform.machine(),
        "processor": platform.processor() or None,
    }


def markdown_table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(str(x) for x in r) + " |")
    return "\n".join(lines) + "\n"


#: Resolution of the experiments' figures; they are saved with a 256-colour
#: palette (`save_figure(..., dpi=FIGURE_DPI, palette=True)`) to stay small
#: enough to keep in docs/figures.
FIGURE_DPI = 80
