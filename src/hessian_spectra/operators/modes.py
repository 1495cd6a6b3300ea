"""Train mode and model state: refuse train-mode layers, restore what passes change.

A curvature operator is a fixed matrix only when every pass computes the same
function: BatchNorm, Dropout and an RNN's dropout compute differently in train
mode (`check_eval_mode` refuses them unless asked for), and a forward may
update buffers in place (`buffers_kept` restores them after each pass).
Analyses that switch modes restore each submodule's own mode (`modes_kept`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

# modules whose output depends on train/eval mode
MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def is_mode_dependent(module: nn.Module) -> bool:
    """Whether a module computes differently in train mode: BatchNorm, Dropout, an RNN's dropout."""
    if isinstance(module, MODE_DEPENDENT):
        return True
    return isinstance(module, nn.RNNBase) and float(module.dropout) > 0


def check_eval_mode(model: nn.Module) -> None:
    """Refuse a model whose BatchNorm, Dropout or RNN-with-dropout layers are in train mode."""
    culprits = [
        f"{name or 'model'} ({type(m).__name__})"
        for name, m in model.named_modules()
        if m.training and is_mode_dependent(m)
    ]
    if culprits:
        shown = ", ".join(culprits[:3]) + (" ..." if len(culprits) > 3 else "")
        raise RuntimeError(
            f"the model is in train mode and has mode-dependent layers: {shown}; "
            "BatchNorm would use batch statistics (and update its running ones) and "
            "Dropout (or an RNN built with dropout>0) would draw new masks on every pass. "
            "Call model.eval() first, or pass allow_train_mode=True if you really want "
            "the train-mode Hessian"
        )


@contextlib.contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Restore every buffer of the model on exit, to the bit.

    Whatever a pass changed in place (BatchNorm's running statistics in train
    mode, a counter or a running average a forward updates) is copied back.
    A buffer the pass left alone is not written: a write bumps its version
    counter, and an autograd graph that saved it (eval-mode BatchNorm saves
    its running statistics; a kept gradient graph) could not be
    differentiated again.
    """
    saved = [(b, b._version, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, version, value in saved:
                if b._version != version or not torch.equal(b, value):
                    b.copy_(value)


running_stats_kept = buffers_kept  # the former name: BatchNorm's statistics are buffers


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's own train/eval mode on exit.

    ``model.train(was_training)`` would set every submodule to the top-level
    mode; a frozen eval-mode BatchNorm inside a train-mode model would come
    back in train mode. This records ``m.training`` for each module instead.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
