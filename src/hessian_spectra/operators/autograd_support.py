"""Second derivatives through models whose operations torch cannot differentiate twice.

A Hessian-vector product differentiates the gradient graph once more
(double backward), or pushes a tangent through it (forward-over-reverse).
Two kinds of operation stand in the way in common models:

- fused kernels chosen at run time: PyTorch's scaled-dot-product attention
  picks a flash or memory-efficient kernel whose backward has no derivative
  (``derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward
  is not implemented``: every HuggingFace transformer with ``attn_implementation
  ="sdpa"``, ``nn.MultiheadAttention``). `twice_differentiable` selects the
  math backend, built from differentiable operations, around the forward of a
  product only, so the fused kernels stay in use everywhere else;
- operations whose backward has no derivative at all (``aten::hardsigmoid_backward``:
  ``nn.Hardsigmoid``, in MobileNetV3's squeeze-and-excitation blocks; cuDNN's
  RNN backward on a GPU). `derivatives_explained` turns torch's error into one
  that names the operation, the modules of the model that use it, and the fix:
  ``hvp_mode="finite_difference"``, which needs first derivatives only
  (``operators/finite_difference.py``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "UnsupportedDerivativeError",
    "derivatives_explained",
    "missing_derivative",
    "modules_using",
    "twice_differentiable",
]


@contextlib.contextmanager
def twice_differentiable(enabled: bool = True) -> Iterator[None]:
    """Run a forward whose graph can be differentiated twice (attention on the math backend).

    ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``: the flash and
    memory-efficient attention kernels have no double backward and no
    forward-mode derivative of their backward; the math backend computes the
    same function from differentiable operations. Only the forward needs the
    context: the graph it records is what the backward passes differentiate.
    """
    if not enabled:
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


class UnsupportedDerivativeError(RuntimeError):
    """A product needs a derivative torch does not implement; the message says which and why.

    Attributes:
        op: the operation without the derivative, e.g. ``aten::hardsigmoid_backward``.
        modules: ``"name (Type)"`` of the model's modules that use it (may be empty:
            a functional call).
    """

    def __init__(self, message: str, op: str, modules: list[str]) -> None:
        super().__init__(message)
        self.op = op
        self.modules = modules


# torch's messages for a missing derivative, in reverse mode and in forward mode
_PATTERNS = (
    re.compile(r"derivative for (aten::[\w.]+) is not implemented"),
    re.compile(r"Trying to use forward AD with (aten::[\w.]+) that does not support it"),
    re.compile(r"derivative for '?([\w.:]+)'? is not implemented"),
)

# operations whose module is not named after them (the base name of the op, without
# a leading underscore and a trailing _backward); other ops match module types by name
_OP_MODULES: dict[str, tuple[type[nn.Module], ...]] = {
    "hardsigmoid": (nn.Hardsigmoid,),
    "hardswish": (nn.Hardswish,),
    "scaled_dot_product_flash_attention_for_cpu": (nn.MultiheadAttention,),
    "scaled_dot_product_flash_attention": (nn.MultiheadAttention,),
    "scaled_dot_product_efficient_attention": (nn.MultiheadAttention,),
    "scaled_dot_product_cudnn_attention": (nn.MultiheadAttention,),
    "cudnn_rnn": (nn.RNNBase,),
    "miopen_rnn": (nn.RNNBase,),
    "cudnn_batch_norm": (nn.modules.batchnorm._BatchNorm,),
    "native_batch_norm": (nn.modules.batchnorm._BatchNorm,),
}


def missing_derivative(err: BaseException) -> str | None:
    """The operation a missing-derivative error of torch names (``aten::...``), else None."""
    text = str(err)
    for pattern in _PATTERNS:
        found = pattern.search(text)
        if found:
            return found.group(1)
    return None


def _base_name(op: str) -> str:
    name = op.split("::")[-1].split(".")[0].lstrip("_")
    return name.removesuffix("_backward").removesuffix("_forward")


def modules_using(model: nn.Module, op: str) -> list[str]:
    """``"name (Type)"`` of the modules of `model` that call `op`, as far as their type tells.

    Known operations map to module types (``aten::hardsigmoid_backward`` to
    ``nn.Hardsigmoid``, the fused attention kernels to ``nn.MultiheadAttention``
    and any module whose type name ends in ``Attention``, cuDNN's RNN to
    ``nn.RNNBase``); any other operation matches the modules whose type name,
    lower-cased, is its base name (``aten::elu_backward``: ``ELU``).
    """
    base = _base_name(op)
    types = _OP_MODULES.get(base, ())
    attention = "attention" in base
    found = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if (
            (types and isinstance(module, types))
            or kind.lower() == base.replace("_", "")
            or (attention and kind.endswith("Attention"))
        ):
            found.append(f"{name or 'model'} ({kind})")
    return found


def _explain(op: str, modules: list[str], hvp_mode: str) -> str:
    shown = ", ".join(modules[:4]) + (f" and {len(modules) - 4} more" if len(modules) > 4 else "")
    where = (
        f"used by {shown}"
        if modules
        else "used by no module of a known type (a functional call in some forward)"
    )
    how = (
        "a forward-mode derivative of its backward (forward-over-reverse)"
        if hvp_mode == "forward_over_reverse"
        else "a derivative of its backward (double backward)"
    )
    return (
        f"hvp_mode={hvp_mode!r} needs {how} of every operation of the model, and torch "
        f"implements none for {op}, {where}. Use hvp_mode='finite_difference': central "
        "differences of gradients, which need first derivatives only (its relative error "
        "estimate is op.fd_error_estimate); or replace those modules by twice-differentiable "
        "ones (e.g. nn.Hardsigmoid by a module returning torch.clamp(x / 6 + 0.5, 0, 1))"
    )


@contextlib.contextmanager
def derivatives_explained(model: nn.Module, hvp_mode: str) -> Iterator[None]:
    """Turn torch's missing-derivative errors raised inside into `UnsupportedDerivativeError`.

    The new message names the operation, the model's modules that use it
    (`modules_using`) and the fix (``hvp_mode='finite_difference'``). Other
    errors pass unchanged.
    """
    try:
        yield
    except (RuntimeError, NotImplementedError) as err:
        if isinstance(err, UnsupportedDerivativeError):
            raise
        op = missing_derivative(err)
        if op is None:
            raise
        modules = modules_using(model, op)
        raise UnsupportedDerivativeError(_explain(op, modules, hvp_mode), op, modules) from err
