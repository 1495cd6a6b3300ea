"""One algorithm call's plumbing: the seed, the generator, the record, the checkpoint.

`RunContext` is what a long-running algorithm (``eigsh``, ``trace``,
``density``) opens around its loop instead of wiring these by hand:

- the one seed policy (`resolve_seed`): a resumed run takes its saved seed and
  refuses a different explicit one; None draws a seed (rank 0's when the
  operator reduces across ranks, so every rank computes the same thing); the
  seed is recorded in the result and seeds a CPU `torch.Generator`;
- a `Recorder`: the history (one record per iteration), the product and
  seconds counters, the progress bar and the user's callback;
- the checkpoint hooks: the `RunCheckpoint` of ``checkpoint=PATH`` (see
  `hessian_spectra.checkpoint`), saved periodically and when the call is left
  by an exception, resumed with ``resume=True``, removed when the call returns.

An algorithm without checkpoints (``sketch``) uses the same context without a
path; ``refine``, which draws nothing, uses a `Recorder` alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hessian_spectra._distributed import broadcast_from_main, world_size
from hessian_spectra._progress import progress_bar
from hessian_spectra.checkpoint import CheckpointError, RunCheckpoint, generator_state, open_run
from hessian_spectra.history import MATVECS, SECONDS
from hessian_spectra.operators.base import LinearOperator

Callback = Callable[[Mapping[str, Any]], bool | None]


def resolve_seed(
    seed: int | None, op: LinearOperator | None = None, run: RunCheckpoint | None = None
) -> tuple[int, torch.Generator]:
    """The seed to record and a CPU generator seeded with it: the library's one seed policy.

    A run resumed from `run` uses the seed saved in it (an explicit different
    seed is refused). Otherwise None draws a seed; for an operator that reduces
    across ranks (``op.is_distributed``) the drawn seed is rank 0's, so that
    every rank runs the same computation.
    """
    if run is not None and run.state is not None:
        saved = int(run.state["seed"])
        if seed is not None and int(seed) != saved:
            raise CheckpointError(
                f"{run.path} was written with seed={saved}, this call has seed={seed}: call "
                "again with the same seed (or seed=None) to resume, or use a new checkpoint path"
            )
        seed = saved
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0])
        if op is not None and op.is_distributed:
            seed = int(broadcast_from_main(seed))  # type: ignore[call-overload]
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return int(seed), torch.Generator().manual_seed(int(seed))


class Recorder:
    """Counts products and seconds, keeps the history, drives the progress bar and callback.

    Use as a context manager around an algorithm's loop; call `record(...)`
    once per iteration with the current estimates. `record` returns True when
    the user's callback asked to stop.
    """

    def __init__(
        self,
        op: LinearOperator,
        desc: str,
        *,
        total: int | None = None,
        progress: bool = False,
        callback: Callback | None = None,
    ) -> None:
        self.op = op
        self.desc = desc
        self.total = total
        self.progress = progress
        self.callback = callback
        self.history: list[dict[str, Any]] = []
        # called after each history record is appended, before the callback
        # (a run's checkpoint marks its consistent states there)
        self.on_record: Callable[[], None] | None = None
        self._prior_matvecs = 0  # products and seconds of the run before a resume
        self._prior_seconds = 0.0
        self._start_matvecs = op.num_matvecs
        self._t0 = time.perf_counter()
        self._stack = ExitStack()
        self._bar: Any = None
        self._shown = 0

    def __enter__(self) -> Recorder:
        self._t0 = time.perf_counter()
        self._start_matvecs = self.op.num_matvecs
        self._bar = self._stack.enter_context(
            progress_bar(self.total, self.desc, enabled=self.progress)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def matvecs(self) -> int:
        """Products of the run (since the recorder started, plus those before a resume)."""
        return self._prior_matvecs + self.op.num_matvecs - self._start_matvecs

    @property
    def seconds(self) -> float:
        return self._prior_seconds + time.perf_counter() - self._t0

    def state_dict(self) -> dict[str, Any]:
        """History, products and seconds so far (for a checkpoint)."""
        return {"history": list(self.history), "matvecs": self.matvecs, "seconds": self.seconds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a saved run: its history, products and seconds count on from there."""
        self.history = [dict(r) for r in state["history"]]
        self._start_matvecs = self.op.num_matvecs
        self._t0 = time.perf_counter()
        self._prior_matvecs = int(state["matvecs"])
        self._prior_seconds = float(state["seconds"])
        if self._bar is not None:
            self._bar.update(self._prior_matvecs - self._shown)
            self._shown = self._prior_matvecs

    def record(self, estimates: Mapping[str, Any], *, postfix: str | None = None) -> bool:
        """Append one history record; returns True if the callback asks to stop.

        Args:
            estimates: the iteration's values under the keys of
                `hessian_spectra.history`; tensors and arrays become lists.
            postfix: a short text for the progress bar.
        """
        rec: dict[str, Any] = {MATVECS: self.matvecs, SECONDS: self.seconds}
        for key, val in estimates.items():
            if isinstance(val, torch.Tensor):
                val = val.detach().cpu().numpy()
            if isinstance(val, np.ndarray):
                val = val.tolist()
            elif isinstance(val, np.generic):
                val = val.item()
            rec[key] = val
        self.history.append(rec)
        if self.on_record is not None:
            self.on_record()
        if self._bar is not None:
            if postfix:  # before the update, which draws it
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(self.matvecs - self._shown)
            self._shown = self.matvecs
        if self.callback is not None:
            return bool(self.callback(rec))
        return False

    def finish(self, postfix: str | None = None) -> None:
        """Draw the bar's last state: every product counted, and the returned value.

        Call once the result is known, with its value in the records' postfix
        format, so that the bar ends on what the call returns (not on the last
        record's estimate, nor with products taken after it uncounted).
        """
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.update(self.matvecs - self._shown)
        self._shown = self.matvecs
        self._bar.refresh()

    def settings(self, **settings: Any) -> dict[str, Any]:
        """The call's settings plus the operator's description, for the result."""
        out = dict(settings)
        out["operator"] = {
            "type": type(self.op).__name__,
            "n": self.op.shape[0],
            "dtype": str(self.op.dtype),
            "device": str(self.op.device),
        }
        if self.op.is_distributed:
            out["operator"]["ranks"] = world_size()
        return out


