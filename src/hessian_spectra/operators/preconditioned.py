"""The Hessian seen through an adaptive optimizer: ``P^-1/2 H P^-1/2`` from its state.

Adam, AdamW, RMSprop and Adagrad step along ``-lr * P^-1 m`` with a diagonal
preconditioner ``P`` built from their second-moment state. On a quadratic the
step is stable while the largest eigenvalue of ``P^-1 H`` (the *preconditioned
sharpness*) stays below a threshold: 38 / lr for Adam with beta1 = 0.9
(Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability"),
not the 2 / lr of plain gradient descent. ``P^-1 H`` is similar to the
symmetric ``P^-1/2 H P^-1/2``, which is what `PreconditionedOperator`
multiplies by, so every eigensolver, trace and density estimator runs on it
unchanged.

``P`` is read from the optimizer's state exactly as its next step would
apply it:

- Adam, AdamW: ``sqrt(v / (1 - beta2^t)) + eps`` (``v`` = ``exp_avg_sq``, or
  ``max_exp_avg_sq`` with ``amsgrad``; ``t`` the step count);
- RMSprop: ``sqrt(v) + eps`` (``sqrt(v - mean_grad^2) + eps`` when centered);
- Adagrad: ``sqrt(sum of squared gradients) + eps``.

Cohen et al. also fold Adam's first-moment bias correction ``1 - beta1^t``
into ``P``; it tends to 1 within a few dozen steps and is left out here.

`stability_threshold` gives the matching threshold for an optimizer's current
learning rate and momentum: ``(2 + 2 beta) / ((1 - d) lr)`` for heavy-ball
momentum ``beta`` with dampening ``d`` (SGD: 2 / lr without momentum; Adam:
``d = beta = beta1``, so 38 / lr at 0.9), on the raw Hessian for SGD and on
the preconditioned one for the adaptive methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hessian_spectra.operators.base import LinearOperator, digest

__all__ = ["PreconditionedOperator", "Threshold", "has_preconditioner", "stability_threshold"]

#: optimizer classes whose state holds a diagonal preconditioner, by the rule that reads it
_ADAM = (torch.optim.Adam, torch.optim.AdamW)
_RMSPROP = (torch.optim.RMSprop,)
_ADAGRAD = (torch.optim.Adagrad,)


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers that hold it as `.optimizer` (accelerate's)."""
    seen = 0
    while not isinstance(optimizer, (*_ADAM, *_RMSPROP, *_ADAGRAD, torch.optim.SGD)):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or seen > 4:
            break
        optimizer, seen = inner, seen + 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer


