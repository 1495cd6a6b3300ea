"""Hessian-vector products from gradients alone: central differences, with their error.

For models with an operation torch cannot differentiate twice
(``nn.Hardsigmoid``: ``derivative for aten::hardsigmoid_backward is not
implemented``), ``hvp_mode="finite_difference"`` takes

    D(h) v = (g(theta + h v) - g(theta - h v)) / (2 h)

per column v, with g the mean loss's gradient on the batch: two gradients
per column, first derivatives only. The parameters are set to the
perturbed values in place and copied back from a saved copy after each
gradient, so they are restored bit for bit.

The step. D(h) = Hv + c h^2 + O(h^4) (the truncation error, c = T[v,v,v]/6
from the third derivative T), and rounding the two gradients to the
precision eps of the computation (the parameters', or the loss's where it is
coarser) adds about eps |g| / h. The sum is smallest for h of order
eps^(1/3) in the scale of the parameters, so the perturbation h v has norm
eps^(1/3) (1 + |theta|): relative to the parameters (a unit-free step would be
lost in the rounding of large weights, or be too coarse for small ones), and
never under eps^(1/3) in absolute terms (parameters near zero). In float64
that is 6e-6 (1 + |theta|), giving a relative error of order 1e-10 on smooth
models; in float32 5e-3 (1 + |theta|) and about 1e-4.

The error, estimated per column and reported (`FiniteDifference.error_estimate`):

- truncation: Richardson's comparison with the step 2h. D(2h) - D(h) =
  3 c h^2 + O(h^4), so |D(2h) - D(h)| / 3 estimates the truncation error of
  D(h) (two more gradients per column);
- rounding: eps (|g(theta + hv)| + |g(theta - hv)|) / (2h) for the
  gradients, plus eps |theta| |D(h)| / (h |v|) for rounding the perturbed
  parameters to the model's dtype.

The reported relative error of a column is (|D(2h) - D(h)| + rounding) / |D(h)|,
over the full-data product (batches summed as the product is): the Richardson
difference counts the truncation error three times over and also holds the
rounding noise of both evaluations, so it bounds the error where the
truncation or the noise dominates. The products cost four gradients per
column (about 2x a double-backward column on small models; see
benchmarks/architectures.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hessian_spectra.operators.model import ModelLoss

__all__ = ["FiniteDifference", "fd_step"]


def fd_step(theta_norm: float, v_norm: float, eps: float) -> float:
    """The central-difference step along a direction of norm `v_norm` at parameters `theta_norm`.

    ``h = eps^(1/3) (1 + |theta|) / |v|``: the perturbation ``h v`` has norm
    ``eps^(1/3) (1 + |theta|)``, which balances the truncation error (h^2) and
    the rounding error (eps / h) of a central difference, in the parameters' scale.
    """
    return eps ** (1.0 / 3.0) * (1.0 + theta_norm) / v_norm


class FiniteDifference:
    """Central-difference Hessian products over a `ModelLoss`, and their estimated error.

    Args:
        model_loss: the model, loss and data (its batches are passed in by the
            operator's pass over the data).

    Attributes:
        error_estimate: the largest relative error estimate of a column of the
            last full product (see the module's docstring); ``max_error_estimate``:
            the largest over every product so far; ``truncation`` and
            ``rounding``: the two parts of the last product's estimate
            (relative, largest over its columns).
    """

    def __init__(self, model_loss: ModelLoss) -> None:
        self.model_loss = model_loss
        # first derivatives only: the fused attention kernels may stay in use
        model_loss.twice_differentiable = False
        # the precision of the computation: the parameters', or the loss's when coarser
        # (HuggingFace's losses compute in float32 for a float64 model), set on the first batch
        self.eps: float | None = None
        self._vt: list[torch.Tensor] | None = None  # the block of the product in progress
        self._sum_d: torch.Tensor | None = None  # sum_k w_k D_k(h), (n, b)
        self._sum_diff: torch.Tensor | None = None  # sum_k w_k (D_k(2h) - D_k(h))
        self._sum_round: torch.Tensor | None = None  # sum_k w_k rounding_k, (b,)
        self._max_done = 0.0
        self.last_step: float | None = None  # h of the last column

    # ------------------------------------------------------------ the product

    def _gradient_at(
        self, batch: Any, saved: list[torch.Tensor], v: list[torch.Tensor], t: float
    ) -> tuple[torch.Tensor, float]:
        """The flat gradient of the batch's mean loss at theta + t v, and the weight."""
        params = self.model_loss.selection.params
        try:
            with torch.no_grad():
                for p, p0, d in zip(params, saved, v, strict=True):
                    p.copy_(p0 + t * d)
            with torch.enable_grad():
                loss, weight = self.model_loss.loss(batch)
                grads = self.model_loss.gradient(loss)
        finally:
            with torch.no_grad():
                for p, p0 in zip(params, saved, strict=True):
                    p.copy_(p0)  # bit for bit the parameters as they were
        return torch.cat([g.reshape(-1) for g in grads]), weight

    def batch_product(self, batch: Any, Vt: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """One batch's (n, b) central-difference product and its weight; the error is recorded."""
        if Vt is not self._vt:
            self._finish()
            self._vt = Vt
        if self.eps is None:
            with torch.no_grad():
                loss = self.model_loss.loss(batch)[0]
            coarser = loss.dtype if loss.is_floating_point() else self.model_loss.dtype
            self.eps = max(torch.finfo(self.model_loss.dtype).eps, torch.finfo(coarser).eps)
        params = self.model_loss.selection.params
        saved = [p.detach().clone() for p in params]
        theta_norm = math.sqrt(sum(float(p.double().pow(2).sum()) for p in saved))
        b = Vt[0].shape[0]
        n = self.model_loss.selection.numel
        cols = torch.zeros(n, b, dtype=self.model_loss.dtype, device=self.model_loss.device)
        diffs = torch.zeros(n, b, dtype=torch.float64, device=self.model_loss.device)
        rounding = torch.zeros(b, dtype=torch.float64)
        weight = 0.0
        for j in range(b):
            v = [t[j] for t in Vt]
            v_norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in v))
            if v_norm == 0.0:
                weight = weight or self.model_loss.loss(batch)[1]
                continue
            h = fd_step(theta_norm, v_norm, self.eps)
            self.last_step = h
            g1, weight = self._gradient_at(batch, saved, v, h)
            g2, _ = self._gradient_at(batch, saved, v, -h)
            g3, _ = self._gradient_at(batch, saved, v, 2 * h)
            g4, _ = self._gradient_at(batch, saved, v, -2 * h)
            d_h = (g1.double() - g2.double()) / (2 * h)
            d_2h = (g3.double() - g4.double()) / (4 * h)
            cols[:, j] = d_h.to(cols.dtype)
            diffs[:, j] = d_2h - d_h
            gradient_part = self.eps * (float(g1.double().norm()) + float(g2.double().norm()))
            step_part = self.eps * theta_norm * float(d_h.norm()) / v_norm
            rounding[j] = (gradient_part / 2 + step_part) / h
        self._add(cols, diffs, rounding, weight)
        return cols, weight

    # ------------------------------------------------------------ the error

    def _add(
        self, cols: torch.Tensor, diffs: torch.Tensor, rounding: torch.Tensor, weight: float
    ) -> None:
        if self._sum_d is None or self._sum_diff is None or self._sum_round is None:
            self._sum_d = cols.double() * weight
            self._sum_diff = diffs * weight
            self._sum_round = rounding * weight
        else:
            self._sum_d.add_(cols.double(), alpha=weight)
            self._sum_diff.add_(diffs, alpha=weight)
            self._sum_round.add_(rounding, alpha=weight)

    def _relative(self) -> tuple[float, float, float]:
        """(truncation, rounding, total) relative estimates of the product in progress."""
        if self._sum_d is None or self._sum_diff is None or self._sum_round is None:
            return 0.0, 0.0, 0.0
        norms = self._sum_d.norm(dim=0)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        diff = self._sum_diff.norm(dim=0).cpu() / safe.cpu()
        rounding = self._sum_round / safe.cpu()
        zero = (norms.cpu() == 0) & ((diff > 0) | (rounding > 0))
        total = torch.where(zero, torch.full_like(diff, math.inf), diff + rounding)
        return float((diff / 3).max()), float(rounding.max()), float(total.max())

    def _finish(self) -> None:
        self._max_done = max(self._max_done, self._relative()[2])
        self._vt = self._sum_d = self._sum_diff = self._sum_round = None

    @property
    def error_estimate(self) -> float:
        """Relative error estimate of the last product (largest over its columns)."""
        return self._relative()[2]

    @property
    def max_error_estimate(self) -> float:
        """Largest relative error estimate over every product so far."""
        return max(self._max_done, self._relative()[2])

    def settings(self) -> dict[str, Any]:
        """The step rule and the error estimates, for result records."""
        truncation, rounding, total = self._relative()
        return {
            "fd_step": "eps^(1/3) (1 + |theta|) / |v|",
            "fd_step_last": self.last_step,
            "fd_truncation_estimate": truncation,
            "fd_rounding_estimate": rounding,
            "fd_error_estimate": total,
            "fd_max_error_estimate": self.max_error_estimate,
        }
