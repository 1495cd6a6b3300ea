"""Parameters grouped the way networks are built: per repeated layer, or per module role.

A transformer is a stack of identical blocks (GPT-2's ``transformer.h.0``,
``transformer.h.1``, ...; BERT's ``bert.encoder.layer.N``), with embeddings
before the stack and a head after it; inside each block sit attention
projections, an MLP and normalization layers. Zhang et al. 2024 ("Why
Transformers Need Adam: A Hessian Perspective") compare the Hessian spectra of
such blocks. `group_parameters` splits a flat parameter vector into them:

- ``"layers"``: one group per block of the model's repeated stacks. A stack is
  an ``nn.ModuleList`` or ``nn.Sequential`` holding at least two children with
  parameters, all of one type; the outermost stacks are used (a ResNet's
  ``layer1``, ``layer2``, ... each contribute their blocks, named
  ``layer1.0``, ``layer1.1``, ...). Every other parameter goes to
  ``"embeddings"`` (held by an ``nn.Embedding``, or named ``*embed*``/
  ``*pos*``/``*token*`` on a non-leaf module, and whatever precedes the
  first block in a model with embeddings), ``"stem"`` (before the first
  block otherwise), ``"head"`` (after the last block) or ``"other"`` (between blocks).
  A model without such a stack gets one group per top-level child.
- ``"modules"``: one group per role of the module holding each parameter:
  ``"embeddings"``, ``"norm"`` (LayerNorm, RMSNorm, BatchNorm, GroupNorm: any
  module whose class name contains "Norm"), ``"attention"`` (a module path
  with ``attn``/``attention``/``q_proj``/``query``/... in it), ``"mlp"``
  (other linear layers inside a block of a stack, or under ``mlp``/``ffn``/
  ``feed_forward``/``intermediate``), ``"head"`` (after the last block) and
  otherwise the module's class name in lower case (``"conv2d"``, ``"linear"``).
  In a plain ``nn.Sequential`` of linear layers every layer is a block, so
  all are ``"mlp"``.
- ``"parameters"``: one group per parameter tensor (the operator's ``blocks``).

Groups keep the order of their first parameter in the vector; a group whose
coordinates are contiguous is a ``slice``, otherwise a long index tensor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["GROUPINGS", "group_names", "group_parameters", "repeated_blocks"]

#: the groupings `group_parameters` knows
GROUPINGS = ("layers", "modules", "parameters")

_ATTENTION = re.compile(r"attn|attention|q_proj|k_proj|v_proj|o_proj|out_proj|query|key|value|qkv")
_MLP = re.compile(r"(^|\.)(mlp|ffn|feed_forward|feedforward|intermediate|fc\d*|c_fc)(\.|$)")
_EMBED = re.compile(r"embed|(^|\.|_)(pos|token|tokens|cls_token|wte|wpe)(_|\.|$)")


def _module_path(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def repeated_blocks(model: nn.Module) -> list[str]:
    """The module paths of the blocks of the model's outermost repeated stacks, in order.

    A stack is an ``nn.ModuleList`` or ``nn.Sequential`` with at least two
    children holding parameters, all of the same type; a stack inside a block
    of another stack is not used. ``[]`` when the model has none.
    """
    stacks: list[str] = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        if any(path == s or path.startswith(f"{s}.") for s in stacks):
            continue  # inside a stack already found (named_modules goes outside in)
        children = [(n, c) for n, c in module.named_children() if _has_params(c)]
        if len(children) >= 2 and len({type(c) for _, c in children}) == 1:
            stacks.append(path)
    blocks: list[str] = []
    for s in stacks:
        module = model.get_submodule(s)
        blocks += [f"{s}.{n}" if s else n for n, c in module.named_children() if _has_params(c)]
    return blocks


def _block_of(path: str, blocks: Sequence[str]) -> str | None:
    for b in blocks:
        if path == b or path.startswith(f"{b}."):
            return b
    return None


def _is_norm(module: nn.Module) -> bool:
    return "Norm" in type(module).__name__


def group_names(model: nn.Module, names: Sequence[str], how: str) -> dict[str, list[str]]:
    """Group parameter names: ``{group: [parameter names]}``, in the order of `names`.

    Args:
        model: the network the names belong to.
        names: the selected parameters' names (e.g. ``op.param_names``).
        how: ``"layers"``, ``"modules"`` or ``"parameters"`` (see the module's
            documentation).

    Raises:
        ValueError: `how` is not one of those, or a name is not a parameter of the model.
    """
    if how not in GROUPINGS:
        raise ValueError(
            f"blocks={how!r} is not a grouping; use one of {GROUPINGS} or a mapping "
            "name -> slice or index tensor"
        )
    known = dict(model.named_parameters())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{unknown[:4]} are not parameters of the model")
    if how == "parameters":
        return {n: [n] for n in names}
    blocks = repeated_blocks(model)
    order = list(known)
    pos_of = {n: i for i, n in enumerate(order)}
    inside = [pos_of[n] for n in order if _block_of(_module_path(n), blocks) is not None]
    first, last = (min(inside), max(inside)) if inside else (len(order), -1)
    embedded = any(isinstance(m, nn.Embedding) for m in model.modules())
    groups: dict[str, list[str]] = {}
    for name in names:
        path = _module_path(name)
        try:
            module = model.get_submodule(path)
        except AttributeError:
            module = model
        block = _block_of(path, blocks)
        pos = pos_of[name]
        leaf = not any(True for _ in module.children())
        if how == "layers":
            if block is not None:
                group = block
            elif not blocks:
                group = name.split(".")[0] if "." in name else "other"
            else:
                group = _outside(name, module, leaf, pos, first, last, embedded)
        else:
            group = _role(name, path, module, leaf, block, pos, first, last, bool(blocks))
        groups.setdefault(group, []).append(name)
    return groups


def _outside(
    name: str, module: nn.Module, leaf: bool, pos: int, first: int, last: int, embedded: bool
) -> str:
    """The group of a parameter outside every repeated block."""
    if isinstance(module, nn.Embedding) or (not leaf and _EMBED.search(name.rpartition(".")[2])):
        return "embeddings"
    if pos < first:
        return "embeddings" if embedded else "stem"
    if pos > last:
        return "head"
    return "other"


def _role(
    name: str,
    path: str,
    module: nn.Module,
    leaf: bool,
    block: str | None,
    pos: int,
    first: int,
    last: int,
    stacked: bool,
) -> str:
    """The role of the module holding a parameter (``"modules"`` grouping)."""
    if _is_norm(module):
        return "norm"
    if isinstance(module, nn.Embedding) or (not leaf and _EMBED.search(name.rpartition(".")[2])):
        return "embeddings"
    inner = path[len(block) :] if block is not None else path
    if _ATTENTION.search(inner):
        return "attention"
    linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # HF's linear
    if block is not None:
        return "mlp" if linear else type(module).__name__.lower()
    if stacked and pos > last:
        return "head"
    if linear and _MLP.search(inner):
        return "mlp"
    return type(module).__name__.lower() if leaf else "other"


def group_parameters(
    model: nn.Module, selection_names: Sequence[str], how: str
) -> dict[str, slice | torch.Tensor]:
    """Index sets of each group in the flat vector of the selected parameters.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> names = [n for n, _ in model.named_parameters()]
        >>> group_parameters(model, names, "layers")
        {'0': slice(0, 9, None), '2': slice(9, 13, None)}

    Args:
        model: the network.
        selection_names: the names of the parameters in the vector, in vector
            order (``op.param_names`` of a model operator).
        how: ``"layers"``, ``"modules"`` or ``"parameters"``.

    Returns:
        ``{group: slice or long index tensor}``, a partition of the vector's
        coordinates, in the order of each group's first parameter.
    """
    params = dict(model.named_parameters())
    offsets: dict[str, tuple[int, int]] = {}
    start = 0
    for name in selection_names:
        if name not in params:
            raise ValueError(f"{name!r} is not a parameter of the model")
        size = params[name].numel()
        offsets[name] = (start, start + size)
        start += size
    out: dict[str, slice | torch.Tensor] = {}
    for group, members in group_names(model, selection_names, how).items():
        spans = sorted(offsets[m] for m in members)
        if all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False)):
            out[group] = slice(spans[0][0], spans[-1][1])
        else:
            out[group] = torch.cat([torch.arange(a, b) for a, b in spans])
    return out
