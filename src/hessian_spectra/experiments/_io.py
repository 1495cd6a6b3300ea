"""Output plumbing shared by the experiments: seeds, CSV, JSON, figures, machine load."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hessian_spectra.results import provenance


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


def to_jsonable(value: Any) -> Any:
    """NumPy/torch scalars and arrays to plain JSON values (non-finite floats as strings)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write `data` as indented JSON (with the library's provenance added)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"provenance": provenance(), **to_jsonable(dict(data))}
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return path


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write `rows` (dicts) with exactly `columns`, in that order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
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


def save_figure(fig: Any, path: str | Path, data: Mapping[str, Any], dpi: int = 80) -> Path:
    """Save a matplotlib figure as PNG and the numbers it draws as JSON beside it."""
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    shrink_png(path)
    write_json(path.with_suffix(".json"), {"figure": path.name, **data})
    return path


def shrink_png(path: str | Path) -> None:
    """Rewrite a PNG with a 256-colour palette (no dithering): a third of the bytes.

    Line plots use few colours, so the palette loses nothing visible; the
    figures stay small enough to keep in the repository's documentation.
    """
    from PIL import Image

    with Image.open(path) as im:
        q = im.convert("RGB").quantize(
            colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    q.save(path, optimize=True)


def new_figure(width: float = 6.4, height: float = 4.2, **subplots: Any) -> tuple[Any, Any]:
    """A figure and axes built without pyplot (no display, no global state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(**subplots) if subplots else fig.subplots()
    return fig, axes
