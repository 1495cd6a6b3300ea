"""What a criterion computes: its reduction, the number of terms each batch averages, its identity.

The operators take the Hessian of the mean loss over all the data. Each batch
contributes its mean loss weighted by the number of terms that mean averages
over, so a criterion must return a mean (``reduction='mean'``), and the count
must be the criterion's own denominator:

- ``nn.CrossEntropyLoss`` and ``nn.NLLLoss`` (and ``F.cross_entropy``,
  ``F.nll_loss`` passed as criterion) with class-index targets average over
  the targets that are not ``ignore_index`` (-100 by default), each counted
  with its class weight when ``weight=`` is given (torch divides by the sum of
  the class weights of the non-ignored targets, with label smoothing too);
  targets with extra dimensions (segmentation) count every element;
- every other criterion averages over samples: the batch's leading dimension
  (`model.batch_weight`). A criterion that averages over more than one term
  per sample (``nn.MSELoss`` over vector outputs) weighs batches in the same
  proportion, so the mean is the same.

A ``loss_fn`` that averages over anything else returns ``(mean_loss, n)``.

With neither criterion nor loss_fn, the model's own loss (`own_loss`:
``model(**batch).loss``, HuggingFace style) averages over its ``labels``
other than -100, shifted by one for a causal LM (`is_causal_lm`,
`label_count`); a batch without labels counts its samples. A
``weight_fn(batch)`` replaces every rule.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from hessian_spectra.operators.base import digest

# criteria that average over the targets that are not ignore_index (class weights counted)
_CLASS_INDEX_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)
_CLASS_INDEX_FUNCTIONS = (F.cross_entropy, F.nll_loss)
_DEFAULT_IGNORE_INDEX = -100  # F.cross_entropy's and F.nll_loss's default


def check_reduction(criterion: Any) -> None:
    """Refuse a criterion whose reduction is not a mean (``'sum'`` or ``'none'``).

    nn loss modules carry their reduction as ``.reduction``; other callables
    are taken to return the batch mean.

    Raises:
        ValueError: the criterion sums its terms or returns one loss per term.
    """
    reduction = getattr(criterion, "reduction", None)
    if reduction not in ("sum", "none"):
        return
    name = type(criterion).__name__
    what = (
        "sums the batch's losses, which scales each batch's Hessian by its size"
        if reduction == "sum"
        else "returns one loss per sample instead of the batch's mean"
    )
    raise ValueError(
        f"the criterion {name}(reduction={reduction!r}) {what}; the operators take the "
        f"Hessian of the mean loss over the data. Pass {name}(reduction='mean') (the "
        "default), or a loss_fn returning (mean_loss, n) with n the number of terms the "
        "mean averages over"
    )


def _class_index_settings(criterion: Any) -> tuple[int, torch.Tensor | None] | None:
    """(ignore_index, class weights) of a class-index loss; None for other criteria."""
    if isinstance(criterion, _CLASS_INDEX_LOSSES):
        return int(criterion.ignore_index), criterion.weight
    if any(criterion is f for f in _CLASS_INDEX_FUNCTIONS):
        return _DEFAULT_IGNORE_INDEX, None
    return None


def criterion_weight(criterion: Any, targets: Any) -> float | None:
    """The number of terms `criterion`'s batch mean averages over, when it tells; else None.

    For ``CrossEntropyLoss``/``NLLLoss`` with integer class targets: the
    targets other than ``ignore_index``, each counted with its class weight
    when the loss has ``weight=`` (the denominator torch divides by). None for
    other criteria and for class-probability targets: the batch's leading
    dimension applies (`model.batch_weight`).
    """
    settings = _class_index_settings(criterion)
    if settings is None or not isinstance(targets, torch.Tensor):
        return None
    if targets.is_floating_point() or targets.is_complex():
        return None  # class probabilities: averaged over the samples
    ignore_index, class_weights = settings
    kept = targets[targets != ignore_index]
    if class_weights is None:
        return float(kept.numel())
    return float(class_weights.detach().to(kept.device)[kept].double().sum())


def no_terms_message(criterion: Any, weight: float) -> str:
    """What to say about a batch whose mean loss averages over `weight` <= 0 terms."""
    settings = _class_index_settings(criterion)
    if settings is None:
        return f"a batch must have a positive number of samples, got {weight}"
    ignore_index, class_weights = settings
    weighted = " or only targets whose class weight is 0" if class_weights is not None else ""
    return (
        f"a batch holds no target other than ignore_index={ignore_index}{weighted}, so "
        "its mean loss is 0/0; leave such batches out of the data"
    )


def _qualified_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return f"partial({_qualified_name(fn.func)})"
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


def loss_identity(criterion: Any, loss_fn: Any) -> str:
    """A readable identity of the loss, for checkpoint fingerprints.

    A loss module: its type and its settings (reduction, ignore_index,
    label_smoothing, ...), plus a digest of its buffers and parameters (class
    weights); a function or a loss_fn: its qualified name.
    """
    if loss_fn is not None:
        return f"loss_fn {_qualified_name(loss_fn)}"
    if criterion is None:
        return "the model's own loss, model(**batch).loss"
    if not isinstance(criterion, nn.Module):
        return f"criterion {_qualified_name(criterion)}"
    settings = {
        key: value
        for key, value in sorted(vars(criterion).items())
        if not key.startswith("_")
        and key != "training"
        and isinstance(value, (bool, int, float, str, type(None)))
    }
    shown = ", ".join(f"{k}={v!r}" for k, v in settings.items())
    tensors = [t for _, t in criterion.named_buffers()] + list(criterion.parameters())
    tensors = [t for t in tensors if t is not None]
    held = f" tensors {digest(tensors)[:16]}" if tensors else ""
    return f"criterion {type(criterion).__qualname__}({shown}){held}"


# ------------------------------------------------------------------ the model's own loss

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
IGNORE_INDEX = _DEFAULT_IGNORE_INDEX


def is_causal_lm(model: nn.Module) -> bool:
    """Whether `model`'s own loss predicts token t+1 from tokens <= t (labels shifted by one).

    The rule: ``model.loss_type == "ForCausalLM"`` (HuggingFace's loss
    selector), or the model's class name or an entry of
    ``model.config.architectures`` ends with ``ForCausalLM`` or
    ``LMHeadModel`` (``GPT2LMHeadModel``, ``LlamaForCausalLM``), or
    ``model.config.is_decoder`` is true in a model that is not an
    encoder-decoder. Masked LMs, classifiers and encoder-decoders (whose
    labels are not shifted in the loss) are not.
    """
    if getattr(model, "loss_type", None) == "ForCausalLM":
        return True
    config = getattr(model, "config", None)
    names = [type(model).__name__, *(getattr(config, "architectures", None) or [])]
    if any(str(name).endswith(_CAUSAL_SUFFIXES) for name in names):
        return True
    return bool(getattr(config, "is_decoder", False)) and not bool(
        getattr(config, "is_encoder_decoder", False)
    )


def label_count(labels: torch.Tensor, causal: bool) -> float:
    """The number of terms a model's own mean loss averages over its `labels`.

    Integer labels: those other than -100 (HuggingFace's ignore index),
    after dropping the first position of every sequence for a causal LM
    (the loss compares the prediction at t with the label at t+1). Floating
    labels (regression, multi-label classification): every element.
    """
    if labels.is_floating_point():
        return float(labels.numel())
    if causal:
        labels = labels[..., 1:]
    return float((labels != IGNORE_INDEX).sum())


def output_loss_value(output: Any) -> torch.Tensor:
    """The loss a model returned: ``output.loss`` (a ModelOutput) or ``output["loss"]``.

    Raises:
        ValueError: the output carries no loss (a HuggingFace model computes it
            only when the batch holds ``labels``), saying what to pass instead.
    """
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    if isinstance(loss, torch.Tensor):
        return loss
    what = (
        "a tuple (return_dict=False?)"
        if isinstance(output, tuple)
        else f"{type(output).__name__} with no loss"
    )
    raise ValueError(
        f"without criterion or loss_fn the model's own loss is used, but model(**batch) "
        f"returned {what}. A HuggingFace model computes its loss only when the batch holds "
        "'labels' (e.g. labels=input_ids for a causal LM, -100 where no loss is wanted); "
        "otherwise pass criterion=... (called as criterion(model(inputs), targets)) or "
        "loss_fn=lambda model, batch: ... returning the batch's mean loss"
    )


def own_loss(model: nn.Module, batch: Any, causal: bool) -> tuple[torch.Tensor, float | None]:
    """``model(**batch).loss`` and the count of its labels (`label_count`; None without labels).

    Raises:
        ValueError: the batch is not a dict, or the output has no loss.
    """
    if not isinstance(batch, Mapping):
        raise ValueError(
            "without criterion or loss_fn the model's own loss is used, called as "
            f"model(**batch).loss, so every batch must be a dict; got {type(batch).__name__}. "
            "Pass criterion=... (batches (inputs, targets)) or loss_fn=lambda model, "
            "batch: ... for other layouts"
        )
    loss = output_loss_value(model(**batch))
    labels = batch.get("labels")
    return loss, label_count(labels, causal) if isinstance(labels, torch.Tensor) else None


def coarser_loss_message(loss_dtype: torch.dtype, dtype: torch.dtype) -> str | None:
    """A warning when a loss is computed in a coarser dtype than the parameters; else None."""
    if not loss_dtype.is_floating_point or not dtype.is_floating_point:
        return None
    if torch.finfo(loss_dtype).eps <= torch.finfo(dtype).eps:
        return None
    return (
        f"the model computes its loss in {loss_dtype} although its parameters are {dtype} "
        "(HuggingFace's losses cast the logits with .float()), so the products are only as "
        f"accurate as {loss_dtype}; for a {dtype} loss set model.loss_function to one that "
        "keeps the logits' dtype, or pass loss_fn"
    )
