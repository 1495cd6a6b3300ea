"""Is the operator a fixed matrix? Multiply a probe twice and name the likely cause if not.

A curvature operator over a model is only a matrix when every pass over the
data computes the same thing. Dropout in train mode, train-mode BatchNorm
over differently composed batches, random data augmentation, a sampler that
draws a random subset or a stream of new data all break that, and an
eigensolver then returns noise. `check_deterministic` catches it before any
algorithm runs: it records what each pass saw (per-sample digests of inputs
and targets) to tell changed data from a random model. A shuffled loader
passes: only the summation order changes.
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
    logs: list[list[Digests]] = []
    products = []
    for _ in range(2):
        log: list[Digests] = []
        problem.on_batch = _recorder(log)
        try:
            products.append(product(v).double())
        finally:
            logs.append(log)
            problem.on_batch = None
    h1, h2 = products
    scale = float(torch.linalg.vector_norm(h1))
    diff = float(torch.linalg.vector_norm(h1 - h2))
    tol = 100 * torch.finfo(dtype).eps
    if math.isfinite(diff) and diff <= tol * max(scale, 1e-300):
        return
    raise RuntimeError(
        f"check_deterministic: two products with the same vector differ by {diff:.3g} "
        f"relative to {scale:.3g} (tolerance: {tol:.1g} relative), so the operator is "
        f"not a fixed matrix. {likely_cause(problem.model, logs[0], logs[1])}"
    )


def _recorder(log: list[Digests]) -> Callable[[Any], None]:
    """A batch observer that appends each batch's digests to `log`."""
    return lambda batch: log.append(sample_digests(batch))


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
