"""A step size from the curvature: ``lr = c / lambda_max`` for plain SGD.

For gradient descent on a quadratic, the step ``1 / lambda_max`` is the
largest that still decreases every direction monotonically, and ``2 /
lambda_max`` is the edge of stability (LeCun, Simard, Pearlmutter 1993,
"Automatic learning rate maximization by on-line estimation of the Hessian's
eigenvectors", NeurIPS; Cohen et al. 2021, "Gradient descent on neural networks
typically occurs at the edge of stability", ICLR). `curvature_lr` turns a
largest-eigenvalue estimate into a step size; `CurvatureLR` does it during
training from a `SpectrumMonitor`, whose updates warm-start Lanczos from the
previous eigenvectors, so each costs a few HVPs.

With heavy-ball momentum beta the threshold becomes ``2 (1 + beta) / lambda_max``
and for Adam the raw Hessian's lambda_max is not the relevant number, so `c`
is the user's to choose there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from hessian_spectra.analysis.monitor import SpectrumMonitor
from hessian_spectra.results import EigshResult, MonitorKeys, MonitorResult


def _lambda_max(source: Any) -> float:
    if isinstance(source, SpectrumMonitor):
        if not source.records:
            raise ValueError(
                "the monitor has no record yet; call monitor.update(step) (or monitor(step)) first"
            )
        source = source.records[-1]
    if isinstance(source, MonitorResult):
        if not source.records:
            raise ValueError("the monitor result holds no record")
        source = source.records[-1]
    if isinstance(source, Mapping):
        values = source.get(MonitorKeys.EIGENVALUES)
        if not values:
            raise ValueError(f"the record has no {MonitorKeys.EIGENVALUES!r} entry")
        return float(max(values))
    if isinstance(source, EigshResult):
        return float(max(source.eigenvalues))
    if isinstance(source, (int, float)) or (
        isinstance(source, torch.Tensor) and source.numel() == 1
    ):
        return float(source)
    raise TypeError(
        "expected the largest eigenvalue as a number, an EigshResult, a SpectrumMonitor, a "
        f"MonitorResult or a monitor record, got {type(source).__name__}"
    )


def curvature_lr(
    source: Any, *, c: float = 1.0, min_lr: float = 0.0, max_lr: float = math.inf
) -> float:
    """``c / lambda_max``, clipped to ``[min_lr, max_lr]``.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> op = hs.DenseOperator(torch.diag(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)))
        >>> hs.optim.curvature_lr(hs.eigsh(op, k=1, seed=0))  # 1 / lambda_max
        0.25

    Args:
        source: the largest eigenvalue (a number), an `EigshResult`, a
            `SpectrumMonitor` (its latest record), a `MonitorResult` or one
            monitor record.
        c: the fraction of ``1 / lambda_max``: 1 is LeCun et al.'s optimal rate for
            a quadratic, 2 the edge of stability of gradient descent.
        min_lr, max_lr: bounds on the result.

    Raises:
        ValueError: lambda_max is not positive (no curvature to set a step from).
    """
    lam = _lambda_max(source)
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(
            f"the largest eigenvalue is {lam:g}; a step size c / lambda_max needs positive "
            "curvature (at a saddle or maximum, keep the previous learning rate)"
        )
    if not c > 0:
        raise ValueError(f"c must be positive, got {c}")
    return float(min(max(c / lam, min_lr), max_lr))


class CurvatureLR:
    """Sets an optimizer's learning rate to ``c / lambda_max`` at each monitor update.

    Call ``step(step, ...)`` once per training step (or epoch) after
    ``optimizer.step()``: the monitor updates when ``step % monitor.every == 0``
    (warm-started Lanczos on its data), and each new estimate sets every param
    group's ``lr``. Between updates the learning rate stays as it is.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
        ...                             torch.nn.Linear(8, 1))
        >>> x, y = torch.randn(64, 4), torch.randn(64, 1)
        >>> loss_of = torch.nn.MSELoss()
        >>> mon = hs.SpectrumMonitor(model, loss_of, (x, y), k=1, every=5, trace=False, seed=0)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> sched = hs.optim.CurvatureLR(opt, mon, c=1.0)
        >>> for step in range(20):
        ...     opt.zero_grad()
        ...     loss_of(model(x), y).backward()
        ...     opt.step()
        ...     _ = sched.step(step)
        >>> lam = mon.records[-1]["eigenvalues"][0]
        >>> abs(opt.param_groups[0]["lr"] * lam - 1.0) < 1e-12, len(mon.records)
        (True, 4)

    Args:
        optimizer: the optimizer whose groups' ``lr`` is set.
        monitor: a `SpectrumMonitor` over the model being trained (its ``k``
            top eigenvalues; only the largest is used).
        c, min_lr, max_lr: as in `curvature_lr`.

    Attributes:
        lr: the learning rate set last (None before the first update).
        records: ``(step, lambda_max, lr)`` of every update.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        monitor: SpectrumMonitor,
        *,
        c: float = 1.0,
        min_lr: float = 0.0,
        max_lr: float = math.inf,
    ) -> None:
        if not isinstance(monitor, SpectrumMonitor):
            raise TypeError(f"monitor must be a SpectrumMonitor, got {type(monitor).__name__}")
        if not c > 0:
            raise ValueError(f"c must be positive, got {c}")
        self.optimizer = optimizer
        self.monitor = monitor
        self.c = float(c)
        self.min_lr = float(min_lr)
        self.max_lr = float(max_lr)
        self.lr: float | None = None
        self.records: list[tuple[int, float, float]] = []

    def step(self, step: int, **values: Any) -> float | None:
        """Let the monitor update at `step`; returns the new lr when it did, else None.

        Args:
            step: the training step (or epoch).
            **values: passed to the monitor's record (e.g. ``loss=...``); the
                current ``lr`` is recorded too.
        """
        current = self.optimizer.param_groups[0]["lr"]
        record = self.monitor(step, lr=current, **values)
        if record is None:
            return None
        try:
            lr = curvature_lr(record, c=self.c, min_lr=self.min_lr, max_lr=self.max_lr)
        except ValueError:
            return None  # no positive curvature measured: keep the learning rate
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.lr = lr
        self.records.append((int(step), _lambda_max(record), lr))
        return lr

    def state_dict(self) -> dict[str, Any]:
        """The learning rate and the update records (the monitor keeps its own records)."""
        return {"lr": self.lr, "records": list(self.records), "c": self.c}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`."""
        self.lr = None if state["lr"] is None else float(state["lr"])
        self.records = [(int(s), float(lam), float(lr)) for s, lam, lr in state["records"]]
        self.c = float(state["c"])


__all__ = ["CurvatureLR", "curvature_lr"]
