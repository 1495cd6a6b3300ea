"""Plumbing shared by the experiments: claims, seeds, CSV, markdown tables, machine load.

JSON goes through `hessian_spectra.results.write_json` and figures through
`hessian_spectra.figures`; this module holds only what the experiments alone need.
"""

from __future__ import annotations

import csv
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hessian_spectra._atomic import atomic_open

#: The verdicts a claim can get. "holds partly" always comes with the numbers
#: (`Claim.numbers`); "not reproduced here" marks a claim about a regime this
#: run does not reach (it is neither confirmed nor refuted).
HOLDS = "holds"
PARTLY = "holds partly"
FAILS = "does not hold"
NOT_HERE = "not reproduced here"
VERDICTS = (HOLDS, PARTLY, FAILS, NOT_HERE)


@dataclass(frozen=True)
class Claim:
    """A statement checked on the run's numbers.

    Attributes:
        key: short stable name (used by the document and tests).
        source: "study" (claimed in the study) or "library" (what we claim).
        statement: the claim in words.
        verdict: one of `VERDICTS`.
        evidence: the numbers that decide it.
        numbers: the deciding numbers in words (the document quotes them).
    """

    key: str
    source: str
    statement: str
    verdict: str
    evidence: dict[str, Any]
    numbers: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def holds(self) -> bool:
        """Whether the claim holds in full."""
        return self.verdict == HOLDS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with `holds` (True only for a full "holds") beside the verdict."""
        return {
            "key": self.key,
            "source": self.source,
            "statement": self.statement,
            "verdict": self.verdict,
            "holds": self.holds,
            "numbers": self.numbers,
            "evidence": self.evidence,
        }


def trend_verdict(steps: Sequence[bool], ends: Sequence[bool]) -> str:
    """The verdict on a coarse claim of a trend ("the error falls as X grows").

    `steps` says, for every step between neighbouring settings, whether it goes
    the claimed way; `ends` says, for every series, whether its last setting
    beats its first. The claim holds when every step agrees; it holds partly
    when every series goes the claimed way end to end and at least half of the
    steps agree; otherwise it does not hold.
    """
    steps, ends = list(steps), list(ends)
    if steps and all(steps):
        return HOLDS
    if ends and all(ends) and 2 * sum(steps) >= len(steps):
        return PARTLY
    return FAILS


def kendall_trend(values: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau between position and value, and its z score under no trend.

    For a noisy series (HVPs per eigenvalue), whether it rises at each step
    says little (a series in random order rises at about half of its steps);
    tau counts every pair of positions, and z = 3 tau sqrt(m (m - 1)) /
    sqrt(2 (2m + 5)) is its normal approximation for m values without ties.
    """
    v = np.asarray(values, dtype=np.float64)
    m = len(v)
    if m < 2:
        return 0.0, 0.0
    i, j = np.triu_indices(m, 1)
    s = float(np.sign(v[j] - v[i]).sum())
    tau = s / (m * (m - 1) / 2)
    z = 3.0 * tau * math.sqrt(m * (m - 1)) / math.sqrt(2.0 * (2 * m + 5))
    return tau, z


def share_verdict(ok: Sequence[bool]) -> str:
    """The verdict on "in every case": holds for all, partly for a majority, else not."""
    ok = list(ok)
    if ok and all(ok):
        return HOLDS
    if 2 * sum(ok) > len(ok):
        return PARTLY
    return FAILS


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


def verdict_cell(counts: Mapping[str, int]) -> str:
    """'holds 5/5', or the verdicts with their counts ('3 holds, 2 partly')."""
    total = sum(counts.values())
    seen = {v: c for v, c in counts.items() if c}
    if len(seen) == 1:
        ((verdict, c),) = seen.items()
        return f"{verdict} {c}/{total}"
    short = {"holds": "holds", "holds partly": "partly", "does not hold": "not"}
    return ", ".join(f"{c} {short.get(v, v)}" for v, c in seen.items())
