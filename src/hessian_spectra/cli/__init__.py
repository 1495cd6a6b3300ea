"""The `hessian-spectra` command line (also ``python -m hessian_spectra``).

Commands: ``demo``, ``analyze``, ``eigs``, ``trace``, ``density``, ``sketch``,
``landscape``, ``train`` and ``experiment``. Every command reads the same
model and data options, prints a short table, and writes JSON (and PNG
figures) to an output folder; ``demo`` and ``analyze`` also write a
self-contained ``report.html``.

Bad input (an out-of-range option, an unknown model or data name, a missing
file, a checkpoint that does not fit, ``--k`` too large, an output folder that
is a file or cannot be written, a run that would not fit in memory) ends with
one line on stderr and exit status 2 before anything is trained or computed,
never a traceback (``--traceback`` shows it for debugging).

Long runs are resumable: ``eigs`` (Lanczos), ``trace``, ``density`` and the
same analyses of ``analyze`` save their state to ``<name>.ckpt`` in the output
folder as they go (``--save-every``); Ctrl-C (or SIGTERM) saves it and exits
with status 130, printing the command that continues the run (``--resume``).
Under ``torchrun --nproc_per_node=N`` the process group is initialized here
(gloo on CPU, nccl on GPU), each rank multiplies by its share of the data, and
only rank 0 prints and writes.

Modules: `parser` (commands and options), `checks` (every option's range,
right after parsing), `commands` and `train` (what each command does), `setup`
(device, output folder, model and data), `memory` (the analyses' memory,
estimated from the parameter count before any work; `units` reads ``8GB``),
`analyses` (the ``run_*`` functions, with typed options), `output` (printing,
result files and the report, with a warning for unconverged eigenpairs).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from hessian_spectra._progress import set_progress
from hessian_spectra.algorithms import ConvergenceWarning, InsufficientMemoryError
from hessian_spectra.checkpoint import CheckpointError
from hessian_spectra.cli.checks import check_args
from hessian_spectra.cli.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    PROG,
    CLIError,
)
from hessian_spectra.cli.output import note
from hessian_spectra.cli.parser import build_parser
from hessian_spectra.cli.setup import SAVED_STATES
from hessian_spectra.problems import ProblemError

__all__ = ["CLIError", "build_parser", "main"]

DISTRIBUTED_COMMANDS = ("analyze", "eigs", "trace", "density", "sketch", "landscape")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        return int(exc.code) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    set_progress(not args.quiet)
    SAVED_STATES.clear()
    restore_sigterm = _sigterm_interrupts()
    started_group = False
    threads = torch.get_num_threads()
    try:
        check_args(args)
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        started_group = _init_distributed(args)
        with warnings.catch_warnings():
            # the commands say themselves, in one line and in the report, when pairs
            # did not converge
            warnings.simplefilter("ignore", ConvergenceWarning)
            return int(args.func(args))
    except (CLIError, ProblemError, CheckpointError, InsufficientMemoryError) as exc:
        note(f"{PROG}: error: {exc}")
        return EXIT_BAD_INPUT
    except SystemExit as exc:  # user code (a model, data or factory) called sys.exit()
        if args.traceback:
            traceback.print_exc()
        note(
            f"{PROG}: error: the run was stopped by SystemExit({exc.code!r}) from inside it: "
            "the model, the data or a factory called sys.exit() or exit(); nothing after that "
            "point was computed (run with --traceback to see where)"
        )
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        note(_interrupted_message(list(sys.argv[1:] if argv is None else argv)))
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.traceback:
            raise
        msg = " ".join(str(exc).split()) or "(no message)"
        note(f"{PROG}: error: {type(exc).__name__}: {msg} (run with --traceback for details)")
        return EXIT_FAILURE
    finally:
        set_progress(None)
        restore_sigterm()
        torch.set_num_threads(threads)
        if started_group:
            dist.destroy_process_group()


def _interrupted_message(argv: list[str]) -> str:
    """What was saved, and the exact command that continues it."""
    saved = [p for p in SAVED_STATES if p.exists()]
    if not saved:
        return f"{PROG}: interrupted (no run state was saved yet)"
    again = [a for a in argv if a != "--resume"] + ["--resume"]
    files = ", ".join(str(p) for p in saved)
    return (
        f"{PROG}: interrupted; the run so far is saved in {files}. To continue it, run:\n"
        f"  {PROG} {shlex.join(again)}"
    )


def _sigterm_interrupts() -> Callable[[], None]:
    """Treat SIGTERM (a scheduler's preemption) like Ctrl-C; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)

    def undo() -> None:
        signal.signal(signal.SIGTERM, previous)

    return undo


def _init_distributed(args: argparse.Namespace) -> bool:
    """Under torchrun (WORLD_SIZE > 1): start the default process group; True if started here.

    gloo for --device cpu, nccl for CUDA (each rank on cuda:LOCAL_RANK unless
    --device names an index).
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or args.command not in DISTRIBUTED_COMMANDS:
        return False
    if not dist.is_available():
        raise CLIError("this torch build has no torch.distributed; run without torchrun")
    if dist.is_initialized():
        return False
    backend = "gloo"
    if args.device.startswith("cuda"):
        backend = "nccl"
        if args.device == "cuda":
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(args.device))
    dist.init_process_group(backend)
    return True
