"""The one atomic writer: every file the library or the CLI writes goes through it.

A file is written to a temporary file in the same folder, flushed and fsynced,
then renamed over the target (`os.replace` is atomic on POSIX and Windows), so a
kill at any moment leaves either the previous file or the new one, never a
truncated one. Temporary files are named ``.<name>.<random>.tmp``; a kill
between their creation and the rename leaves one behind, which `clean_stale`
removes, and which the next write of the same file removes too (two processes
writing one file at the same time are not supported: the last one would win
anyway, and now one of them fails instead).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "wb", *, newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on a clean exit it replaces `path`.

    Temporary files that earlier, killed writes of `path` left behind are
    removed first. On an exception (KeyboardInterrupt included) the temporary
    file is removed and `path` is left as it was.

    Args:
        path: the file to (re)write; its folder is created.
        mode: "wb" (bytes) or "w" (text, UTF-8).
        newline: for text mode, as in `open` (``""`` for the csv module).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        if mode == "wb":
            fh: IO[Any] = open(fd, "wb")  # noqa: SIM115 - closed below, before the rename
        else:
            fh = open(fd, "w", encoding="utf-8", newline=newline)  # noqa: SIM115
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def _is_stale(name: str, target: str) -> bool:
    """Whether `name` is a temporary file of a write of `target`.

    Today's writer names them ``.<target>.<8 random characters>.tmp``; earlier
    versions left ``<target>.<8 random characters>.tmp`` (checkpoints) and
    ``<target>.tmp`` (results and reports), which are removed as well.
    """
    if name == target + TMP_SUFFIX:
        return True
    pattern = r"\.?" + re.escape(target) + r"\.[a-z0-9_]{8}" + re.escape(TMP_SUFFIX)
    return re.fullmatch(pattern, name) is not None


def clean_stale(path: str | Path) -> list[Path]:
    """Remove the temporary files that killed writes of `path` left behind; return them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(
        p for p in path.parent.iterdir() if p.name != path.name and _is_stale(p.name, path.name)
    )
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
