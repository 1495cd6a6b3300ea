"""The closure convention of the curvature-fed optimizers, and products on its graph.

An optimizer here calls ``closure()`` for the mini-batch loss and
differentiates it itself: with ``create_graph=True`` on the steps where it
needs curvature, so that Hessian-vector products run on the same graph
without a second forward pass (`GraphHessian`). A closure that calls
``backward`` itself would free that graph; `call_closure` catches it and says
what to change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hessian_spectra.operators import LinearOperator

Closure = Callable[[], torch.Tensor]


def call_closure(closure: Closure | None, params: Sequence[torch.Tensor], who: str) -> torch.Tensor:
    """Call the closure (gradients cleared first) and check it returned a differentiable loss.

    Raises:
        ValueError: no closure, or it returned something other than a scalar
            tensor with a gradient graph.
        RuntimeError: the closure called ``backward`` (a parameter got a ``.grad``).
    """
    if closure is None:
        raise ValueError(
            f"{who}.step needs a closure that returns the mini-batch loss, e.g. "
            "opt.step(lambda: criterion(model(x), y)); it differentiates the loss itself"
        )
    for p in params:
        p.grad = None
    with torch.enable_grad():
        loss = closure()
    if any(p.grad is not None for p in params):
        raise RuntimeError(
            f"the closure called backward(): {who} differentiates the loss itself (with "
            "create_graph=True when it measures curvature), so the closure must only compute "
            "and return the loss. Remove loss.backward() (and zero_grad()) from the closure"
        )
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        kind = type(loss).__name__ if not isinstance(loss, torch.Tensor) else tuple(loss.shape)
        raise ValueError(
            f"the closure must return the loss as a scalar tensor, got {kind}; return "
            "criterion(model(x), y), not loss.item()"
        )
    if not loss.requires_grad:
        raise ValueError(
            "the loss the closure returned has no gradient graph (computed under no_grad, "
            "or detached); compute it with autograd enabled and return it as is"
        )
    return loss.reshape(())


def gradients(
    loss: torch.Tensor, params: Sequence[torch.Tensor], create_graph: bool
) -> list[torch.Tensor]:
    """d loss / d params; zeros for parameters the loss does not use."""
    with torch.enable_grad():
        grads = torch.autograd.grad(
            loss, list(params), create_graph=create_graph, allow_unused=True
        )
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


class GraphHessian(LinearOperator):
    """The Hessian of one loss, multiplied on its retained gradient graph.

    Built from gradients taken with ``create_graph=True``; each column is one
    backward pass through that graph (no forward pass). The graph lives as
    long as this operator and the gradients do.

    Args:
        grads: the gradients (with a graph) of the loss, one per parameter.
        params: the parameters, in the same order (the vector layout).
    """

    def __init__(self, grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> None:
        self.params = list(params)
        self.grads = list(grads)
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise ValueError(
                f"the parameters mix dtypes {sorted(map(str, dtypes))}; convert the model to "
                "one dtype (model.to(torch.float32))"
            )
        self.sizes = [p.numel() for p in self.params]
        # gradients that do not depend on the parameters have a zero Hessian block
        self.live = [i for i, g in enumerate(self.grads) if g.requires_grad]
        super().__init__(sum(self.sizes), self.params[0].dtype, self.params[0].device)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        cols = []
        for j in range(V.shape[1]):
            parts = V[:, j].split(self.sizes)
            full = [torch.zeros_like(p) for p in self.params]
            if self.live:
                with torch.enable_grad():
                    hv = torch.autograd.grad(
                        [self.grads[i] for i in self.live],
                        [self.params[i] for i in self.live],
                        grad_outputs=[parts[i].view_as(self.params[i]) for i in self.live],
                        retain_graph=True,
                        allow_unused=True,
                    )
                for i, h in zip(self.live, hv, strict=True):
                    if h is not None:
                        full[i] = h.detach()
            cols.append(torch.cat([h.reshape(-1) for h in full]))
        return torch.stack(cols, 1)


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors, detached, as one flat vector."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


__all__ = ["Closure", "GraphHessian", "call_closure", "flat", "gradients"]
