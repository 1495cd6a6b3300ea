"""What the Lightning and HuggingFace callbacks share: arguments, schedule, monitor, measurement.

`CallbackCore` holds a callback's settings, builds the `SpectrumMonitor` on
the model and optimizer the trainer hands over, says when a measurement is
due (every N optimizer steps, every N epochs, or, given neither, whenever
the overhead budget allows), and measures with the training state kept
(`training_state_kept`). The callbacks only translate the frameworks' hooks
and loggers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hessian_spectra import _distributed
from hessian_spectra.analysis.monitor import SpectrumMonitor
from hessian_spectra.analysis.tracking import PREFIX
from hessian_spectra.integrations._state import training_state_kept
from hessian_spectra.results import MonitorResult

__all__ = ["CallbackCore"]


class CallbackCore:
    """A callback's settings, schedule and monitor (see the callbacks for the arguments)."""

    def __init__(
        self,
        data: Any,
        criterion: Callable[..., torch.Tensor] | None = None,
        *,
        loss_fn: Callable[..., Any] | None = None,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        k: int = 3,
        params: Any = None,
        tol: float = 1e-3,
        method: str = "lanczos",
        trace: bool = True,
        trace_matvecs: int = 30,
        layers: bool = False,
        density: int = 0,
        preconditioned: bool = True,
        max_overhead: float | None = 0.05,
        max_matvecs: int | None = None,
        seed: int = 0,
        prefix: str = PREFIX,
    ) -> None:
        if data is None:
            raise ValueError(
                "pass data: a fixed probe batch or list of batches the Hessian is taken on "
                "(the same at every measurement, so that the series is comparable)"
            )
        if criterion is not None and loss_fn is not None:
            raise ValueError("give at most one of criterion and loss_fn")
        if every_n_steps is not None and every_n_epochs is not None:
            raise ValueError("give at most one of every_n_steps and every_n_epochs")
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if every_n_steps is None and every_n_epochs is None and max_overhead is None:
            raise ValueError(
                "with neither every_n_steps nor every_n_epochs the overhead budget spaces the "
                "measurements: give max_overhead (e.g. 0.05), or a spacing"
            )
        self.data = data
        self.criterion = criterion
        self.loss_fn = loss_fn
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)
        self.every_n_epochs = None if every_n_epochs is None else int(every_n_epochs)
        self.options: dict[str, Any] = {
            "params": params,
            "k": int(k),
            "tol": tol,
            "method": method,
            "trace": trace,
            "trace_matvecs": trace_matvecs,
            "layers": layers,
            "density": density,
            "preconditioned": preconditioned,
            "max_overhead": max_overhead,
            "max_matvecs": max_matvecs,
            "seed": seed,
        }
        self.prefix = prefix
        self.monitor: SpectrumMonitor | None = None
        self._last_step: int | None = None

    def start(
        self,
        model: nn.Module,
        optimizer: Any = None,
        *,
        default_loss: Callable[..., Any] | None = None,
        writer: Any = None,
    ) -> SpectrumMonitor:
        """Build the monitor on the trainer's model and optimizer (once) and start its clock.

        Args:
            model: the module being trained.
            optimizer: its optimizer (for the preconditioned sharpness and the threshold).
            default_loss: the loss_fn when neither criterion nor loss_fn was given.
            writer: a TensorBoard writer the monitor writes each record to.
        """
        if self.monitor is None or self.monitor.model is not model:
            criterion, loss_fn = self.criterion, self.loss_fn
            if criterion is None and loss_fn is None:
                if default_loss is None:
                    raise ValueError(
                        "give criterion (called as criterion(model(inputs), targets)) or "
                        "loss_fn (called as loss_fn(model, batch))"
                    )
                loss_fn = default_loss
            self.monitor = SpectrumMonitor(
                model,
                criterion,
                self.data,
                loss_fn=loss_fn,
                every=1,
                optimizer=optimizer,
                writer=writer,
                **self.options,
            )
        else:
            self.monitor.optimizer = optimizer
            if writer is not None:
                self.monitor.writer = writer
        self.monitor.budget.start()
        return self.monitor

    def due_step(self, step: int) -> bool:
        """Whether optimizer step `step` (just taken) is a measuring point (once per step)."""
        if step == self._last_step or self.every_n_epochs is not None:
            return False
        if self.every_n_steps is not None and step % self.every_n_steps != 0:
            return False
        self._last_step = step
        return True

    def due_epoch(self, epoch: int) -> bool:
        """Whether the end of epoch `epoch` (counted from 0) is a measuring point."""
        return self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0

    def measure(self, step: int, **values: Any) -> dict[str, Any] | None:
        """Measure now if the budget allows (every rank agrees); the record, or None if skipped."""
        monitor = self.monitor
        if monitor is None:
            raise RuntimeError("the callback measured before training started")
        allowed = monitor.budget.allows()
        if _distributed.world_size() > 1:
            allowed = bool(_distributed.broadcast_from_main(allowed))  # every rank takes part
        if not allowed:
            return None
        with training_state_kept(monitor.model):
            return monitor.update(step, **values)

    def result(self) -> MonitorResult:
        """The series so far as a `MonitorResult`."""
        if self.monitor is None:
            raise RuntimeError("no measurement yet: the callback's training has not started")
        return self.monitor.result()
