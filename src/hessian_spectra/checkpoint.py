"""Checkpoint files: atomic saves of an algorithm's state, refused when foreign or damaged.

A checkpoint is a `torch.save` of a small dictionary: a format tag, a version,
the kind of computation (e.g. ``"eigsh/lanczos"``), a fingerprint of the call
(operator size and dtype, the settings that change the arithmetic) and the
state itself (tensors, numbers, lists and dictionaries only, so that it loads
with ``weights_only=True`` and never runs code from the file).

Writes go through the library's one atomic writer (`hessian_spectra._atomic`):
a temporary file in the same folder, flushed to disk, then renamed over the old
checkpoint, so a crash or a kill at any moment leaves either the previous
checkpoint or the new one, never a torn file. The temporary files that killed
saves leave behind are removed when the checkpoint is next saved or loaded.

This module is the file format and the save/resume mechanics only; which seed a
resumed run uses, and how an algorithm hooks its loop to a `RunCheckpoint`,
belong to the algorithms' run context (`hessian_spectra.algorithms._run`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from hessian_spectra._atomic import atomic_open, clean_stale
from hessian_spectra._distributed import is_main_process

FORMAT = "hessian-spectra-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: damaged, foreign, or from another computation."""


def save_checkpoint(
    path: str | Path, kind: str, fingerprint: Mapping[str, Any], state: Mapping[str, Any]
) -> Path:
    """Write `state` atomically to `path` (a temporary file renamed over it).

    Temporary files of earlier, killed saves of `path` are removed first.
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "fingerprint": dict(fingerprint),
        "state": dict(state),
    }
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)
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
    if is_main_process():  # only rank 0 writes, so only rank 0 cleans up after its writes
        clean_stale(path)
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


DEFAULT_EVERY = 10


class RunCheckpoint:
    """Periodic atomic saves of one algorithm run, and its resumption.

    An algorithm builds one per call that has a checkpoint path. Its loop calls
    `boundary()` after every iteration (a consistent state: the iteration's
    products applied and its history record written); every `every`
    boundaries the state is written. State that only changes inside an
    iteration's short update window (after the products) is read at save time
    through `state`; small state that changes earlier in an iteration (the
    generator drawing probes before the product, the product counter) is
    captured at each boundary through `snapshot`. The algorithm calls
    `dirty()` right before it updates its state; an exception (KeyboardInterrupt
    included) raised while the state is clean, e.g. during a product or from a
    callback, saves the state of the last boundary before it propagates, and
    one raised while dirty leaves the last periodic save in place, which the
    atomic write keeps valid. Only the main process (rank 0) writes.

    Args:
        path: the checkpoint file.
        kind: the computation, e.g. ``"eigsh/lanczos"``.
        fingerprint: the settings that must match to resume.
        every: save every this many iterations.
        resume: continue from `path` when it exists; without it an existing file
            is refused (it holds an earlier run), so a stale state is never
            picked up by accident.
    """

    def __init__(
        self,
        path: str | Path,
        kind: str,
        fingerprint: Mapping[str, Any],
        *,
        every: int = DEFAULT_EVERY,
        resume: bool = False,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"checkpoint_every must be a positive int, got {every!r}")
        self.path = Path(path).expanduser()
        self.kind = kind
        self.fingerprint = dict(fingerprint)
        self.every = int(every)
        self.state: dict[str, Any] | None = None
        if self.path.is_dir():
            raise CheckpointError(f"checkpoint path {self.path} is a folder; give a file name")
        if self.path.exists():
            if not resume:
                raise CheckpointError(
                    f"{self.path} holds a saved run; pass resume=True to continue it, or "
                    "delete the file (or pass another path) to start afresh"
                )
            self.state = load_checkpoint(self.path, kind, self.fingerprint)
        self._state_fn: Callable[[], Mapping[str, Any]] | None = None
        self._snapshot_fn: Callable[[], Mapping[str, Any]] | None = None
        self._snapshot: dict[str, Any] | None = None
        self._clean = False
        self._since = 0
        self.saves = 0
        self.extra: dict[str, Any] = {}  # fixed entries written with every save (e.g. the seed)

    @property
    def resumed(self) -> bool:
        """Whether the run continues from a saved state (then `state` holds it)."""
        return self.state is not None

    def bind(
        self,
        state: Callable[[], Mapping[str, Any]],
        snapshot: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """Set the functions that return the run's state (see the class docstring)."""
        self._state_fn = state
        self._snapshot_fn = snapshot

    def dirty(self) -> None:
        """The run starts updating its state: not savable until the next boundary."""
        self._clean = False

    def boundary(self, *, periodic: bool = True) -> None:
        """A consistent state: capture the snapshot; save every `every` calls."""
        self._snapshot = dict(self._snapshot_fn()) if self._snapshot_fn is not None else {}
        self._clean = True
        if not periodic:
            return
        self._since += 1
        if self._since >= self.every:
            self.save()

    def save(self) -> None:
        """Write the state of the last boundary now (rank 0 only)."""
        if self._state_fn is None or self._snapshot is None:
            return
        self._since = 0
        if not is_main_process():
            return
        state = {**self.extra, **self._snapshot, **self._state_fn()}
        save_checkpoint(self.path, self.kind, self.fingerprint, state)
        self.saves += 1

    @contextmanager
    def guard(self) -> Iterator[RunCheckpoint]:
        """On any exception, save the last boundary's state if still clean, then re-raise."""
        try:
            yield self
        except BaseException:
            if self._clean:
                try:
                    self.save()
                except Exception as err:  # keep the original exception, the last save stays
                    warnings.warn(
                        f"could not save the checkpoint {self.path} on the way out ({err}); "
                        "it holds the last periodic save",
                        RuntimeWarning,
                        stacklevel=3,
                    )
            raise

    def finish(self) -> None:
        """The run completed: remove the checkpoint and any temporary files (rank 0 only)."""
        if is_main_process():
            self.path.unlink(missing_ok=True)
            clean_stale(self.path)


def open_run(
    path: str | Path | None,
    kind: str,
    fingerprint: Callable[[], Mapping[str, Any]],
    *,
    every: int | None,
    resume: bool,
) -> RunCheckpoint | None:
    """A `RunCheckpoint` for `path`, or None when no path is given (then resume is refused).

    `fingerprint` is called only when there is a path (it may hash a model's
    parameters).
    """
    if path is None:
        if resume:
            raise ValueError("resume=True needs a checkpoint path: pass checkpoint=PATH")
        if every is not None:
            raise ValueError("checkpoint_every needs a checkpoint path: pass checkpoint=PATH")
        return None
    return RunCheckpoint(
        path, kind, fingerprint(), every=DEFAULT_EVERY if every is None else every, resume=resume
    )
