"""Reproductions of the study's experiments, as thin scripts over the public API.

Two commands, reachable as ``hessian-spectra experiment NAME`` (the main CLI
calls `register`) or ``python -m hessian_spectra.experiments NAME``:

- ``sketch-synthetic``: the study's Figures 7-18 (sketch errors on random PSD
  matrices with a controlled fraction of zero eigenvalues), for the Rademacher,
  range-finder and Nystrom sketches.
- ``compare-methods``: its Figures 2-6 and 19 on a network Hessian: power
  iteration (PyHessian's rule) vs Lanczos vs block Lanczos, plain Lanczos and
  its ghost copies, sketch errors, trace estimates and the spectral density.
- ``architectures``: the measurements and claims of ``compare-methods`` on six
  architecture / data pairs, each trained here over several seeds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hessian_spectra.experiments import architectures, compare_methods, sketch_synthetic

__all__ = ["add_commands", "main", "register"]


def _run(entry: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`entry` as a command: input errors (bad values, missing files) become exit code 2."""

    def func(args: argparse.Namespace) -> int:
        try:
            return int(entry(args))
        except (ValueError, FileNotFoundError) as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2

    return func


def add_commands(subparsers: Any) -> None:
    """Add `sketch-synthetic`, `compare-methods` and `architectures` to argparse subparsers."""
    s = subparsers.add_parser(
        "sketch-synthetic",
        help="sketch errors on random PSD matrices (the study's Figures 7-18)",
        description=sketch_synthetic.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sketch_synthetic.add_arguments(s)
    s.set_defaults(func=_run(sketch_synthetic.main))
    c = subparsers.add_parser(
        "compare-methods",
        help="power iteration vs Lanczos vs block Lanczos, sketches, trace, density "
        "on a network Hessian (the study's Figures 2-6 and 19)",
        description=compare_methods.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare_methods.add_arguments(c)
    c.set_defaults(func=_run(compare_methods.main))
    a = subparsers.add_parser(
        "architectures",
        help="the compare-methods claims on six networks (MLP, CNN, ResNet, LSTM, GPT-2, "
        "ViT), over several training seeds",
        description=architectures.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    architectures.add_arguments(a)
    a.set_defaults(func=_run(architectures.main))


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `experiment` command (with its sub-commands) to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "experiment",
        help="reproduce the study's experiments and figures",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="experiment", metavar="NAME", required=True)
    add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hessian_spectra.experiments NAME [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m hessian_spectra.experiments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="experiment", metavar="NAME", required=True)
    add_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))
