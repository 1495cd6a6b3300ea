"""SketchySGD: stochastic gradients preconditioned by a rarely refreshed Nystrom sketch.

Frangella, Rathore, Zhao, Udell 2024 ("SketchySGD: reliable stochastic
optimization via randomized curvature estimates", SIAM J. Math. Data Sci.).
Every ``update_every`` steps the curvature is sketched: ``rank``
Hessian-vector products (HVPs) of the mini-batch Hessian (or of a larger
``hessian_batch``) give a Nystrom approximation ``U Lambda U^T``, and in
between every step moves along ``P^-1 g`` with
``P = U (Lambda + rho) U^T + rho (I - U U^T)`` (`NystromPreconditioner`).

The automatic step size is ``lr_scale / L`` with L the largest eigenvalue of
the preconditioned Hessian ``P^-1/2 H P^-1/2``: on a quadratic, preconditioned
gradient descent is stable below 2 / L, and the paper's default is 1/2 of
1 / L. L comes from a few Lanczos steps warm-started from the previous top
vector, and is kept on the safe side in three ways, because a mini-batch
Hessian is a noisy sample and the sketch is fitted to the batch it was taken on:

1. each estimate is an upper estimate: the top Ritz value plus its residual
   norm (an eigenvalue lies within the residual of the Ritz value);
2. after every refresh, L is measured again on the next ``lr_checks`` fresh
   mini-batches (their own Hessians, not the sketched one) and the largest
   value is kept;
3. the ratio of the fresh-batch to the sketch-batch estimates (the variation
   across mini-batches) is recorded, and the largest ratio of the last
   ``NOISE_WINDOW`` refreshes multiplies the sketch-batch estimate at the
   next refresh, until that refresh's own fresh checks arrive.

Two more safeguards are not about noise but about the quadratic model being
wrong far from a minimum (logistic regression with saturated predictions has
almost no curvature, so ``P^-1 g`` is huge while the loss is nearly linear):

4. for a non-negative loss, the step never lets the quadratic model promise
   a larger decrease than the loss itself: with ``delta^2 = g^T P^-1 g`` the
   model's decrease along ``-t P^-1 g`` is ``(t - t^2 / 2) delta^2``, so t is
   at most the root of ``(t - t^2 / 2) delta^2 = loss``. On a quadratic with
   minimum >= 0 the bound is never active (the full Newton step promises
   exactly ``f - f*``); with saturated logits it is what keeps the step sane.
   It is scale-free: multiplying the loss by c changes neither side's ratio;
5. a step after which the mini-batch loss exceeds ``guard`` times the lowest running
average of the loss so far (or is not finite) is undone: the parameters go
back, the step size is halved (``damping``), momentum is cleared and the
curvature is sketched again at the restored point. Each refresh doubles the
damping back towards 1. This costs no extra pass: the next step's loss is the
test, and one copy of the parameters is kept.

``history`` holds one record per refresh, check and rejected step (the
estimates, the ratio, rho, the step size, HVPs so far), so the variation is
measured, not assumed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from hessian_spectra import _progress
from hessian_spectra.algorithms import BOUND_STEPS, lanczos
from hessian_spectra.operators import LinearOperator, ShiftedOperator
from hessian_spectra.optim._closure import Closure, GraphHessian, call_closure, flat, gradients
from hessian_spectra.optim.nystrom import NystromPreconditioner

#: Refreshes over which the largest fresh/sketch-batch ratio of L is remembered.
NOISE_WINDOW = 5
#: The default number of steps between refreshes (pass len(loader) for once per epoch).
DEFAULT_UPDATE_EVERY = 100
#: Smoothing of the running average of mini-batch losses the guard compares with.
LOSS_AVERAGE = 0.9


def top_eigenvalue(
    op: LinearOperator, v0: torch.Tensor | None, steps: int, generator: torch.Generator
) -> tuple[float, float, float, torch.Tensor]:
    """An upper estimate of the largest eigenvalue from a short Lanczos run.

    Returns ``(theta + residual, theta, residual, vector)``: the top Ritz value,
    its residual norm ``|beta_m s_m|`` and its Ritz vector (the next warm start).
    Costs ``min(steps, n)`` products.
    """
    n = op.shape[0]
    if v0 is None or v0.shape != (n,) or not bool(torch.isfinite(v0).all()) or not bool(v0.any()):
        v0 = torch.randn(n, generator=generator, dtype=torch.float64).to(op.dtype).to(op.device)
    dec = lanczos(op, v0.to(op.dtype), max(1, min(int(steps), n)), generator=generator)
    theta, S = dec.ritz()
    assert S is not None and dec.basis is not None
    top = float(theta[-1])
    res = abs(float(dec.beta[-1])) * abs(float(S[-1, -1]))
    s = torch.as_tensor(S[:, -1], dtype=dec.basis.dtype, device=dec.basis.device)
    return top + res, top, res, (dec.basis @ s).detach()


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """The sketch inside a training step shows no bar, even where the CLI forces bars on."""
    saved = _progress._ENABLED
    _progress.set_progress(False)
    try:
        yield
    finally:
        _progress.set_progress(saved)


class SketchySGD(torch.optim.Optimizer):
    """SGD preconditioned by a Nystrom sketch of the Hessian, with an automatic step size.

    Call ``step(closure)`` with a closure that returns the mini-batch loss
    WITHOUT calling ``backward``: the optimizer differentiates it (with
    ``create_graph=True`` on the steps that measure curvature, so the HVPs run on
    the same graph without a second forward pass). After a step the parameters'
    ``.grad`` hold the mini-batch gradient, for logging or clipping checks.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> _ = torch.manual_seed(0)
        >>> X = torch.randn(200, 5) * torch.tensor([100.0, 10.0, 1.0, 0.1, 0.01])
        >>> y = X @ torch.ones(5)
        >>> X, y = X.double(), y.double()
        >>> model = torch.nn.Linear(5, 1, bias=False).double()
        >>> opt = hs.optim.SketchySGD(model.parameters(), rank=5, update_every=20, seed=0)
        >>> for step in range(60):
        ...     i = torch.randint(0, 200, (50,))
        ...     loss = opt.step(lambda: ((model(X[i])[:, 0] - y[i]) ** 2).mean())
        >>> bool(((model(X)[:, 0] - y) ** 2).mean() < 1e-4), opt.num_matvecs < 200
        (True, True)

    Args:
        params: the parameters (or parameter groups; groups may set ``lr``,
            ``lr_scale`` and ``momentum``; the preconditioner spans all of them).
        rank: the sketch size r (HVPs per refresh).
        rho: the regularization of P; None takes the sketch's smallest
            eigenvalue lambda_r at each refresh (at least sqrt(n) eps lambda_1).
        update_every: steps between refreshes; None: 100. The paper refreshes
            once per epoch: pass ``len(loader)``.
        lr: ``"auto"`` (``lr_scale / L`` with L the largest eigenvalue of the
            preconditioned Hessian, re-estimated at every refresh) or a fixed
            step size. With "auto", each group's ``lr`` holds the current
            step size (schedule ``lr_scale`` rather than ``lr``).
        lr_scale: the fraction of 1 / L taken as the step size (the paper's 1/2).
        momentum: heavy-ball averaging of the preconditioned direction,
            ``m = momentum m + (1 - momentum) P^-1 g`` (the step then keeps the
            size ``lr`` sets; 0 disables it).
        weight_decay: L2 regularization ``weight_decay / 2 ||w||^2`` added to
            the loss: to the gradient and, as a shift, to the sketched curvature.
        hessian_batch: where the refresh sketches the curvature. None: the
            mini-batch of the step (no extra forward pass). A callable: called
            with no arguments at each refresh, it returns the loss of a larger
            batch (one extra forward and backward pass). A `LinearOperator`
            over the same parameters in the same order: used as it is (a
            `HessianOperator` on a fixed batch, or a positive semidefinite
            curvature such as a GGN operator where the Hessian is indefinite).
        lanczos_steps: Lanczos steps (HVPs) per estimate of L.
        lr_checks: fresh mini-batches on which L is measured again after each refresh.
        cap_decrease: bound the automatic step size so that the quadratic model
            never promises a larger decrease than the (non-negative) loss; a
            fixed lr is never bounded.
        guard: undo a step after which the mini-batch loss exceeds ``guard`` times
            the lowest running average of the loss (for positive losses), or is
            not finite; None turns the guard off.
        seed: the seed of the sketches and Lanczos starts (None: drawn from torch's
            global generator).

    Attributes:
        num_matvecs: HVPs spent so far (sketches and step-size estimates).
        num_graphs: steps that built a gradient graph for HVPs (``create_graph=True``)
            plus extra ``hessian_batch`` passes.
        num_rejected: steps the guard undid.
        damping: the factor (at most 1) on every group's step size, halved by each
            rejected step.
        preconditioner: the current `NystromPreconditioner` (None before the first step).
        history: one record per refresh or check of the step size.
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        rank: int = 10,
        rho: float | None = None,
        update_every: int | None = None,
        lr: float | str = "auto",
        lr_scale: float = 0.5,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        hessian_batch: Any = None,
        lanczos_steps: int = BOUND_STEPS,
        lr_checks: int = 1,
        cap_decrease: bool = True,
        guard: float | None = 10.0,
        seed: int | None = None,
    ) -> None:
        auto = isinstance(lr, str)
        if auto and lr != "auto":
            raise ValueError(f"lr must be 'auto' or a positive number, got {lr!r}")
        if not auto and not float(lr) > 0:
            raise ValueError(f"lr must be 'auto' or a positive number, got {lr!r}")
        if int(rank) < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        if rho is not None and not float(rho) > 0:
            raise ValueError(f"rho must be positive (or None for lambda_r), got {rho}")
        every = DEFAULT_UPDATE_EVERY if update_every is None else int(update_every)
        if every < 1:
            raise ValueError(f"update_every must be at least 1, got {update_every}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if float(weight_decay) < 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
        if not float(lr_scale) > 0:
            raise ValueError(f"lr_scale must be positive, got {lr_scale}")
        if guard is not None and not float(guard) > 1:
            raise ValueError(f"guard must be above 1 (or None), got {guard}")
        if int(lanczos_steps) < 1 or int(lr_checks) < 0:
            raise ValueError("lanczos_steps must be at least 1 and lr_checks non-negative")
        if not (hessian_batch is None or callable(hessian_batch)) and not isinstance(
            hessian_batch, LinearOperator
        ):
            raise TypeError(
                "hessian_batch must be None, a callable returning the loss of a larger batch, "
                f"or a LinearOperator, got {type(hessian_batch).__name__}"
            )
        defaults = {
            "lr": 0.0 if auto else float(lr),
            "auto_lr": auto,
            "lr_scale": float(lr_scale),
            "momentum": float(momentum),
        }
        super().__init__(params, defaults)
        self.rank = int(rank)
        self.rho = None if rho is None else float(rho)
        self.update_every = every
        self.weight_decay = float(weight_decay)
        self.hessian_batch = hessian_batch
        self.lanczos_steps = int(lanczos_steps)
        self.lr_checks = int(lr_checks)
        self.guard = None if guard is None else float(guard)
        self.cap_decrease = bool(cap_decrease)
        self.last_step_size = math.nan  # the step size the last step took (first group)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.seed = int(seed)
        self.preconditioner: NystromPreconditioner | None = None
        self.num_matvecs = 0
        self.num_graphs = 0
        self.history: list[dict[str, Any]] = []
        self._step = 0
        self._refreshes = 0
        self._estimates = 0
        self._L = math.nan  # the L the step size uses
        self._L_sketch = math.nan  # this refresh's estimate on the sketched batch
        self._checks_left = 0
        self._ratios: list[float] = []  # fresh / sketch-batch L, one per refresh
        self._ratio_now = 0.0  # the largest of this refresh's checks so far
        self._top: torch.Tensor | None = None  # warm start of the Lanczos runs
        self.damping = 1.0
        self.num_rejected = 0
        self._loss_avg = math.nan  # running average of accepted mini-batch losses
        self._loss_ref = math.inf  # its lowest value so far
        self._previous: torch.Tensor | None = None  # the parameters before the last step
        self._force_refresh = False
        params_all = self._params()
        dtypes = {p.dtype for p in params_all}
        if len(dtypes) != 1:
            raise ValueError(f"the parameters mix dtypes {sorted(map(str, dtypes))}")
        if isinstance(hessian_batch, LinearOperator):
            n = sum(p.numel() for p in params_all)
            if hessian_batch.shape[0] != n:
                raise ValueError(
                    f"hessian_batch is an operator of size {hessian_batch.shape[0]} but the "
                    f"parameters have {n} entries; build it over the same parameters"
                )

    # ------------------------------------------------------------------ helpers
    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def auto_lr(self) -> bool:
        """Whether any group takes its step size from the curvature."""
        return any(g["auto_lr"] for g in self.param_groups)

    @property
    def lambda_max(self) -> float:
        """The current estimate L of the preconditioned Hessian's largest eigenvalue."""
        return self._L

    def _generator(self) -> torch.Generator:
        self._estimates += 1
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self._estimates)

    def _shifted(self, op: LinearOperator) -> LinearOperator:
        return ShiftedOperator(op, self.weight_decay) if self.weight_decay else op

    def _estimate(self, op: LinearOperator) -> tuple[float, float, float]:
        """Upper estimate, Ritz value and residual of L on `op`; counts the HVPs."""
        assert self.preconditioner is not None
        pre = self.preconditioner.with_shift(self.weight_decay)
        before = op.num_matvecs
        upper, theta, res, vec = top_eigenvalue(
            pre.preconditioned(self._shifted(op)), self._top, self.lanczos_steps, self._generator()
        )
        self.num_matvecs += op.num_matvecs - before
        self._top = vec
        return upper, theta, res

    def _curvature_operator(self, loss_graph: GraphHessian | None) -> LinearOperator:
        """The operator a refresh sketches: the step's graph, a larger batch's, or the user's."""
        hb = self.hessian_batch
        if hb is None:
            assert loss_graph is not None
            return loss_graph
        if isinstance(hb, LinearOperator):
            return hb
        params = self._params()
        with torch.enable_grad():
            loss = hb()
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise ValueError(
                "hessian_batch() must return the loss of its batch as a scalar tensor with a "
                "gradient graph"
            )
        self.num_graphs += 1
        return GraphHessian(gradients(loss.reshape(()), params, create_graph=True), params)

    def _set_lr(self, L: float) -> None:
        if not (math.isfinite(L) and L > 0):
            if math.isfinite(self._L) and self._L > 0:
                return  # keep the previous step size
            raise FloatingPointError(
                f"the preconditioned Hessian's largest eigenvalue estimate is {L:g}: no "
                "positive curvature to set a step size from. Pass a fixed lr, or a positive "
                "semidefinite curvature (e.g. a GGN operator) as hessian_batch"
            )
        self._L = L
        for g in self.param_groups:
            if g["auto_lr"]:
                g["lr"] = g["lr_scale"] / L

    def _record(self, kind: str, **values: Any) -> None:
        rec = {"step": self._step, "kind": kind, **values, "L": self._L}
        rec["lr"] = self.param_groups[0]["lr"] * self.damping
        rec["hvps"] = self.num_matvecs
        self.history.append(rec)

    def _refresh(self, op: LinearOperator) -> None:
        before = op.num_matvecs
        with _no_progress_bars():
            self.preconditioner = NystromPreconditioner.from_operator(
                op, self.rank, rho=self.rho, seed=self.seed + self._refreshes
            )
        self.num_matvecs += op.num_matvecs - before
        self._refreshes += 1
        if not self._force_refresh:  # a scheduled refresh: let the step size recover
            self.damping = min(1.0, 2.0 * self.damping)
        pre = self.preconditioner
        lam = pre.eigenvalues
        values: dict[str, Any] = {
            "rho": pre.rho,
            "lambda_1": float(lam.max()) if lam.numel() else 0.0,
            "lambda_r": float(lam.min()) if lam.numel() else 0.0,
        }
        if self.auto_lr:
            upper, theta, res = self._estimate(op)
            noise = max(self._ratios[-NOISE_WINDOW:], default=1.0)
            self._L_sketch = upper
            self._set_lr(upper * noise)
            self._checks_left = self.lr_checks
            self._ratio_now = 0.0
            values.update(estimate=upper, ritz=theta, residual=res, noise=noise)
        self._record("refresh", **values)

    def _check(self, op: LinearOperator) -> None:
        upper, theta, res = self._estimate(op)
        self._checks_left -= 1
        ratio = upper / self._L_sketch if self._L_sketch > 0 else math.inf
        self._ratio_now = max(self._ratio_now, ratio)
        if self._checks_left == 0:
            self._ratios = [*self._ratios[-NOISE_WINDOW + 1 :], self._ratio_now]
        self._set_lr(max(self._L, upper))
        self._record("check", estimate=upper, ritz=theta, residual=res, ratio=ratio)

    def _rejects(self, loss: float) -> bool:
        """Whether the loss after the last step says to undo it (and track the average)."""
        if self.guard is None or self._previous is None:
            if math.isfinite(loss):
                self._average(loss)
            return False
        if not math.isfinite(loss):
            return True
        if self._loss_ref > 0 and loss > self.guard * self._loss_ref:
            return True
        self._average(loss)
        return False

    def _average(self, loss: float) -> None:
        a = LOSS_AVERAGE
        self._loss_avg = loss if math.isnan(self._loss_avg) else a * self._loss_avg + (1 - a) * loss
        self._loss_ref = min(self._loss_ref, self._loss_avg)

    def _undo(self, params: list[torch.Tensor], loss: float) -> None:
        """Put back the parameters before the last step, halve the step, sketch again."""
        assert self._previous is not None
        with torch.no_grad():
            offset = 0
            for p in params:
                k = p.numel()
                p.copy_(self._previous[offset : offset + k].view_as(p))
                p.grad = None
                offset += k
        for p in params:
            self.state[p].pop("momentum_buffer", None)
        self._previous = None
        self.damping *= 0.5
        self.num_rejected += 1
        self._force_refresh = True
        self._step += 1
        self._record("rejected", loss=loss, reference=self._loss_ref)

    # ------------------------------------------------------------------ the step
    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        """One step on the loss `closure` returns (it must not call backward).

        Returns:
            The closure's loss (detached).
        """
        params = self._params()
        refresh = (
            self.preconditioner is None
            or self._force_refresh
            or self._step % self.update_every == 0
        )
        check = not refresh and self.auto_lr and self._checks_left > 0
        graph = check or (refresh and self.hessian_batch is None)
        loss = call_closure(closure, params, type(self).__name__)
        if self._rejects(float(loss.detach())):
            self._undo(params, float(loss.detach()))
            return loss.detach()
        grads = gradients(loss, params, create_graph=graph)
        if graph:
            self.num_graphs += 1
        step_graph = GraphHessian(grads, params) if graph else None
        if refresh:
            self._refresh(self._curvature_operator(step_graph))
        elif check:
            assert step_graph is not None
            self._check(step_graph)
        del step_graph
        self._force_refresh = False
        g = flat(grads)
        del grads
        with torch.no_grad():
            w = flat(params)
            if self.guard is not None:
                self._previous = w.clone()
            if self.weight_decay:
                g_total = g + self.weight_decay * w
            else:
                g_total = g
            assert self.preconditioner is not None
            d = self.preconditioner.with_shift(self.weight_decay).solve(g_total)
            cap = math.inf
            value = float(loss.detach())
            if self.cap_decrease and value > 0:
                delta2 = float(g_total @ d)  # the Newton decrement squared, in P's norm
                if delta2 > 2 * value:  # (t - t^2/2) delta2 = value has a root t < 1
                    cap = 1.0 - math.sqrt(1.0 - 2.0 * value / delta2)
            offset = 0
            for i, group in enumerate(self.param_groups):
                size = group["lr"] * self.damping
                if group["auto_lr"]:
                    size = min(size, cap)
                if i == 0:
                    self.last_step_size = size
                beta = group["momentum"]
                for p in group["params"]:
                    k = p.numel()
                    dp = d[offset : offset + k].view_as(p).to(p.dtype)
                    p.grad = g[offset : offset + k].view_as(p).to(p.dtype).clone()
                    offset += k
                    if beta:
                        state = self.state[p]
                        buf = state.get("momentum_buffer")
                        if buf is None:
                            buf = state["momentum_buffer"] = dp.clone()
                        else:
                            buf.mul_(beta).add_(dp, alpha=1 - beta)
                        dp = buf
                    p.add_(dp, alpha=-size)
        self._step += 1
        return loss.detach()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state plus the sketch, the step-size state and the counters."""
        sd = super().state_dict()
        sd["sketchy"] = {
            "step": self._step,
            "refreshes": self._refreshes,
            "estimates": self._estimates,
            "L": self._L,
            "L_sketch": self._L_sketch,
            "checks_left": self._checks_left,
            "ratios": list(self._ratios),
            "ratio_now": self._ratio_now,
            "top": None if self._top is None else self._top.clone(),
            "preconditioner": (
                None if self.preconditioner is None else self.preconditioner.state_dict()
            ),
            "num_matvecs": self.num_matvecs,
            "num_graphs": self.num_graphs,
            "seed": self.seed,
            "history": [dict(r) for r in self.history],
            "damping": self.damping,
            "num_rejected": self.num_rejected,
            "loss_avg": self._loss_avg,
            "loss_ref": self._loss_ref,
            "previous": None if self._previous is None else self._previous.clone(),
            "force_refresh": self._force_refresh,
            "last_step_size": self.last_step_size,
        }
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore `state_dict`: the next step is the one the saved run would have taken."""
        sd = dict(state_dict)
        extra = sd.pop("sketchy", None)
        if extra is None:
            raise ValueError(
                "this state dict was not written by SketchySGD.state_dict (no 'sketchy' entry)"
            )
        super().load_state_dict(sd)
        self._step = int(extra["step"])
        self._refreshes = int(extra["refreshes"])
        self._estimates = int(extra["estimates"])
        self._L = float(extra["L"])
        self._L_sketch = float(extra["L_sketch"])
        self._checks_left = int(extra["checks_left"])
        self._ratios = [float(r) for r in extra["ratios"]]
        self._ratio_now = float(extra["ratio_now"])
        top = extra["top"]
        self._top = None if top is None else top.clone()
        pre = extra["preconditioner"]
        self.preconditioner = None if pre is None else NystromPreconditioner.from_state_dict(pre)
        self.num_matvecs = int(extra["num_matvecs"])
        self.num_graphs = int(extra["num_graphs"])
        self.seed = int(extra["seed"])
        self.history = [dict(r) for r in extra["history"]]
        self.damping = float(extra["damping"])
        self.num_rejected = int(extra["num_rejected"])
        self._loss_avg = float(extra["loss_avg"])
        self._loss_ref = float(extra["loss_ref"])
        prev = extra["previous"]
        self._previous = None if prev is None else prev.clone()
        self._force_refresh = bool(extra["force_refresh"])
        self.last_step_size = float(extra["last_step_size"])


__all__ = ["SketchySGD", "top_eigenvalue"]
