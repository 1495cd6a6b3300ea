"""Is the operator a fixed matrix? Multiply a vector twice and name the likely cause if not.

A curvature operator over a model is only a matrix when every pass over the
data computes the same thing. Dropout in train mode (a module, ``F.dropout``
or an RNN's dropout), noise drawn in forward, train-mode BatchNorm over
differently composed batches, random data augmentation, a sampler that draws
a random subset or a stream of new data all break that, and an eigensolver
then returns noise that it reports as converged. Two checks record what each
pass saw (per-sample digests of inputs and targets) to tell changed data
from a random model:

- `check_first_product` (the default): the operator's first product is taken
  again for one of its vectors, one extra product in the operator's life;
- `check_deterministic`: a random probe multiplied twice when the operator is
  built, before any algorithm runs.

A shuffled loader passes: only the summation order changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from hessian_spectra.operators.model import ModelLoss

Digests = tuple[list[tuple[float, float]], list[tuple[float, float]]]


def sample_digests(batch: Any) -> Digests:
    """Per-sample (sum, sum of squares) of the inputs and of the targets of a batch.

    For an ``(inputs, targets)`` batch; other layouts count everything as inputs.
    """

    def rows(t: torch.Tensor) -> list[tuple[float, float]]:
        flat = t.detach().reshape(t.shape[0], -1).double() if t.ndim else t.reshape(1, 1).double()
        return list(zip(flat.sum(1).tolist(), (flat * flat).sum(1).tolist(), strict=True))

    if (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and all(isinstance(t, torch.Tensor) for t in batch)
    ):
        return rows(batch[0]), rows(batch[1])
    parts: list[torch.Tensor] = []
    if isinstance(batch, torch.Tensor):
        parts = [batch]
    elif isinstance(batch, Mapping):
        parts = [v for v in batch.values() if isinstance(v, torch.Tensor)]
    elif isinstance(batch, (tuple, list)):
        parts = [v for v in batch if isinstance(v, torch.Tensor)]
    return [r for t in parts for r in rows(t)], []


def check_deterministic(
    product: Callable[[torch.Tensor], torch.Tensor],
    problem: ModelLoss,
    n: int,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Multiply one random probe twice; raise, naming the likely cause, when they differ.

    Args:
        product: the operator's uncounted block product, ``(n, b) -> (n, b)``.
        problem: the `ModelLoss` whose batches the product passes over.
        n, dtype, device: the operator's size, dtype and device.

    Raises:
        RuntimeError: the two products differ by more than 100 machine
            epsilons relatively.
    """
    gen = torch.Generator().manual_seed(0)
    v = torch.randn((n, 1), generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    logs: list[list[Digests]] = [[], []]
    h1 = _logged(product, problem, v, logs[0])
    with torch.random.fork_rng(devices=[]):
        h2 = _logged(product, problem, v, logs[1])
    _compare(h1[:, 0], h2[:, 0], problem, logs, "check_deterministic=True")


def check_first_product(
    product: Callable[[torch.Tensor], torch.Tensor], problem: ModelLoss, V: torch.Tensor
) -> tuple[torch.Tensor, bool]:
    """``product(V)``, with its column of largest norm multiplied a second time and compared.

    The repeat runs with the global CPU generator forked, so the random
    numbers later code draws (a shuffling DataLoader's order) are those it
    would draw without the check. A block of zeros, or a product that is not
    finite (the finite check's business), is not checked.

    Returns:
        The product of V and whether the check ran.

    Raises:
        RuntimeError: the two products differ by more than 100 machine
            epsilons relatively, naming the likely cause.
    """
    norms = torch.linalg.vector_norm(V.detach(), dim=0)
    j = int(torch.argmax(norms))
    if not float(norms[j]) > 0:
        return product(V), False
    logs: list[list[Digests]] = [[], []]
    out = _logged(product, problem, V, logs[0])
    if not bool(torch.isfinite(out[:, j]).all()):
        return out, False
    with torch.random.fork_rng(devices=[]):
        again = _logged(product, problem, V[:, j : j + 1], logs[1])
    _compare(out[:, j], again[:, 0], problem, logs, "check_deterministic=False")
    return out, True


def _logged(
    product: Callable[[torch.Tensor], torch.Tensor],
    problem: ModelLoss,
    V: torch.Tensor,
    log: list[Digests],
) -> torch.Tensor:
    """``product(V)`` with each batch's digests appended to `log`."""
    problem.on_batch = lambda batch: log.append(sample_digests(batch))
    try:
        return product(V)
    finally:
        problem.on_batch = None


def _compare(
    h1: torch.Tensor,
    h2: torch.Tensor,
    problem: ModelLoss,
    logs: list[list[Digests]],
    switch: str,
) -> None:
    """Raise, naming the likely cause, when two products of one vector differ beyond rounding."""
    a, b = h1.double(), h2.double()
    scale = float(torch.linalg.vector_norm(a))
    diff = float(torch.linalg.vector_norm(a - b))
    tol = 100 * torch.finfo(h1.dtype).eps
    if math.isfinite(diff) and diff <= tol * max(scale, 1e-300):
        return
    off = "" if switch.endswith("True") else f". To skip this check, pass {switch}"
    raise RuntimeError(
        f"the operator is not a fixed matrix: two products with the same vector differ by "
        f"{diff:.3g} relative to {scale:.3g} (tolerance: {tol:.1g} relative), so no "
        f"eigenvalue or trace computed from it can be trusted. "
        f"{likely_cause(problem.model, logs[0], logs[1])}{off}"
    )


def _train_mode_rnn_dropout(model: nn.Module) -> list[str]:
    return [
        name or "model"
        for name, m in model.named_modules()
        if m.training and isinstance(m, nn.RNNBase) and float(m.dropout) > 0
    ]


def _train_mode(model: nn.Module, kind: type) -> list[str]:
    return [
        name or "model" for name, m in model.named_modules() if m.training and isinstance(m, kind)
    ]


def likely_cause(model: nn.Module, first: list[Digests], second: list[Digests]) -> str:
    """The likely cause of two different products, from what each pass saw."""
    x1 = sorted(r for inputs, _ in first for r in inputs)
    x2 = sorted(r for inputs, _ in second for r in inputs)
    y1 = sorted(r for _, targets in first for r in targets)
    y2 = sorted(r for _, targets in second for r in targets)
    if x1 == x2 and y1 == y2:
        dropout = _train_mode(model, nn.modules.dropout._DropoutNd)
        if dropout:
            return (
                f"Likely cause: Dropout in train mode ({', '.join(dropout[:3])}) draws new "
                "masks on every pass; call model.eval() and drop allow_train_mode=True"
            )
        batchnorm = _train_mode(model, nn.modules.batchnorm._BatchNorm)
        if batchnorm:
            return (
                "Likely cause: train-mode BatchNorm "
                f"({', '.join(batchnorm[:3])}) normalizes with the statistics of batches "
                "that are composed differently on each pass; call model.eval()"
            )
        rnn = _train_mode_rnn_dropout(model)
        if rnn:
            return (
                f"Likely cause: an RNN built with dropout>0 in train mode ({', '.join(rnn[:3])}) "
                "draws new masks on every pass; call model.eval()"
            )
        if any(m.training for m in model.modules()):
            return (
                "Both passes saw the same samples, so the model or the loss is random, and "
                "the model is in train mode: functional dropout "
                "(F.dropout(x, training=self.training)) or another layer that is random in "
                "train mode is the likely cause; call model.eval(), or make the forward pass "
                "deterministic (no noise drawn in forward)"
            )
        return (
            "Both passes saw the same samples, so the model or the loss is random (a "
            "stochastic layer or noise drawn in forward): make the forward pass "
            "deterministic"
        )
    if len(x1) == len(x2) and y1 == y2:
        return (
            "Likely cause: random data augmentation: the same targets came with different "
            "inputs on the two passes (e.g. RandomCrop or RandomHorizontalFlip in the data "
            "set's transform); build the Hessian's data without random transforms"
        )
    return (
        f"Likely cause: the data yield different samples on each pass ({len(x1)} then "
        f"{len(x2)} samples, with different targets), e.g. a sampler that draws a random "
        "subset or an iterable that streams new data; pass a fixed list of batches or a "
        "DataLoader over a fixed data set (shuffle=True is fine)"
    )