class RunContext:
    """The seed, generator, recorder and checkpoint of one algorithm call.

    Build it once the call's arguments are checked (a checkpoint path is
    opened and a saved run read here), then run the loop inside ``with ctx:``.
    The block shows the progress bar; an exception leaving it saves the
    checkpoint's last consistent state; leaving it normally removes the
    checkpoint file. Inside, the algorithm restores its own state from
    `saved` (None for a fresh run), calls `track` once with a function that
    returns that state, `dirty` right before it changes its state, and
    `record` once per iteration (a consistent state: the checkpoint's
    boundary, saved every `checkpoint_every` records).

    Args:
        op: the operator (its products are counted; a distributed one gets
            rank 0's drawn seed).
        desc: the progress bar's label.
        seed: the call's seed (None: drawn, or the saved one when resuming).
        total: products the progress bar counts to: the run's bound (None
            when the run has none of its own: the bar then counts without an
            end and an ETA).
        progress: show a progress bar.
        callback: called with each history record; returning True stops.
        checkpoint: the checkpoint file, or None for none.
        kind: the computation saved in the checkpoint, e.g. ``"eigsh/lanczos"``.
        fingerprint: returns what must match to resume (called only with a
            checkpoint path; it may hash a model's parameters).
        checkpoint_every: records between periodic saves (default 10).
        resume: continue the run saved in `checkpoint` when the file exists.
    """

    def __init__(
        self,
        op: LinearOperator,
        desc: str,
        *,
        seed: int | None,
        total: int | None = None,
        progress: bool = False,
        callback: Callback | None = None,
        checkpoint: str | Path | None = None,
        kind: str = "",
        fingerprint: Callable[[], Mapping[str, Any]] | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
    ) -> None:
        self.op = op
        self.checkpoint = open_run(
            checkpoint,
            kind,
            fingerprint if fingerprint is not None else op.fingerprint,
            every=checkpoint_every,
            resume=resume,
        )
        self.seed, self.generator = resolve_seed(seed, op, self.checkpoint)
        if self.checkpoint is not None:
            self.checkpoint.extra["seed"] = self.seed
        self.recorder = Recorder(op, desc, total=total, progress=progress, callback=callback)
        self._stack = ExitStack()

    def __enter__(self) -> RunContext:
        self._stack = ExitStack()
        if self.checkpoint is not None:
            self._stack.enter_context(self.checkpoint.guard())
        self._stack.enter_context(self.recorder)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: Any) -> bool:
        suppressed = bool(self._stack.__exit__(exc_type, *exc))
        if exc_type is None and self.checkpoint is not None:
            self.checkpoint.finish()
        return suppressed

    # ------------------------------------------------------------------ the record
    def record(self, estimates: Mapping[str, Any], *, postfix: str | None = None) -> bool:
        """One history record (see `Recorder.record`); True when the callback asks to stop."""
        return self.recorder.record(estimates, postfix=postfix)

    def finish(self, postfix: str | None = None) -> None:
        """End the progress bar on the returned value (see `Recorder.finish`)."""
        self.recorder.finish(postfix)

    @property
    def matvecs(self) -> int:
        """Products of the run so far (those before a resume included)."""
        return self.recorder.matvecs

    @property
    def seconds(self) -> float:
        """Wall seconds of the run so far (those before a resume included)."""
        return self.recorder.seconds

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.recorder.history

    def settings(self, **settings: Any) -> dict[str, Any]:
        """The call's settings plus the operator's description, for the result."""
        return self.recorder.settings(**settings)

    # ------------------------------------------------------------------ the checkpoint
    @property
    def saved(self) -> Mapping[str, Any] | None:
        """The saved state of a resumed run (the algorithm's entries among them), else None."""
        return None if self.checkpoint is None else self.checkpoint.state

    @property
    def resumed(self) -> bool:
        """Whether the run continues from a saved state."""
        return self.checkpoint is not None and self.checkpoint.resumed

    def track(self, state: Callable[[], Mapping[str, Any]]) -> None:
        """Checkpoint the run from here on; call once the algorithm's own state is restored.

        Restores the recorder and the generator of a resumed run, makes every
        record a checkpoint boundary, and saves `state()` (the algorithm's own
        state, read at save time) with the recorder and generator captured at
        the last boundary. Nothing without a checkpoint path.
        """
        run = self.checkpoint
        if run is None:
            return
        if run.state is not None:
            self.recorder.load_state_dict(run.state["recorder"])
            self.generator.set_state(run.state["generator"])
        self.recorder.on_record = run.boundary
        run.bind(
            state=state,
            snapshot=lambda: {
                "recorder": self.recorder.state_dict(),
                "generator": generator_state(self.generator),
            },
        )
        run.boundary(periodic=False)

    def dirty(self) -> None:
        """The algorithm starts changing its state: not savable until the next boundary."""
        if self.checkpoint is not None:
            self.checkpoint.dirty()

    def boundary(self, *, periodic: bool = True) -> None:
        """A consistent state outside a record (e.g. after a restart); see `RunCheckpoint`."""
        if self.checkpoint is not None:
            self.checkpoint.boundary(periodic=periodic)


__all__ = ["Callback", "Recorder", "RunContext", "resolve_seed"]
