"""The Hessian's spectrum during Lightning training: a `SpectrumCallback` for the Trainer.

Every N optimizer steps (or epochs, or as often as a 5 % time budget allows)
the callback measures the top-k Hessian eigenvalues on a fixed probe batch,
warm-started from the previous measurement's eigenvectors, the trace with its
standard error, and, when the optimizer is Adam, AdamW, RMSprop or Adagrad,
the preconditioned sharpness beside the raw one with the optimizer's
stability threshold (38 / lr for Adam at beta1 = 0.9). Values go to every
logger of the trainer as ``hessian/lambda_1``, ``hessian/lambda_2``, ...,
``hessian/trace`` (TensorBoard, CSV, W&B, ...), the density (``density=``
Lanczos steps) as a TensorBoard histogram, and the whole series stays in
``callback.result()`` (a `MonitorResult`). The training run is left exactly as
it was: parameters, gradients, optimizer state, RNG streams and modes are the
same with or without the callback (tested).

Needs the ``lightning`` extra: ``pip install 'hessian-spectra[lightning]'``.

Example::

    from hessian_spectra.integrations.lightning import SpectrumCallback

    probe = next(iter(train_loader))                       # a fixed batch
    cb = SpectrumCallback(probe, nn.CrossEntropyLoss(), every_n_steps=100, k=3)
    trainer = lightning.Trainer(max_epochs=10, callbacks=[cb])
    trainer.fit(module, train_loader)
    cb.result().to_json("spectrum.json")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

try:  # the optional extra this module exists for
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "hessian_spectra.integrations.lightning needs Lightning; install it with "
        "pip install 'hessian-spectra[lightning]'"
    ) from err

from hessian_spectra.analysis.tracking import PREFIX, density_histogram, record_scalars
from hessian_spectra.integrations._core import CallbackCore
from hessian_spectra.results import MonitorKeys as Key
from hessian_spectra.results import MonitorResult

__all__ = ["SpectrumCallback"]


class SpectrumCallback(pl.Callback):
    """Tracks the Hessian's spectrum during ``Trainer.fit``; logs it through the trainer's loggers.

    Args:
        data: the fixed probe batch ``(inputs, targets)`` or list of batches the
            Hessian is taken on (as for `HessianOperator`).
        criterion: called as ``criterion(module(inputs), targets)``, returning the
            batch's mean loss. Exactly one of criterion and loss_fn.
        loss_fn: called as ``loss_fn(module, batch)``, returning the mean loss or
            ``(mean_loss, num_samples)``.
        every_n_steps: measure after every N-th optimizer step.
        every_n_epochs: measure at the end of every N-th epoch (instead).
        k: how many top eigenvalues to track.
        params: which parameters (None: all trainable; names, a regex, modules).
        tol: the eigensolver's relative residual tolerance.
        method: ``"lanczos"`` or ``"block"`` (both warm-start).
        trace: estimate the trace (XTrace, ``trace_matvecs`` HVPs) with its standard error.
        trace_matvecs: the trace estimator's HVP budget.
        layers: per-layer traces too (``hessian/trace/<layer>``).
        density: Lanczos steps of a spectral density at each measurement,
            logged as a histogram (0: none).
        preconditioned: with an adaptive optimizer, also the top eigenvalues of
            ``P^-1/2 H P^-1/2`` (``hessian/preconditioned_lambda_1``, ...).
        max_overhead: the share of the training's wall time measurements may
            take (0.05: 5 %); a due measurement is skipped while it would exceed
            it. None: no budget (then give a spacing). With neither spacing
            given, measurements happen whenever the budget allows. The first
            measurement (the cold one) is always taken and the budget spaces
            the next ones, so a run shorter than about the first measurement's
            seconds / max_overhead ends above the budget; ``result().settings``
            reports the share spent (``overhead``) and the skipped measurements.
        max_matvecs: cap on each eigensolve's HVPs.
        seed: seed of the random starts and probes (the same at every measurement).
        prefix: the logged names' leading part.

    Attributes:
        monitor: the `SpectrumMonitor` (built when training starts).
    """

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
        super().__init__()
        self.core = CallbackCore(
            data,
            criterion,
            loss_fn=loss_fn,
            every_n_steps=every_n_steps,
            every_n_epochs=every_n_epochs,
            k=k,
            params=params,
            tol=tol,
            method=method,
            trace=trace,
            trace_matvecs=trace_matvecs,
            layers=layers,
            density=density,
            preconditioned=preconditioned,
            max_overhead=max_overhead,
            max_matvecs=max_matvecs,
            seed=seed,
            prefix=prefix,
        )

    @property
    def monitor(self) -> Any:
        """The `SpectrumMonitor` (None before training starts)."""
        return self.core.monitor

    def result(self) -> MonitorResult:
        """The series measured so far, with the overhead spent (``settings["overhead"]``)."""
        return self.core.result()

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.core.start(pl_module, optimizer)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = int(trainer.global_step)
        if step > 0 and self.core.due_step(step):
            self._measure(trainer, step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.core.due_epoch(int(trainer.current_epoch)):
            self._measure(trainer, int(trainer.global_step))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        monitor = self.core.monitor
        if monitor is None:
            return
        summary = {f"{self.core.prefix}/overhead": float(monitor.budget.overhead)}
        for logger in trainer.loggers:
            logger.log_metrics(summary, step=int(trainer.global_step))

    # ------------------------------------------------------------------ logging
    def _measure(self, trainer: pl.Trainer, step: int) -> None:
        record = self.core.measure(step, epoch=int(trainer.current_epoch))
        if record is None:
            return
        metrics = record_scalars(record, self.core.prefix)
        nodes, weights = record.get(Key.DENSITY_NODES), record.get(Key.DENSITY_WEIGHTS)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            experiment: Any = getattr(logger, "experiment", None)
            if nodes and weights and hasattr(experiment, "add_histogram_raw"):
                hist = density_histogram(nodes, weights, int(record.get(Key.SIZE) or 1))
                experiment.add_histogram_raw(
                    f"{self.core.prefix}/density", global_step=step, **hist
                )
