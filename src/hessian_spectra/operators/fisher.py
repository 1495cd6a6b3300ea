"""The Fisher information of a network's loss, empirical or Monte-Carlo, known through products.

With the batch mean loss written ``L = (1/c) sum_i l_i``, where ``l_i`` is
sample i's summed loss (the criterion with ``reduction='sum'`` on that sample
alone) and ``c`` the mean's denominator (`OutputLoss.normalizer`):

- the empirical Fisher of a batch is ``(1/c) sum_i g_i g_i^T`` with
  ``g_i = grad l_i(y_i)`` at the data's targets; for a classifier with
  ``(B, C)`` logits that is ``mean_i g_i g_i^T``;
- the Monte-Carlo Fisher replaces each target by ``num_samples`` targets
  drawn from the model's predictive distribution (softmax, sigmoid, or the
  Gaussian whose negative log-likelihood the squared error is) and averages
  their ``g g^T``. Its expectation is the GGN (`GGNOperator`), exactly: for a
  negative log-likelihood, ``E[grad l grad l^T] = `` the output Hessian.

The draws come from a CPU ``torch.Generator`` restarted from the seed at
every product, so every product sees the same labels and the operator is one
fixed matrix (with a re-iterable of batches in a fixed order; a shuffled
loader pairs other labels with other samples on each pass).

Per-sample gradients come from ``torch.func`` (``vmap`` over a per-sample
vector-Jacobian product through ``functional_call``), a few samples at a
time: a chunk of r samples and s draws holds an (r s, n) block, kept under
`CHUNK_ELEMENTS` numbers. A block of b vectors then costs one pass of
per-sample gradients per batch, whatever b. Batches are weighed, summed and
reduced across ranks as for `HessianOperator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from hessian_spectra import _distributed
from hessian_spectra.operators.ggn import SUPPORTED_LOSSES, OutputLoss, model_output, output_loss
from hessian_spectra.operators.hessian import HessianOperator
from hessian_spectra.operators.model import Criterion, ParamSpec

__all__ = ["CHUNK_ELEMENTS", "FisherOperator", "Kind"]

Kind = Literal["empirical", "mc"]
KINDS = ("empirical", "mc")

#: the most numbers a chunk of per-sample gradients holds (2**24: 128 MiB in float64)
CHUNK_ELEMENTS = 2**24


def _map(fn: Any, x: Any) -> Any:
    """Apply `fn` to every tensor in nested tuples, lists and dicts."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: _map(fn, v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_map(fn, v) for v in x)
    return x


