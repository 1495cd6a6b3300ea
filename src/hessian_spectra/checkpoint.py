"""Checkpoint files: atomic saves of an algorithm's state, refused when foreign or damaged.

A checkpoint is a `torch.save` of a small dictionary: a format tag, a version,
the kind of computation (e.g. ``"eigsh/lanczos"``), a fingerprint of the call
(operator size and dtype, the settings that change the arithmetic) and the
state itself (tensors, numbers, lists and dictionaries only, so that it loads
with ``weights_only=True`` and never runs code from the file).

Writes go to a temporary file in the same folder that is flushed to disk and
then renamed over the old checkpoint, so a crash or a kill at any moment leaves
either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

FORMAT = "hessian-spectra-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: damaged, foreign, or from another computation."""


def save_checkpoint(
    path: str | Path, kind: str, fingerprint: Mapping[str, Any], state: Mapping[str, Any]
) -> Path:
    """Write `state` atomically to `path` (a temporary file renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "fingerprint": dict(fingerprint),
        "state": dict(state),
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, kind: str, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """Read the state saved by `save_checkpoint`, checking that it belongs to this computation.

    Raises:
        CheckpointError: the file is truncated or corrupt, is not a
            hessian-spectra checkpoint, or was written by a different computation
            (another algorithm, operator size or setting).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(exc).__name__}: {exc}); it is "
            "truncated, corrupt or not a hessian-spectra checkpoint: delete it to start afresh"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a hessian-spectra checkpoint: delete it or pass another path"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a version {payload.get('version')} checkpoint; this library reads "
            f"version {VERSION}: start afresh"
        )
    if payload.get("kind") != kind:
        raise CheckpointError(
            f"{path} holds a {payload.get('kind')!r} computation, not {kind!r}: "
            "pass the checkpoint of this computation or a new path"
        )
    saved = payload.get("fingerprint", {})
    diffs = [
        f"{key}: saved {saved.get(key)!r}, now {value!r}"
        for key, value in fingerprint.items()
        if saved.get(key) != value
    ]
    if diffs:
        raise CheckpointError(
            f"{path} was written by a different computation ({'; '.join(diffs)}): "
            "call again with the same settings to resume, or use a new checkpoint path"
        )
    state = payload.get("state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no state: delete it to start afresh")
    return state


def generator_state(generator: torch.Generator) -> torch.Tensor:
    """The state of a CPU generator, to store in a checkpoint."""
    return generator.get_state().clone()


def restore_generator(state: torch.Tensor) -> torch.Generator:
    """A CPU generator set to a saved state."""
    gen = torch.Generator()
    gen.set_state(state)
    return gen
