"""Leave a training run exactly as it was around a measurement.

A callback measures the spectrum in the middle of someone's training loop.
Whatever it touches must be as before when the loop resumes, so that a run
with the callback trains exactly as the run without it: `training_state_kept`
saves and restores every submodule's train/eval mode, the random number
generators (torch's CPU and CUDA generators, NumPy's global one and Python's
``random``), the parameters' gradients (the same tensors, with their values),
and the grad mode. Inside it, autocast is off (Hessian-vector products in the
parameters' own precision, not in a mixed-precision context the loop may have
open), and ``scaled_dot_product_attention`` runs its plain math kernel: the
fused kernels (flash attention on the CPU, for one) have no second derivative,
so the Hessian of a transformer needs the composite one.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["training_state_kept"]


@contextlib.contextmanager
def training_state_kept(model: nn.Module) -> Iterator[None]:
    """A context after which modes, RNG states, gradients and grad mode are as before it.

    Inside it autocast is off and attention uses its twice-differentiable math kernel.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
        >>> model[1].eval()  # a frozen eval-mode layer inside a train-mode model
        Dropout(p=0.5, inplace=False)
        >>> before = torch.get_rng_state()
        >>> with training_state_kept(model):
        ...     _ = model.eval(), torch.randn(3)
        >>> model.training, model[1].training, torch.equal(torch.get_rng_state(), before)
        (True, False, True)
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [
        (p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()
    ]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    np_rng = np.random.get_state()
    py_rng = random.getstate()
    grad_enabled = torch.is_grad_enabled()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.autocast("cpu", enabled=False))
            if torch.cuda.is_available():
                stack.enter_context(torch.autocast("cuda", enabled=False))
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))  # twice differentiable
            yield
    finally:
        torch.set_grad_enabled(grad_enabled)
        random.setstate(py_rng)
        np.random.set_state(np_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        torch.set_rng_state(cpu_rng)
        with torch.no_grad():
            for p, grad, values in grads:
                if grad is not None and values is not None:
                    grad.copy_(values)
                p.grad = grad
        for m, training in modes:
            m.training = training