class FisherOperator(HessianOperator):
    """The empirical or Monte-Carlo Fisher of a model's mean loss, known through products.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> _ = torch.manual_seed(0)
        >>> nn = torch.nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        >>> x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
        >>> ef = hs.FisherOperator(model, nn.CrossEntropyLoss(), (x, y))
        >>> params = list(model.parameters())
        >>> def g(i):  # sample i's gradient
        ...     loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        ...     return torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])
        >>> F = sum(torch.outer(g(i), g(i)) for i in range(32)) / 32  # mean_i g_i g_i^T
        >>> v = torch.randn(67, dtype=torch.float64)
        >>> bool(torch.allclose(ef @ v, F @ v))
        True
        >>> mc = hs.FisherOperator(
        ...     model, nn.CrossEntropyLoss(), (x, y), kind="mc", num_samples=4, seed=0
        ... )
        >>> bool(torch.equal(mc @ v, mc @ v))  # the same draws for every product
        True

    Args:
        model: the network; ``model(inputs)`` returns the criterion's input as
            one tensor and treats the samples of a batch independently (in
            eval mode: per-sample gradients of train-mode BatchNorm are not
            defined).
        criterion: ``nn.CrossEntropyLoss``, ``nn.MSELoss`` or
            ``nn.BCEWithLogitsLoss`` (or their ``torch.nn.functional``
            forms) with ``reduction='mean'``. The Monte-Carlo Fisher refuses
            class weights, label smoothing and ``pos_weight`` (the loss is then
            no negative log-likelihood to sample from).
        data: one batch ``(inputs, targets)`` or a re-iterable of batches, as
            for `HessianOperator`.
        kind: ``"empirical"`` (the data's targets) or ``"mc"`` (targets drawn
            from the model's predictive distribution).
        num_samples: draws per sample for ``kind="mc"`` (the estimate's
            variance falls as 1/num_samples).
        seed: the seed of the draws (``kind="mc"``); None draws one (rank
            0's, with ``torch.distributed``), kept in `seed`. Each rank mixes
            its rank into it, so ranks draw independently.
        params: which parameters, as for `HessianOperator`.
        **options: the data-pass options of `HessianOperator` (``check_finite``,
            ``distributed``, ``check_deterministic`` and any other it takes)
            but ``hvp_mode``, ``loss_fn`` and ``allow_train_mode``.

    Attributes:
        kind, seed: as given (the seed drawn when None; None for "empirical").
        mc_samples: draws per sample (`num_samples`; the attribute
            ``num_samples`` is the samples of the last product, as for
            `HessianOperator`).
        output_loss: the criterion's `OutputLoss`.
        param_names, params, blocks, model_loss, is_distributed: as for
            `HessianOperator`.
    """

    positive_semidefinite = True  # a mean of outer products g g^T

    def __init__(
        self,
        model: nn.Module,
        criterion: Criterion | None = None,
        data: Any = None,
        *,
        kind: Kind = "empirical",
        num_samples: int = 1,
        seed: int | None = None,
        params: ParamSpec = None,
        **options: Any,
    ) -> None:
        for name in ("hvp_mode", "loss_fn", "allow_train_mode"):
            if name in options:
                raise TypeError(
                    f"FisherOperator takes no {name}: it needs the model's output and the "
                    "criterion separately, and per-sample gradients of a model in eval mode"
                )
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if criterion is None:
            raise ValueError(
                f"FisherOperator needs a criterion, one of {', '.join(SUPPORTED_LOSSES)}, "
                "called as criterion(model(inputs), targets); a model's own loss "
                "(model(**batch).loss, HuggingFace) gives no output to take the curvature of: "
                "use HessianOperator(model, data=batches) for it"
            )
        self.kind: Kind = kind
        self.output_loss: OutputLoss = output_loss(criterion)
        if kind == "mc":
            self.output_loss.check_sampling()
            self.mc_samples = num_samples
            if seed is None:
                seed = int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0])
                if _distributed.resolve_distributed(options.get("distributed", "auto")):
                    seed = int(_distributed.broadcast_from_main(seed))  # type: ignore[call-overload]
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
            self.seed: int | None = int(seed)
        else:
            if num_samples != 1 or seed is not None:
                raise ValueError(
                    "num_samples and seed are for kind='mc'; the empirical Fisher uses the "
                    "data's targets"
                )
            self.mc_samples = 1
            self.seed = None
        self._generator = torch.Generator()
        # before the base class: a determinism check there already multiplies
        super().__init__(model, criterion, data, params=params, **options)

    def fingerprint(self) -> dict[str, Any]:
        """`HessianOperator`'s fingerprint plus the kind, the draws and their seed."""
        return {
            **super().fingerprint(),
            "kind": self.kind,
            "mc_samples": self.mc_samples,
            "seed": self.seed,
        }

    def _accumulate(self, V: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One pass over the data; the draws restart from the seed, so every pass sees the same."""
        if self.seed is not None:
            mixed = np.random.SeedSequence([self.seed, self.model_loss.shard.rank])
            self._generator.manual_seed(int(mixed.generate_state(1)[0]))
        return super()._accumulate(V)

    def _batch_product(self, batch: Any, Vt: list[torch.Tensor]) -> tuple[Any, float]:
        """(1/c) sum_i (1/s) sum_draws g g^T V for one batch, from per-sample gradients."""
        with torch.no_grad():
            f, targets, weight = model_output(self, batch)
        inputs = batch[0]
        out = self.output_loss
        if self.kind == "mc":
            draws = out.sample(f, targets, self.mc_samples, self._generator)
            row_loss = out.nll_sum
        else:
            draws = targets.unsqueeze(1)
            row_loss = out.sum_loss
        b = Vt[0].shape[0]
        V = torch.cat([v.reshape(b, -1) for v in Vt], 1).T  # (n, b)
        primals = {n: p.detach() for n, p in zip(self.param_names, self.params, strict=True)}
        model = self.model

        def sample_grads(x: Any, ys: torch.Tensor) -> dict[str, torch.Tensor]:
            """One sample's gradients, one per draw: a forward, then a vjp per draw."""

            def output(p: dict[str, torch.Tensor]) -> torch.Tensor:
                return functional_call(model, p, (_map(lambda t: t.unsqueeze(0), x),))

            pulled = vjp(output, primals)
            fx, pullback = pulled[0], pulled[1]
            cotangents = vmap(lambda y: grad(row_loss)(fx, y.unsqueeze(0)))(ys)
            return vmap(pullback)(cotangents)[0]

        rows = f.shape[0]
        n = self.shape[0]
        step = max(1, CHUNK_ELEMENTS // max(1, n * self.mc_samples))
        total = torch.zeros((n, b), dtype=V.dtype, device=V.device)
        for lo in range(0, rows, step):
            rows_here = slice(lo, min(rows, lo + step))
            grads = vmap(sample_grads)(_map(lambda t, r=rows_here: t[r], inputs), draws[rows_here])
            G = torch.cat([grads[k].reshape(-1, p.numel()) for k, p in primals.items()], 1)
            total += G.T @ (G @ V)
        scale = 1.0 / (self.mc_samples * float(out.normalizer(f, targets)))
        return total * scale, weight

    def __repr__(self) -> str:
        mc = f", num_samples={self.mc_samples}, seed={self.seed}" if self.kind == "mc" else ""
        return (
            f"FisherOperator(n={self.shape[0]}, kind={self.kind!r}{mc}, "
            f"loss={self.output_loss.name}, dtype={self.dtype}, device={self.device})"
        )
