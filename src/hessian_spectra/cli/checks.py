"""Checks of every option's value, run right after parsing, before any work.

argparse checks types and choices; these check ranges (``--tol`` positive,
``--span`` positive, ``--max-matvecs`` at least 1, ...) and combinations
(``--resume`` with ``--save-every 0``), so that a bad value ends with one line
and exit status 2 before a model is built, data is read or anything trains.
Checks that need the model (``--k`` against the parameter count, memory) run
in `setup` as soon as the parameter count is known, still before training.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

from hessian_spectra.cli.analyses import parse_what
from hessian_spectra.cli.errors import CLIError
from hessian_spectra.cli.setup import LOSSES
from hessian_spectra.cli.units import parse_memory

#: the commands whose options are checked here (``experiment`` checks its own)
COMMANDS = ("demo", "analyze", "eigs", "trace", "density", "sketch", "landscape", "train")

#: integer options and their smallest value
MIN_INT = {
    "k": 1,
    "samples": 1,
    "max_basis": 2,
    "batch_size": 1,
    "max_matvecs": 1,
    "block_size": 1,
    "num_matvecs": 1,
    "num_steps": 1,
    "num_probes": 1,
    "size": 1,
    "steps": 2,
    "epochs": 1,
    "monitor_samples": 1,
    "monitor_every": 0,
    "save_every": 0,
    "power_steps": 0,
    "train_steps": 0,
    "threads": 1,
}

#: options that must be positive finite numbers, with an example of each
POSITIVE = {
    "tol": "a relative residual, e.g. --tol 1e-6",
    "rtol": "a relative standard error, e.g. --rtol 0.01",
    "span": "the grid goes from -SPAN to SPAN, e.g. --span 0.5",
    "lr": "e.g. --lr 0.1",
}

#: the fewest products of each trace estimator (xtrace: two per probe, at least two probes)
TRACE_MIN_MATVECS = {"xtrace": 4, "hutch++": 3, "hutchinson": 1}

SEED_RANGE = (-(2**63), 2**63 - 1)


def flag(dest: str) -> str:
    """The option a namespace attribute comes from: ``max_matvecs`` -> ``--max-matvecs``."""
    return "--" + dest.replace("_", "-")


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range option values with one line that names the option.

    Raises:
        CLIError: the first bad value, with what is accepted.
    """
    if getattr(args, "command", None) not in COMMANDS:
        return
    given = vars(args)
    for dest, least in MIN_INT.items():
        value = given.get(dest)
        if value is not None and value < least:
            what = "a positive integer" if least == 1 else f"at least {least}"
            if least == 0:
                what = "0 or more"
            raise CLIError(f"{flag(dest)} must be {what}, got {value}")
    for dest, example in POSITIVE.items():
        value = given.get(dest)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise CLIError(
                f"{flag(dest)} must be a positive number ({example}), got {_number(value)}"
            )
    _check_train(given)
    seed = given.get("seed")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise CLIError(f"--seed must be a 64-bit integer (from -2**63 to 2**63-1), got {seed}")
    num = given.get("num_matvecs")
    method = given.get("trace_method", "xtrace")
    if num is not None and given.get("rtol") is None and num < TRACE_MIN_MATVECS[method]:
        raise CLIError(
            f"--num-matvecs {num} is too few for the {method} trace: it needs at least "
            f"{TRACE_MIN_MATVECS[method]}"
        )
    if given.get("resume") and given.get("save_every") == 0:
        raise CLIError("--resume needs the run's saved state: drop --save-every 0")
    params = given.get("params")
    if params is not None:
        try:
            re.compile(params)
        except re.error as exc:
            raise CLIError(
                f"--params {params!r}: params regex {params!r} does not compile: {exc}"
            ) from None
    if given.get("what") is not None:
        parse_what(given["what"])
    _check_model_options(given)
    if given.get("max_memory") is not None:
        parse_memory(given["max_memory"])


def _check_model_options(given: dict[str, Any]) -> None:
    """``--loss``, ``--checkpoint-prefix``: their form (imports and keys are checked in setup)."""
    loss = given.get("loss")
    if loss is not None and loss not in LOSSES:
        module, _, function = loss.partition(":")
        if not module or not function:
            raise CLIError(
                f"--loss {loss!r}: use {', '.join(LOSSES)} or package.module:function (a "
                "loss_fn(model, batch) returning the batch's mean loss)"
            )
    prefix = given.get("checkpoint_prefix")
    if prefix is not None:
        if not given.get("checkpoint"):
            raise CLIError(
                "--checkpoint-prefix maps the keys of a checkpoint: give --checkpoint FILE too"
            )
        if not prefix.partition("=")[0]:
            raise CLIError(
                f"--checkpoint-prefix {prefix!r}: give the prefix to strip, e.g. 'model.', or "
                "OLD=NEW to replace one"
            )


def _check_train(given: dict[str, Any]) -> None:
    """The ``train`` command's real-valued options."""
    wd = given.get("weight_decay")
    if wd is not None and not (math.isfinite(wd) and wd >= 0):
        raise CLIError(f"--weight-decay must be 0 or a positive number, got {_number(wd)}")
    momentum = given.get("momentum")
    if given.get("command") == "train" and momentum is not None and not 0 <= momentum < 1:
        raise CLIError(f"--momentum must be in [0, 1), e.g. 0.9; got {_number(momentum)}")
    for fraction in given.get("decay") or ():
        if not 0 < fraction < 1:
            raise CLIError(
                "--decay takes fractions of the epochs, each in (0, 1), e.g. --decay 0.5 0.75; "
                f"got {_number(fraction)}"
            )