def _groups_of(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> list[dict]:
    """The parameter group of each tensor in `params` (refusing tensors it does not optimize)."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    missing = [i for i, p in enumerate(params) if id(p) not in group_of]
    if missing:
        raise ValueError(
            f"{len(missing)} of the operator's {len(params)} parameter tensors (positions "
            f"{missing[:5]}) are not optimized by this {type(optimizer).__name__}; build the "
            "operator on the parameters the optimizer steps (params=...)"
        )
    return [group_of[id(p)] for p in params]


def _step_count(state: dict) -> float:
    step = state.get("step", 0)
    return float(step.item() if isinstance(step, torch.Tensor) else step)


def _float(x: Any) -> float:
    return float(x.item() if isinstance(x, torch.Tensor) else x)


def _preconditioner(
    optimizer: torch.optim.Optimizer, p: torch.Tensor, group: dict, name: str
) -> torch.Tensor:
    """The diagonal ``P`` of one parameter tensor, as the optimizer's next step applies it."""
    state = optimizer.state.get(p, {})
    if not state or _step_count(state) < 1:
        raise ValueError(
            f"the {type(optimizer).__name__} has no state for parameter {name} yet: its "
            "preconditioner exists only after the first optimizer.step()"
        )
    eps = _float(group["eps"])
    with torch.no_grad():
        if isinstance(optimizer, _ADAM):
            beta2 = _float(group["betas"][1])
            v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
            correction = 1.0 - beta2 ** _step_count(state)
            return (v.sqrt() / correction**0.5).add(eps)
        if isinstance(optimizer, _RMSPROP):
            v = state["square_avg"]
            if group.get("centered", False):
                v = v.addcmul(state["grad_avg"], state["grad_avg"], value=-1)
            return v.sqrt().add(eps)
        return state["sum"].sqrt().add(eps)  # Adagrad


def has_preconditioner(optimizer: Any, params: Sequence[torch.Tensor] | None = None) -> bool:
    """Whether the optimizer keeps a diagonal preconditioner with state for `params` yet.

    True for Adam, AdamW, RMSprop and Adagrad once they have stepped every
    tensor of `params` (default: all they optimize); False for other optimizers
    and before the first step.
    """
    try:
        opt = _unwrap(optimizer)
    except TypeError:
        return False
    if not isinstance(opt, (*_ADAM, *_RMSPROP, *_ADAGRAD)):
        return False
    tensors = [p for g in opt.param_groups for p in g["params"]] if params is None else params
    return all(_step_count(opt.state.get(p, {})) >= 1 for p in tensors)


class PreconditionedOperator(LinearOperator):
    """``P^-1/2 H P^-1/2``: a curvature operator seen through an adaptive optimizer's state.

    Its top eigenvalue is the preconditioned sharpness that Adam or RMSprop keep
    below their stability threshold (see `stability_threshold`), as the raw
    Hessian's is kept below 2 / lr by gradient descent.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> _ = torch.manual_seed(0)
        >>> nn = torch.nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        >>> x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        >>> for _ in range(5):
        ...     opt.zero_grad()
        ...     nn.functional.cross_entropy(model(x), y).backward()
        ...     opt.step()
        >>> H = hs.HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
        >>> op = hs.PreconditionedOperator(H, opt)
        >>> d = op.preconditioner.rsqrt()  # P^-1/2 as a flat vector
        >>> dense = d[:, None] * H.matmat(torch.eye(67, dtype=H.dtype)) * d[None, :]
        >>> top = hs.eigsh(op, k=1, seed=0, tol=1e-8)
        >>> exact = torch.linalg.eigvalsh(dense)[-1]
        >>> bool(torch.isclose(torch.as_tensor(top.eigenvalues[0]), exact))
        True

    Args:
        op: the curvature operator (`HessianOperator`, or any operator over the
            optimizer's parameters) in its vector order.
        optimizer: an Adam, AdamW, RMSprop or Adagrad optimizer (or a wrapper
            holding one as ``.optimizer``) that has taken at least one step on
            those parameters. Its state is read once, when the operator is built:
            build a new one after further steps.
        params: the parameter tensors in the operator's vector order (default:
            ``op.params``, as `HessianOperator` has them).

    Attributes:
        op: the wrapped operator.
        preconditioner: ``P`` as a flat (n,) tensor in the operator's dtype.
        optimizer_name: the optimizer's class name.
    """

    def __init__(
        self,
        op: LinearOperator,
        optimizer: Any,
        *,
        params: Sequence[torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(op, LinearOperator):
            raise TypeError(f"op must be a LinearOperator, got {type(op).__name__}")
        opt = _unwrap(optimizer)
        if not isinstance(opt, (*_ADAM, *_RMSPROP, *_ADAGRAD)):
            raise TypeError(
                f"{type(opt).__name__} keeps no diagonal preconditioner (supported: Adam, AdamW, "
                "RMSprop, Adagrad); for SGD the raw Hessian is the operator whose sharpness "
                "meets its threshold"
            )
        if params is None:
            params = getattr(op, "params", None)
            if params is None:
                raise ValueError(
                    f"{type(op).__name__} does not list its parameters; pass params=[...] in "
                    "the operator's vector order"
                )
        tensors = list(params)
        n = op.shape[0]
        total = sum(int(p.numel()) for p in tensors)
        if total != n:
            raise ValueError(
                f"the parameters hold {total} numbers but the operator is {n} x {n}; pass the "
                "parameters in the operator's vector order"
            )
        groups = _groups_of(opt, tensors)
        names = getattr(op, "param_names", None) or [f"#{i}" for i in range(len(tensors))]
        parts = [
            _preconditioner(opt, p, g, str(name)).reshape(-1)
            for p, g, name in zip(tensors, groups, names, strict=True)
        ]
        P = torch.cat(parts).to(dtype=op.dtype, device=op.device)
        if not bool((P > 0).all()) or not bool(torch.isfinite(P).all()):
            raise ValueError(
                "the preconditioner has entries that are not positive and finite; give the "
                "optimizer eps > 0"
            )
        super().__init__(n, op.dtype, op.device)
        self.op = op
        self.optimizer_name = type(opt).__name__
        self.preconditioner = P
        self._scale = P.rsqrt()

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        d = self._scale[:, None]
        return d * self.op.matmat(d * V)

    def fingerprint(self) -> dict[str, Any]:
        """The wrapped operator's fingerprint and a digest of the preconditioner."""
        return {
            **super().fingerprint(),
            "inner": self.op.fingerprint(),
            "preconditioner": digest(self.preconditioner),
        }

    def __repr__(self) -> str:
        return (
            f"PreconditionedOperator(n={self.shape[0]}, optimizer={self.optimizer_name}, "
            f"op={self.op!r})"
        )


@dataclass(frozen=True)
class Threshold:
    """An optimizer's edge-of-stability threshold at its current hyperparameters.

    Attributes:
        value: the largest sharpness its step keeps stable on a quadratic.
        preconditioned: whether `value` bounds the preconditioned sharpness
            (Adam, RMSprop, Adagrad) rather than the raw Hessian's (SGD).
        formula: how it was computed, for labels (e.g. ``"38 / lr"``).
    """

    value: float
    preconditioned: bool
    formula: str


def _heavy_ball(lr: float, beta: float, dampening: float, preconditioned: bool) -> Threshold:
    value = (2.0 + 2.0 * beta) / ((1.0 - dampening) * lr)
    coef = (2.0 + 2.0 * beta) / (1.0 - dampening)
    return Threshold(value, preconditioned, f"{coef:.4g} / lr")


def stability_threshold(
    optimizer: Any, params: Sequence[torch.Tensor] | None = None
) -> Threshold | None:
    """The sharpness an optimizer's step keeps stable on a quadratic (Cohen et al. 2021, 2022).

    For heavy-ball momentum ``beta`` with dampening ``d`` and learning rate
    ``lr`` it is ``(2 + 2 beta) / ((1 - d) lr)``: 2 / lr for plain SGD,
    (2 + 2 mu) / lr for SGD with momentum mu, ``(2 + 2 beta1) / ((1 - beta1) lr)``
    for Adam (its first moment is an average with ``d = beta1``: 38 / lr at
    beta1 = 0.9) on the preconditioned Hessian, and (2 + 2 mu) / lr for RMSprop
    with momentum mu, also preconditioned. Nesterov SGD: (2 + 2 mu) / ((1 + 2 mu) lr).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> round(stability_threshold(torch.optim.Adam([w], lr=1e-3)).value, 6)
        38000.0
        >>> stability_threshold(torch.optim.SGD([w], lr=0.1)).formula
        '2 / lr'

    Args:
        optimizer: a torch optimizer (SGD, Adam, AdamW, RMSprop, Adagrad) or a
            wrapper holding one as ``.optimizer``.
        params: the parameters whose groups count (default: all groups).

    Returns:
        The `Threshold`, or None for another optimizer or when the groups of
        `params` disagree on the learning rate or momentum.
    """
    try:
        opt = _unwrap(optimizer)
    except TypeError:
        return None
    groups = opt.param_groups if params is None else _groups_of(opt, list(params))
    found: set[Threshold] = set()
    for g in groups:
        lr = _float(g["lr"])
        if lr <= 0:
            return None
        if isinstance(opt, _ADAM):
            beta1 = _float(g["betas"][0])
            found.add(_heavy_ball(lr, beta1, beta1, True))
        elif isinstance(opt, _RMSPROP):
            found.add(_heavy_ball(lr, _float(g.get("momentum", 0.0)), 0.0, True))
        elif isinstance(opt, _ADAGRAD):
            steps = [_step_count(opt.state.get(p, {})) for p in g["params"]]
            decay = _float(g.get("lr_decay", 0.0))
            clr = lr / (1.0 + max(steps, default=0.0) * decay)  # the next step's rate
            found.add(Threshold(2.0 / clr, True, "2 / lr"))
        elif isinstance(opt, torch.optim.SGD):
            mu = _float(g.get("momentum", 0.0))
            if g.get("nesterov", False):
                value = (2.0 + 2.0 * mu) / ((1.0 + 2.0 * mu) * lr)
                coef = (2.0 + 2.0 * mu) / (1.0 + 2.0 * mu)
                found.add(Threshold(value, False, f"{coef:.4g} / lr"))
            else:
                found.add(_heavy_ball(lr, mu, _float(g.get("dampening", 0.0)), False))
        else:
            return None
    return found.pop() if len(found) == 1 else None
