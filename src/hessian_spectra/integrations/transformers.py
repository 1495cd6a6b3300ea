"""The Hessian's spectrum during HuggingFace ``Trainer`` training: a `SpectrumCallback`.

Every N optimizer steps (or epochs, or as often as a 5 % time budget allows)
the callback measures, on a fixed probe batch, the top-k Hessian eigenvalues
(warm-started), the trace with its standard error and, for Adam, AdamW,
RMSprop or Adagrad, the preconditioned sharpness with the optimizer's
stability threshold (38 / lr for AdamW at beta1 = 0.9). The loss is the
model's own by default: ``model(**batch).loss``, each probe batch weighted by
its number of label tokens (``labels != -100``, after the one-token shift of
causal language models), so a list of probe batches gives the token-weighted
mean loss the model trains on.

Where the values go: ``trainer.state.log_history`` (one entry per
measurement, saved in ``trainer_state.json``), a TensorBoard writer
(``writer=``, or, when the trainer reports to TensorBoard, one in the
trainer's TensorBoard folder) as ``hessian/lambda_1``, ``hessian/lambda_2``,
..., ``hessian/trace`` and the density histogram, and the whole series in
``callback.result()`` (a `MonitorResult`). A callback cannot add to the logs
the trainer sends to its reporters, hence the writer of its own. The
training run is left exactly as it was (parameters, gradients, optimizer
state, RNG streams, modes), which is tested.

Needs the ``hf`` extra: ``pip install 'hessian-spectra[hf]'``.

Example::

    from hessian_spectra.integrations.transformers import SpectrumCallback

    probe = next(iter(trainer.get_train_dataloader()))     # a fixed batch (a dict)
    trainer.add_callback(SpectrumCallback(probe, every_n_steps=50, k=3))
    trainer.train()
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

try:  # the optional extra this module exists for
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.integrations.integration_utils import default_logdir
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "hessian_spectra.integrations.transformers needs transformers; install it with "
        "pip install 'hessian-spectra[hf]'"
    ) from err

from hessian_spectra.analysis.tracking import PREFIX, record_scalars
from hessian_spectra.integrations._core import CallbackCore
from hessian_spectra.results import MonitorResult

__all__ = ["SpectrumCallback", "model_loss"]

#: class-name endings of models whose loss shifts the labels by one token
_CAUSAL = ("ForCausalLM", "LMHeadModel")


def model_loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, int] | torch.Tensor:
    """The model's own loss on a dict batch, with the number of label tokens it averages over.

    ``model(**batch).loss`` is the mean over the tokens whose label is not
    -100; their count (after the one-token shift for causal language models)
    is the batch's weight, so several probe batches average as the model's
    training loss does. Without ``labels`` in the batch the loss is returned
    alone and weighted by the number of sequences.
    """
    if not isinstance(batch, dict):
        raise TypeError(
            "the model's own loss needs dict batches (model(**batch)), got "
            f"{type(batch).__name__}; pass criterion= or loss_fn= for other batches"
        )
    out = model(**batch)
    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    if loss is None:
        raise ValueError(
            "the model returned no loss: give the probe batches labels, or pass loss_fn="
        )
    labels = batch.get("labels")
    if labels is None or labels.ndim == 0:
        return loss
    if type(model).__name__.endswith(_CAUSAL) and labels.ndim > 1:
        labels = labels[..., 1:]
    return loss, int((labels != -100).sum())


class SpectrumCallback(TrainerCallback):
    """Tracks the Hessian's spectrum during ``Trainer.train`` (a ``transformers.TrainerCallback``).

    Args:
        data: the fixed probe batch (a dict, as the data collator makes it) or a
            list of them.
        criterion: called as ``criterion(model(inputs), targets)`` on
            ``(inputs, targets)`` batches; default: the model's own loss (`model_loss`).
        loss_fn: called as ``loss_fn(model, batch)``, returning the mean loss or
            ``(mean_loss, num_samples)``; default: `model_loss`.
        every_n_steps: measure after every N-th optimizer step.
        every_n_epochs: measure at the end of every N-th epoch (instead).
        k: how many top eigenvalues to track.
        params: which parameters (None: all trainable; names, a regex, modules).
        tol: the eigensolver's relative residual tolerance.
        method: ``"lanczos"`` or ``"block"`` (both warm-start).
        trace: estimate the trace (XTrace, ``trace_matvecs`` HVPs) with its standard error.
        trace_matvecs: the trace estimator's HVP budget.
        layers: per-layer traces too (``hessian/trace/<layer>``).
        density: Lanczos steps of a spectral density per measurement (0: none).
        preconditioned: with an adaptive optimizer, also the top eigenvalues of
            ``P^-1/2 H P^-1/2``.
        max_overhead: the share of the training's wall time measurements may
            take (0.05: 5 %); due measurements are skipped while they would exceed
            it. None: no budget (then give a spacing). The first measurement is
            always taken and the budget spaces the next ones, so a run shorter
            than about the first measurement's seconds / max_overhead ends above
            the budget; ``result().settings["overhead"]`` reports the share spent.
        max_matvecs: cap on each eigensolve's HVPs.
        seed: seed of the random starts and probes.
        prefix: the logged names' leading part.
        writer: a TensorBoard writer (``add_scalar``, ``add_histogram_raw``); default:
            one in the trainer's TensorBoard folder when ``report_to`` includes
            ``"tensorboard"``, else none.

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
        writer: Any = None,
    ) -> None:
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
        self.writer = writer
        self._own_writer: Any = None

    @property
    def monitor(self) -> Any:
        """The `SpectrumMonitor` (None before training starts)."""
        return self.core.monitor

    def result(self) -> MonitorResult:
        """The series measured so far, with the overhead spent (``settings["overhead"]``)."""
        return self.core.result()

    # ------------------------------------------------------------------ hooks
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        writer = self.writer
        if writer is None and state.is_world_process_zero and _reports_to_tensorboard(args):
            writer = self._own_writer = _trainer_tensorboard_writer(args)
        self.core.start(
            kwargs["model"], kwargs.get("optimizer"), default_loss=model_loss, writer=writer
        )

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        step = int(state.global_step)
        if self.core.due_step(step):
            self._measure(state, step)

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        epoch = int(round(state.epoch or 0.0)) - 1
        if self.core.due_epoch(epoch):
            self._measure(state, int(state.global_step))

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        monitor = self.core.monitor
        if monitor is not None and state.is_world_process_zero:
            overhead = float(monitor.budget.overhead)
            state.log_history.append(
                {f"{self.core.prefix}/overhead": overhead, "step": int(state.global_step)}
            )
            if monitor.writer is not None:
                monitor.writer.add_scalar(
                    f"{self.core.prefix}/overhead", overhead, int(state.global_step)
                )
                monitor.writer.flush()
        if self._own_writer is not None:
            self._own_writer.close()
            self._own_writer = None

    def _measure(self, state: TrainerState, step: int) -> None:
        record = self.core.measure(step, epoch=float(state.epoch or 0.0))
        if record is not None and state.is_world_process_zero:
            state.log_history.append({**record_scalars(record, self.core.prefix), "step": step})


def _reports_to_tensorboard(args: TrainingArguments) -> bool:
    report_to = args.report_to
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return "tensorboard" in names


def _trainer_tensorboard_writer(args: TrainingArguments) -> Any:
    """A SummaryWriter in the folder the trainer's own TensorBoard callback writes to."""
    from torch.utils.tensorboard import SummaryWriter  # optional extra: tensorboard

    log_dir = os.getenv("TENSORBOARD_LOGGING_DIR") or os.path.join(
        str(args.output_dir or "."), default_logdir()
    )
    return SummaryWriter(log_dir=os.path.expanduser(log_dir))
