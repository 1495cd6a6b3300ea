"""The generalized Gauss-Newton matrix of a network's loss, known through products.

For a batch whose mean loss is ``L(f(theta))``, with ``f`` the model's output
and ``J = df/dtheta``, the GGN is ``J^T H_out J``, where ``H_out`` is the
Hessian of the loss with respect to the output: the Hessian with the term
that carries the network's own second derivatives dropped. For a loss convex
in the output (cross-entropy, squared error, logistic) it is positive
semi-definite, which is why second-order optimizers and Laplace
approximations use it; ``H - G`` is the curvature of that residual term.

A product ``G v`` is a Jacobian-vector product ``J v``, the closed-form
output-space Hessian product ``H_out (J v)`` and a vector-Jacobian product
``J^T (...)``; J is never formed. ``J v`` comes by the double-backward trick
(differentiate ``J^T u`` with respect to u), so the products run wherever
autograd runs, and a block of b vectors costs one forward pass per batch.

The output-space Hessians, for the batch mean of each supported loss (one
term per position: a sample, or a token or pixel of a sequence or image
output):

- ``nn.CrossEntropyLoss``: ``a_t (diag(p_t) - p_t p_t^T)`` per position, with
  p the softmax over the class dimension (dim 1), ``a_t`` the position's
  weight in the mean (0 for ``ignore_index`` targets; the class weight and
  label smoothing as torch counts them);
- ``nn.MSELoss``: ``2 I / numel(f)`` (torch's mean is over every element);
- ``nn.BCEWithLogitsLoss``: ``a_e s_e (1 - s_e)`` per element, s the sigmoid
  (``a_e`` from ``weight`` and ``pos_weight``), over ``numel(f)``.

Batches, weights, parameter selection, the finiteness check and the reduction
across ranks are `HessianOperator`'s: `GGNOperator` replaces only its
per-batch product.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from hessian_spectra.operators.hessian import HessianOperator
from hessian_spectra.operators.model import Criterion, ParamSpec

__all__ = ["SUPPORTED_LOSSES", "GGNOperator", "OutputLoss", "output_loss"]

#: the criteria whose output-space Hessian is known in closed form
SUPPORTED_LOSSES = ("nn.CrossEntropyLoss", "nn.MSELoss", "nn.BCEWithLogitsLoss")


class OutputLoss:
    """A supported criterion's output-space algebra: Hessian products and sampling.

    Every method takes the batch's model output ``f`` (detached) and its
    targets. The batch mean loss is ``sum_loss(f, y) / normalizer(f, y)``.

    Attributes:
        criterion: the criterion it describes.
        name: the criterion's class name.
    """

    name = ""

    def __init__(self, criterion: Any) -> None:
        self.criterion = criterion

    def hessian_product(self, f: torch.Tensor, y: Any, U: torch.Tensor) -> torch.Tensor:
        """``H_out U`` for a block ``U`` of shape ``(b, *f.shape)``; H_out of the batch mean."""
        raise NotImplementedError

    def normalizer(self, f: torch.Tensor, y: Any) -> torch.Tensor:
        """The denominator of the batch mean: ``mean loss = sum_loss / normalizer``."""
        raise NotImplementedError

    def sum_loss(self, f: torch.Tensor, y: Any) -> torch.Tensor:
        """The criterion with ``reduction='sum'``: its terms added, not averaged."""
        raise NotImplementedError

    def check_sampling(self) -> None:
        """Refuse settings under which the loss is not the negative log-likelihood sampled from."""

    def sample(self, f: torch.Tensor, y: Any, num: int, generator: torch.Generator) -> torch.Tensor:
        """``num`` targets per sample drawn from the model's predictive distribution.

        Returns a tensor of shape ``(B, num, *y.shape[1:])``; positions whose
        target is ignored keep it, so they stay out of the loss. Drawn on the
        CPU from `generator` (a seed gives the same draws on every device).
        """
        raise NotImplementedError

    def nll_sum(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The summed negative log-likelihood of sampled targets (see `sample`)."""
        raise NotImplementedError

    def _check_shapes(self, f: torch.Tensor, y: Any) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or y.shape != f.shape:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(
                f"{self.name} here needs targets of the output's shape {tuple(f.shape)}, got "
                f"{shape} (torch would broadcast them, counting each target several times)"
            )
        return y


