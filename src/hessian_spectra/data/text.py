"""Real text available offline: Python's own standard-library source, character by character.

`python_source` reads a fixed list of standard-library modules (present in
every CPython since 3.8), so language models train on real text without a
download. The text depends on the Python version a little; `text_digest`
names exactly what was read. `char_vocab` maps the most frequent characters
to ids (the rest to one "other" id) and `windows` cuts the encoded text into
sequences of equal length.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections import Counter
from pathlib import Path

import torch

#: Standard-library modules read by `python_source`, in this order.
SOURCE_MODULES = (
    "textwrap.py",
    "string.py",
    "fnmatch.py",
    "shlex.py",
    "colorsys.py",
    "bisect.py",
    "heapq.py",
    "keyword.py",
    "glob.py",
    "calendar.py",
)


def python_source(max_chars: int | None = None) -> str:
    """The concatenated source of `SOURCE_MODULES` (the first `max_chars` characters)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in SOURCE_MODULES:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is not there: this Python installation ships no standard-library "
                "source; use a CPython with its Lib/ folder (the default on every platform)"
            )
        parts.append(path.read_text(encoding="utf-8"))
    text = "\n".join(parts)
    return text if max_chars is None else text[: int(max_chars)]


def text_digest(text: str) -> str:
    """A short SHA-256 digest of `text`, naming the data a run used."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def char_vocab(text: str, size: int) -> dict[str, int]:
    """The `size` - 1 most frequent characters -> ids 1..size-1; id 0 is every other character.

    Ties are broken by the character, so the vocabulary is deterministic.
    """
    if size < 2:
        raise ValueError(f"size must be at least 2, got {size}")
    counts = Counter(text)
    ranked = sorted(counts, key=lambda c: (-counts[c], c))[: size - 1]
    return {c: i + 1 for i, c in enumerate(ranked)}


def encode(text: str, vocab: dict[str, int]) -> torch.Tensor:
    """Character ids (int64) of `text`; characters outside `vocab` get id 0."""
    return torch.tensor([vocab.get(c, 0) for c in text], dtype=torch.int64)


def windows(ids: torch.Tensor, length: int, count: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping sequences of `length` ids: (count, length), int64."""
    if length < 2:
        raise ValueError(f"length must be at least 2, got {length}")
    num = ids.numel() // length
    if count is not None:
        if count > num:
            raise ValueError(f"the text gives {num} sequences of {length}, not {count}")
        num = int(count)
    return ids[: num * length].reshape(num, length).clone()
