"""Helpers every algorithm shares: seeds, random probes, and the run recorder."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch

from hessian_spectra._progress import progress_bar
from hessian_spectra.operators.base import LinearOperator

Callback = Callable[[Mapping[str, Any]], bool | None]


def resolve_seed(seed: int | None, op: LinearOperator | None = None) -> tuple[int, torch.Generator]:
    """The seed to record (drawn when None) and a CPU generator seeded with it.

    For an operator that reduces across ranks (``op.is_distributed``) a drawn
    seed is rank 0's, so that every rank runs the same computation.
    """
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0])
        if op is not None and op.is_distributed:
            from hessian_spectra._distributed import broadcast_from_main

            seed = int(broadcast_from_main(seed))  # type: ignore[call-overload]
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return int(seed), torch.Generator().manual_seed(int(seed))


def gaussian(op: LinearOperator, b: int, generator: torch.Generator) -> torch.Tensor:
    """An (n, b) standard normal block in the operator's dtype and device.

    Drawn on the CPU in float64 so that a seed gives the same numbers on every
    device and dtype.
    """
    Z = torch.randn((op.shape[0], b), generator=generator, dtype=torch.float64)
    return Z.to(dtype=op.dtype, device=op.device)


def rademacher(op: LinearOperator, b: int, generator: torch.Generator) -> torch.Tensor:
    """An (n, b) block of independent +-1 entries in the operator's dtype and device."""
    Z = torch.randint(0, 2, (op.shape[0], b), generator=generator, dtype=torch.int8)
    return (2 * Z - 1).to(dtype=op.dtype, device=op.device)


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

    def record(self, postfix: str | None = None, **estimates: Any) -> bool:
        """Append one history record; returns True if the callback asks to stop."""
        rec: dict[str, Any] = {"matvecs": self.matvecs, "seconds": self.seconds}
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
            self._bar.update(self.matvecs - self._shown)
            self._shown = self.matvecs
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
        if self.callback is not None:
            return bool(self.callback(rec))
        return False

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
            from hessian_spectra._distributed import world_size

            out["operator"]["ranks"] = world_size()
        return out