def _uniform(
    shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return u.to(device=like.device)


class CrossEntropy(OutputLoss):
    """``nn.CrossEntropyLoss`` on logits ``(B, C, *d)``: class indices or class probabilities."""

    name = "CrossEntropyLoss"

    def __init__(self, criterion: Any) -> None:
        super().__init__(criterion)
        self.weight: torch.Tensor | None = getattr(criterion, "weight", None)
        self.ignore_index = int(getattr(criterion, "ignore_index", -100))
        self.smoothing = float(getattr(criterion, "label_smoothing", 0.0))

    def _coefficients(self, f: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight a_t of ``diag(p) - p p^T`` at each position, and the mean's denominator."""
        C = f.shape[1]
        w = None if self.weight is None else self.weight.to(device=f.device, dtype=f.dtype)
        eps = self.smoothing
        if y.is_floating_point():  # class probabilities: every position counts once
            q = y * (1 - eps) + eps / C
            a = (q if w is None else q * w.view(1, C, *([1] * (f.ndim - 2)))).sum(1)
            return a, torch.tensor(float(a.numel()), dtype=f.dtype, device=f.device)
        kept = y != self.ignore_index
        index = torch.where(kept, y, torch.zeros_like(y))
        if w is None:
            wy = kept.to(f.dtype)
            smooth = torch.ones((), dtype=f.dtype, device=f.device)
        else:
            wy = w[index] * kept
            smooth = w.sum() / C
        a = ((1 - eps) * wy + eps * smooth * kept) if eps else wy
        return a, wy.sum()

    def hessian_product(self, f: torch.Tensor, y: Any, U: torch.Tensor) -> torch.Tensor:
        a, total = self._coefficients(f, self._targets(f, y))
        p = torch.softmax(f, dim=1)
        pU = p * U
        HU = pU - p * pU.sum(dim=2, keepdim=True)
        return HU * (a / total).unsqueeze(1)

    def normalizer(self, f: torch.Tensor, y: Any) -> torch.Tensor:
        return self._coefficients(f, self._targets(f, y))[1]

    def sum_loss(self, f: torch.Tensor, y: Any) -> torch.Tensor:
        return self._summed(f, y, self.weight, self.smoothing)

    def _summed(
        self, f: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, eps: float
    ) -> torch.Tensor:
        """``F.cross_entropy(..., reduction='sum')`` written out-of-place (vmap cannot batch
        torch's own with class weights or ignored targets)."""
        C = f.shape[1]
        logp = torch.log_softmax(f, dim=1)
        w = None if weight is None else weight.to(f).view(1, C, *([1] * (f.ndim - 2)))
        if y.is_floating_point():
            q = y * (1 - eps) + eps / C
            return -((q if w is None else q * w) * logp).sum()
        kept = y != self.ignore_index
        index = torch.where(kept, y, torch.zeros_like(y)).unsqueeze(1)
        terms = -logp.gather(1, index).squeeze(1)
        if w is not None:
            terms = terms * w.expand_as(f).gather(1, index).squeeze(1)
        if eps:
            smooth = -(logp if w is None else logp * w).sum(1) / C
            terms = (1 - eps) * terms + eps * smooth
        return (terms * kept).sum()

    def check_sampling(self) -> None:
        if self.weight is not None or self.smoothing:
            raise ValueError(
                "the Monte-Carlo Fisher samples labels from the model's predictive distribution, "
                "and a cross-entropy with class weights or label smoothing is not its negative "
                "log-likelihood; use kind='empirical', or GGNOperator (the MC Fisher's "
                "expectation for a plain cross-entropy)"
            )

    def sample(self, f: torch.Tensor, y: Any, num: int, generator: torch.Generator) -> torch.Tensor:
        y = self._targets(f, y)
        p = torch.softmax(f.double(), dim=1).movedim(1, -1)  # (B, *d, C)
        u = _uniform((num, *p.shape[:-1]), generator, p)  # (num, B, *d)
        cdf = p.cumsum(-1)
        drawn = (cdf.unsqueeze(0) < u.unsqueeze(-1)).sum(-1).clamp_(max=p.shape[-1] - 1)
        drawn = drawn.movedim(0, 1)  # (B, num, *d)
        if y.is_floating_point():
            return drawn
        keep = (y != self.ignore_index).unsqueeze(1)
        return torch.where(keep, drawn, y.unsqueeze(1))

    def nll_sum(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._summed(f, y, None, 0.0)

    def _targets(self, f: torch.Tensor, y: Any) -> torch.Tensor:
        if f.ndim < 2:
            raise ValueError(
                "CrossEntropyLoss needs logits of shape (batch, classes, ...), got "
                f"{tuple(f.shape)}"
            )
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"CrossEntropyLoss needs tensor targets, got {type(y).__name__}")
        want = f.shape if y.is_floating_point() else (f.shape[0], *f.shape[2:])
        if y.shape != want:
            raise ValueError(
                f"CrossEntropyLoss targets of shape {tuple(y.shape)} do not match logits of "
                f"shape {tuple(f.shape)}: expected {tuple(want)}"
            )
        return y


class SquaredError(OutputLoss):
    """``nn.MSELoss``: torch's mean is over every element of the output."""

    name = "MSELoss"

    def hessian_product(self, f: torch.Tensor, y: Any, U: torch.Tensor) -> torch.Tensor:
        self._check_shapes(f, y)
        return U * (2.0 / f.numel())

    def normalizer(self, f: torch.Tensor, y: Any) -> torch.Tensor:
        return torch.tensor(float(f.numel()), dtype=f.dtype, device=f.device)

    def sum_loss(self, f: torch.Tensor, y: Any) -> torch.Tensor:
        # written out: torch's mse_loss is batched wrongly under nested vmap
        return ((f - y) ** 2).sum()

    def sample(self, f: torch.Tensor, y: Any, num: int, generator: torch.Generator) -> torch.Tensor:
        # sum (f - y)^2 is the negative log-likelihood of y ~ N(f, I / 2) up to a constant
        z = torch.randn((num, *f.shape), generator=generator, dtype=torch.float64)
        return (f.unsqueeze(0) + z.to(device=f.device, dtype=f.dtype) * 0.5**0.5).movedim(0, 1)

    def nll_sum(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.sum_loss(f, y)


class LogisticError(OutputLoss):
    """``nn.BCEWithLogitsLoss``: the mean is over every element of the output."""

    name = "BCEWithLogitsLoss"

    def __init__(self, criterion: Any) -> None:
        super().__init__(criterion)
        self.weight: torch.Tensor | None = getattr(criterion, "weight", None)
        self.pos_weight: torch.Tensor | None = getattr(criterion, "pos_weight", None)

    def hessian_product(self, f: torch.Tensor, y: Any, U: torch.Tensor) -> torch.Tensor:
        y = self._check_shapes(f, y)
        s = torch.sigmoid(f)
        a = s * (1 - s)
        if self.pos_weight is not None:
            a = a * (self.pos_weight.to(f) * y + 1 - y)
        if self.weight is not None:
            a = a * self.weight.to(f)
        return U * (a / f.numel())

    def normalizer(self, f: torch.Tensor, y: Any) -> torch.Tensor:
        return torch.tensor(float(f.numel()), dtype=f.dtype, device=f.device)

    def sum_loss(self, f: torch.Tensor, y: Any) -> torch.Tensor:
        return self._summed(f, y, self.weight, self.pos_weight)

    @staticmethod
    def _summed(
        f: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, pos: torch.Tensor | None
    ) -> torch.Tensor:
        """torch's ``binary_cross_entropy_with_logits(..., reduction='sum')``, written out
        (as vmap batches it correctly)."""
        scale = 1 if pos is None else (pos.to(f) - 1) * y + 1
        terms = (1 - y) * f + scale * F.softplus(-f)
        return (terms if weight is None else terms * weight.to(f)).sum()

    def check_sampling(self) -> None:
        if self.weight is not None or self.pos_weight is not None:
            raise ValueError(
                "the Monte-Carlo Fisher samples labels from the model's predictive distribution, "
                "and a BCEWithLogitsLoss with weight or pos_weight is not its negative "
                "log-likelihood; use kind='empirical' or GGNOperator"
            )

    def sample(self, f: torch.Tensor, y: Any, num: int, generator: torch.Generator) -> torch.Tensor:
        u = _uniform((num, *f.shape), generator, f)
        drawn = (u < torch.sigmoid(f.double()).unsqueeze(0)).to(f.dtype)
        return drawn.movedim(0, 1)

    def nll_sum(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._summed(f, y, None, None)


_BY_MODULE: dict[type, type[OutputLoss]] = {
    nn.CrossEntropyLoss: CrossEntropy,
    nn.MSELoss: SquaredError,
    nn.BCEWithLogitsLoss: LogisticError,
}
_BY_FUNCTION: dict[Callable[..., Any], type[OutputLoss]] = {
    F.cross_entropy: CrossEntropy,
    F.mse_loss: SquaredError,
    F.binary_cross_entropy_with_logits: LogisticError,
}


def output_loss(criterion: Any) -> OutputLoss:
    """The `OutputLoss` of a supported criterion (a loss module or its torch function).

    Raises:
        ValueError: the criterion is not supported, or does not average
            (``reduction`` other than ``'mean'``), naming the supported ones.
    """
    kind = _BY_FUNCTION.get(criterion) if not isinstance(criterion, nn.Module) else None
    if kind is None:
        kind = next((k for t, k in _BY_MODULE.items() if type(criterion) is t), None)
    if kind is None:
        name = type(criterion).__name__ if isinstance(criterion, nn.Module) else repr(criterion)
        hint = ""
        if isinstance(criterion, nn.NLLLoss):
            hint = (
                " (NLLLoss is linear in the log-probabilities, so its output Hessian is 0: "
                "drop the model's final log_softmax and pass nn.CrossEntropyLoss)"
            )
        raise ValueError(
            f"the output-space Hessian of {name} is not known here{hint}; supported criteria: "
            f"{', '.join(SUPPORTED_LOSSES)} (or their torch.nn.functional forms). For another "
            "loss use HessianOperator"
        )
    reduction = getattr(criterion, "reduction", "mean")
    if reduction != "mean":
        raise ValueError(
            f"the criterion {type(criterion).__name__}(reduction={reduction!r}) does not return "
            "the batch mean; the GGN and Fisher are those of the mean loss over the data, so "
            "pass reduction='mean' (the default)"
        )
    return kind(criterion)


class _Recording(nn.Module):
    """Calls the model and keeps its output: one forward pass gives the loss and ``f``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.output: torch.Tensor | None = None

    def forward(self, inputs: Any) -> Any:
        out = self.model(inputs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"the model returned a {type(out).__name__}; the GGN and Fisher need its output "
                "as one tensor (the criterion's input)"
            )
        self.output = out
        return out


def model_output(op: HessianOperator, batch: Any) -> tuple[torch.Tensor, Any, float]:
    """One forward pass over a prepared batch: the output ``f``, the targets and the weight.

    The batch goes through `ModelLoss.loss`, so its layout is checked and it
    is weighed exactly as for the Hessian.
    """
    recording = _Recording(op.model)
    _, weight = op.model_loss.loss(batch, model=recording)
    assert recording.output is not None
    return recording.output, batch[1], weight


class GGNOperator(HessianOperator):
    """The generalized Gauss-Newton matrix of a model's mean loss, known through products.

    ``G = sum_k w_k J_k^T H_out,k J_k / sum_k w_k`` over the batches k, with
    ``J_k`` the Jacobian of the model's output on batch k, ``H_out,k`` the
    Hessian of the batch's mean loss with respect to that output and ``w_k``
    the batch weight of `HessianOperator`. Positive semi-definite.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> _ = torch.manual_seed(0)
        >>> nn = torch.nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        >>> x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
        >>> ggn = hs.GGNOperator(model, nn.CrossEntropyLoss(), (x, y))
        >>> G = ggn.matmat(torch.eye(67, dtype=ggn.dtype))  # the dense GGN, column by column
        >>> bool(torch.linalg.eigvalsh(G)[0] > -1e-12)  # positive semi-definite
        True
        >>> top = hs.eigsh(ggn, k=2, seed=0, tol=1e-8)
        >>> exact = torch.linalg.eigvalsh(G)[-2:].flip(0)
        >>> bool(torch.allclose(torch.as_tensor(top.eigenvalues), exact))
        True

    Args:
        model: the network; ``model(inputs)`` returns the criterion's input
            (logits, predictions) as one tensor.
        criterion: ``nn.CrossEntropyLoss``, ``nn.MSELoss`` or
            ``nn.BCEWithLogitsLoss`` (or their ``torch.nn.functional`` forms)
            with ``reduction='mean'``; called as ``criterion(model(inputs),
            targets)`` on each batch ``(inputs, targets)``. Other losses are
            refused with the list of supported ones.
        data: one batch ``(inputs, targets)`` or a re-iterable of batches, as
            for `HessianOperator`.
        params: which parameters, as for `HessianOperator`.
        **options: the data-pass options of `HessianOperator`, with its
            meanings and defaults: ``allow_train_mode``, ``check_finite``,
            ``distributed``, ``check_deterministic``, and any other it takes
            but ``hvp_mode`` and ``loss_fn``.

    Attributes:
        output_loss: the criterion's `OutputLoss` (its output-space Hessian).
        param_names, params, blocks, model_loss, num_samples, is_distributed:
            as for `HessianOperator`.
    """

    positive_semidefinite = True  # J^T H_out J with H_out PSD (every loss it takes is convex)

    def __init__(
        self,
        model: nn.Module,
        criterion: Criterion | None = None,
        data: Any = None,
        *,
        params: ParamSpec = None,
        **options: Any,
    ) -> None:
        for name in ("hvp_mode", "loss_fn"):
            if name in options:
                raise TypeError(
                    f"{type(self).__name__} takes no {name}: it needs the model's output and the "
                    "criterion separately (criterion(model(inputs), targets))"
                )
        if criterion is None:
            raise ValueError(
                f"{type(self).__name__} needs a criterion, one of {', '.join(SUPPORTED_LOSSES)}, "
                "called as criterion(model(inputs), targets); a model's own loss "
                "(model(**batch).loss, HuggingFace) gives no output to take the curvature of: "
                "use HessianOperator(model, data=batches) for it"
            )
        # before the base class: a determinism check there already multiplies
        self.output_loss = output_loss(criterion)
        super().__init__(model, criterion, data, params=params, **options)

    def _batch_product(self, batch: Any, Vt: list[torch.Tensor]) -> tuple[Any, float]:
        """J^T H_out J V for one batch; J V by double backward, J^T by backward."""
        with torch.enable_grad():
            f, targets, weight = model_output(self, batch)
            # J^T u, linear in u: its derivative with respect to u along v is J v
            u = torch.zeros_like(f, requires_grad=True)
            jtu = self.model_loss.gradient((f * u).sum(), create_graph=True)
            b = Vt[0].shape[0]
            JV = torch.stack(
                [
                    torch.autograd.grad(jtu, u, [v[j] for v in Vt], retain_graph=True)[0]
                    for j in range(b)
                ]
            )
            HJV = self.output_loss.hessian_product(f.detach(), targets, JV)
            cols = []
            for j in range(b):
                g = torch.autograd.grad(f, self.params, grad_outputs=HJV[j], retain_graph=j < b - 1)
                cols.append(torch.cat([t.reshape(-1) for t in g]))
        return torch.stack(cols, 1), weight

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.shape[0]}, params={len(self.params)} tensors, "
            f"loss={self.output_loss.name}, dtype={self.dtype}, device={self.device})"
        )
