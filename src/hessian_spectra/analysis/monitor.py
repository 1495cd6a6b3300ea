"""Watch the Hessian's spectrum during training: top-k eigenvalues, trace, per-layer traces.

A training loop calls a `SpectrumMonitor` every N steps or epochs. Each update
builds the Hessian at the current parameters and runs `eigsh` warm-started
from the previous update's eigenvectors (``v0=previous_eigenvectors``): when
the model changes slowly, the old eigenvectors are close to the new ones and
far fewer Hessian-vector products (HVPs) are needed than from a random start.
The saving is measured, not guessed, when ``compare_cold=True`` (each update
also runs the cold start it replaces, same seed); otherwise each update's count
is set beside the first update's, which was cold.

Given the training's optimizer, each update also records the optimizer's
edge-of-stability threshold (2 / lr for SGD, 38 / lr for Adam at beta1 = 0.9)
and, for Adam, AdamW, RMSprop or Adagrad, the top eigenvalues of the
preconditioned Hessian ``P^-1/2 H P^-1/2`` that this threshold bounds. A
TensorBoard ``writer`` gets every record as scalars (``hessian/lambda_1``,
...), and ``max_overhead`` spaces the updates so that they take at most that
share of the wall time (see ``analysis/tracking.py``).

Example:
    >>> import tempfile, torch, hessian_spectra as hs
    >>> _ = torch.manual_seed(0)
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> criterion, lr = nn.CrossEntropyLoss(), 0.5
    >>> mon = hs.SpectrumMonitor(model, criterion, (x, y), k=2, every=10, seed=0)
    >>> opt = torch.optim.SGD(model.parameters(), lr=lr)
    >>> for step in range(30):
    ...     opt.zero_grad()
    ...     loss = criterion(model(x), y)
    ...     loss.backward()
    ...     opt.step()
    ...     _ = mon(step, lr=lr, loss=loss.item())
    >>> [r["step"] for r in mon.records]
    [0, 10, 20]
    >>> out = tempfile.mkdtemp()
    >>> mon.to_json(f"{out}/spectrum.json").name
    'spectrum.json'
    >>> fig = mon.plot(f"{out}/spectrum.png")  # eigenvalues against 2/lr, trace, HVPs
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from hessian_spectra.algorithms import eigsh
from hessian_spectra.algorithms import trace as estimate_trace
from hessian_spectra.analysis.layers import group_blocks
from hessian_spectra.analysis.tracking import (
    OverheadBudget,
    adaptive_sharpness,
    density_entries,
    write_record,
)
from hessian_spectra.figures import save_figure
from hessian_spectra.operators import HessianOperator
from hessian_spectra.operators.model import modes_kept
from hessian_spectra.plots import plot_monitor
from hessian_spectra.results import MonitorKeys as Key
from hessian_spectra.results import MonitorResult


class SpectrumMonitor:
    """Tracks the top-k Hessian eigenvalues, the trace and optionally per-layer traces.

    Args:
        model: the network being trained (read at each update, never changed).
        criterion: called as ``criterion(model(inputs), targets)``; or None with `loss_fn`.
        data: the batch or re-iterable of batches the Hessian is taken on
            (a fixed subset keeps the series comparable); `update` can override it.
        loss_fn: instead of `criterion`, a closure ``loss_fn(model, batch)``.
        params: which parameters (None: all trainable; a regex, names or modules).
        k: how many top eigenvalues to track.
        every: `__call__` updates when ``step % every == 0``.
        tol: the eigensolver's relative residual tolerance.
        method: the eigensolver ("lanczos" or "block").
        warm_start: start each eigensolve from the previous eigenvectors.
        compare_cold: also run the cold start each warm update replaces, to
            measure the HVPs saved (doubles the eigensolver cost; for studies).
        trace: estimate the trace at each update (``trace_matvecs`` HVPs, XTrace).
        trace_matvecs: the trace estimator's HVP budget.
        layers: also estimate per-layer traces (from the same probes; a layer is a
            module holding parameters, as in `layer_traces`).
        seed: seed of every random start and probe (the same at each update,
            so that changes in the series come from the model, not the probes).
        max_matvecs: cap on each eigensolve's HVPs.
        optimizer: the training's optimizer: each update records its stability
            threshold and, for Adam, AdamW, RMSprop or Adagrad (once they have
            stepped), the top-k eigenvalues of ``P^-1/2 H P^-1/2`` (warm-started).
        preconditioned: compute those preconditioned eigenvalues (given an optimizer).
        density: Lanczos steps of a one-probe spectral density at each update (0: none).
        writer: a TensorBoard writer (``add_scalar``; ``add_histogram_raw`` for the
            density), e.g. ``torch.utils.tensorboard.SummaryWriter``; every record
            is written at its step.
        max_overhead: the share of the wall time since the first call that
            updates may take (e.g. 0.05); `__call__` skips a due update that would
            exceed it. None: no budget.
        eval_mode: put the model in eval mode during an update (BatchNorm and
            Dropout must not act in train mode while the Hessian is taken), then
            restore every submodule's own mode (a frozen eval-mode layer inside
            a train-mode model stays in eval mode).
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Callable[..., torch.Tensor] | None = None,
        data: Any = None,
        *,
        loss_fn: Callable[..., Any] | None = None,
        params: Any = None,
        k: int = 1,
        every: int = 1,
        tol: float = 1e-3,
        method: str = "lanczos",
        warm_start: bool = True,
        compare_cold: bool = False,
        trace: bool = True,
        trace_matvecs: int = 30,
        layers: bool = False,
        seed: int = 0,
        max_matvecs: int | None = None,
        eval_mode: bool = True,
        optimizer: Any = None,
        preconditioned: bool = True,
        density: int = 0,
        writer: Any = None,
        max_overhead: float | None = None,
    ) -> None:
        if (criterion is None) == (loss_fn is None):
            raise ValueError("give exactly one of `criterion` or `loss_fn`")
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if int(every) < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        if method not in ("lanczos", "block"):
            raise ValueError(
                f"method must be 'lanczos' or 'block' (warm-startable), got {method!r}"
            )
        self.model = model
        self.criterion = criterion
        self.data = data
        self.loss_fn = loss_fn
        self.params = params
        self.k = int(k)
        self.every = int(every)
        self.tol = float(tol)
        self.method = method
        self.warm_start = bool(warm_start)
        self.compare_cold = bool(compare_cold)
        self.trace = bool(trace)
        self.trace_matvecs = int(trace_matvecs)
        self.layers = bool(layers)
        self.seed = int(seed)
        self.max_matvecs = max_matvecs
        self.eval_mode = bool(eval_mode)
        self.optimizer = optimizer
        self.preconditioned = bool(preconditioned)
        if int(density) < 0:
            raise ValueError(f"density must be a number of Lanczos steps >= 0, got {density}")
        self.density = int(density)
        self.writer = writer
        self.budget = OverheadBudget(max_overhead)
        self._pvectors: torch.Tensor | None = None
        self.records: list[dict[str, Any]] = []
        self._vectors: torch.Tensor | None = None
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ updates
    def __call__(self, step: int, **values: Any) -> dict[str, Any] | None:
        """Update when ``step % every == 0``; returns the new record, else None.

        Args:
            step: the training step or epoch.
            **values: extra numbers to keep with the record (e.g. ``lr=0.1, loss=...``).
        """
        if int(step) % self.every != 0:
            return None
        if not self.budget.allows():
            return None
        return self.update(step, **values)

    def _operator(self, data: Any) -> HessianOperator:
        if self.loss_fn is not None:
            return HessianOperator(self.model, data=data, loss_fn=self.loss_fn, params=self.params)
        return HessianOperator(self.model, self.criterion, data, params=self.params)

    def update(self, step: int, *, data: Any = None, **values: Any) -> dict[str, Any]:
        """Measure the spectrum now and append a record.

        Args:
            step: the training step or epoch this record belongs to.
            data: the data for this update only (default: the monitor's).
            **values: extra numbers to keep with the record.

        Returns:
            The record (also appended to `records`).
        """
        data = self.data if data is None else data
        if data is None:
            raise ValueError("no data: give it to SpectrumMonitor(...) or to update(data=...)")
        t0 = time.perf_counter()
        with modes_kept(self.model):
            if self.eval_mode:
                self.model.eval()
            op = self._operator(data)
            n = op.shape[0]
            if self.k >= n:
                raise ValueError(f"k={self.k} must be below the parameter count {n}")
            v0 = self._vectors if self.warm_start else None
            if v0 is not None and v0.shape[0] != n:
                v0 = None  # the parameter set changed size: start cold
            kwargs: dict[str, Any] = {
                "which": "LA",
                "method": self.method,
                "tol": self.tol,
                "seed": self.seed,
            }
            if self.max_matvecs is not None:
                kwargs["max_matvecs"] = self.max_matvecs
            res = eigsh(op, self.k, v0=v0, **kwargs)
            record: dict[str, Any] = {
                Key.STEP: int(step),
                Key.EIGENVALUES: [float(x) for x in res.eigenvalues],
                Key.RESIDUALS: [float(x) for x in res.residuals],
                Key.CONVERGED: [bool(x) for x in res.converged],
                Key.EIG_MATVECS: int(res.num_matvecs),
                Key.WARM: v0 is not None,
                Key.COLD_MATVECS: None,
            }
            if v0 is not None and self.compare_cold:
                cold = eigsh(self._operator(data), self.k, v0=None, **kwargs)
                record[Key.COLD_MATVECS] = int(cold.num_matvecs)
                record[Key.COLD_EIGENVALUES] = [float(x) for x in cold.eigenvalues]
            elif v0 is None:
                record[Key.COLD_MATVECS] = int(res.num_matvecs)
            self._vectors = res.eigenvectors.detach().clone()
            if self.trace or self.layers:
                blocks = None
                if self.layers:
                    blocks = group_blocks(op.blocks)  # one block per layer (module)
                tr = estimate_trace(
                    op,
                    method="xtrace",
                    num_matvecs=self.trace_matvecs,
                    seed=self.seed,
                    blocks=blocks,
                )
                record[Key.TRACE] = float(tr.estimate)
                record[Key.TRACE_STDERR] = float(tr.stderr)
                record[Key.TRACE_MATVECS] = int(tr.num_matvecs)
                if self.layers and tr.block_estimates is not None:
                    errs = tr.block_stderrs or {}
                    record[Key.LAYER_TRACES] = {
                        str(name): [float(est), float(errs.get(name, float("nan")))]
                        for name, est in tr.block_estimates.items()
                    }
            self._extras(op, record)
        record[Key.SECONDS] = time.perf_counter() - t0
        record[Key.WALL] = time.perf_counter() - self._t0
        for key, val in values.items():
            if key in record:
                raise ValueError(f"{key!r} is a name the monitor records itself; rename it")
            record[key] = _plain(val)
        self.records.append(record)
        self.budget.spend(record[Key.SECONDS])
        if self.writer is not None:
            write_record(self.writer, record, int(step))
        return record

    def _extras(self, op: HessianOperator, record: dict[str, Any]) -> None:
        """The size, the optimizer's threshold and preconditioned top-k, the density."""
        record[Key.SIZE] = int(op.shape[0])
        if self.optimizer is not None:
            kwargs: dict[str, Any] = {"method": self.method, "tol": self.tol, "seed": self.seed}
            if self.max_matvecs is not None:
                kwargs["max_matvecs"] = self.max_matvecs
            entries, vectors = adaptive_sharpness(
                op,
                self.optimizer,
                self.k,
                v0=self._pvectors if self.warm_start else None,
                preconditioned=self.preconditioned,
                which="LA",
                **kwargs,
            )
            record.update(entries)
            if vectors is not None:
                self._pvectors = vectors
        if self.density:
            record.update(density_entries(op, self.density, self.seed))

    # ------------------------------------------------------------------ summaries
    @property
    def hvps_saved(self) -> int | None:
        """HVPs saved by warm starts against measured cold starts (None: none measured)."""
        pairs = [
            (r[Key.COLD_MATVECS], r[Key.EIG_MATVECS])
            for r in self.records
            if r[Key.WARM] and r.get(Key.COLD_MATVECS) is not None
        ]
        if not pairs:
            return None
        return int(sum(c - w for c, w in pairs))

    @property
    def num_matvecs(self) -> int:
        """All HVPs the monitor spent (cold comparisons included)."""
        total = 0
        for r in self.records:
            total += r[Key.EIG_MATVECS] + r.get(Key.TRACE_MATVECS, 0)
            total += r.get(Key.PRECONDITIONED_MATVECS, 0) + r.get(Key.DENSITY_MATVECS, 0)
            if r[Key.WARM] and r.get(Key.COLD_MATVECS) is not None:
                total += r[Key.COLD_MATVECS]
        return total

    def result(self) -> MonitorResult:
        """The time series as a frozen result record (JSON round trip with `load_result`)."""
        return MonitorResult(
            records=[dict(r) for r in self.records],
            k=self.k,
            hvps_saved=self.hvps_saved,
            num_matvecs=self.num_matvecs,
            seconds=float(sum(r[Key.SECONDS] for r in self.records)),
            history=(),
            seed=self.seed,
            settings={
                "k": self.k,
                "every": self.every,
                "tol": self.tol,
                "method": self.method,
                "warm_start": self.warm_start,
                "compare_cold": self.compare_cold,
                "trace": self.trace,
                "trace_matvecs": self.trace_matvecs,
                "layers": self.layers,
                "optimizer": None if self.optimizer is None else type(self.optimizer).__name__,
                "density": self.density,
                **self.budget.summary(),
            },
        )

    def to_json(self, path: str | Path) -> Path:
        """Write the time series to `path` (JSON with provenance)."""
        return self.result().to_json(path)

    def plot(
        self,
        path: str | Path | None = None,
        *,
        lr_key: str | None = "lr",
        x_label: str = "training step",
    ) -> Figure:
        """Plot the series (eigenvalues with 2/lr where an ``lr`` was recorded, trace, HVPs).

        Args:
            path: where to save a PNG (None: only return the figure).
            lr_key: the recorded value holding the learning rate of plain gradient
                descent, whose stability threshold 2/lr is drawn; None draws none
                (e.g. for Adam or momentum, where 2/lr is not the threshold).
            x_label: what the steps count.
        """
        fig = plot_monitor(self.result(), lr_key=lr_key, x_label=x_label)
        if path is not None:
            save_figure(fig, path)
        return fig


def _plain(val: Any) -> Any:
    """A JSON-friendly copy of a value a training loop passes (tensors become numbers)."""
    if isinstance(val, torch.Tensor):
        return val.item() if val.numel() == 1 else val.detach().cpu().tolist()
    if isinstance(val, np.generic):
        return val.item()
    if isinstance(val, np.ndarray):
        return val.tolist()
    return val
