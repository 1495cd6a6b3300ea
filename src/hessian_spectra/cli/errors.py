"""The command line's name, exit statuses and the error it reports as one line."""

from __future__ import annotations

PROG = "hessian-spectra"
EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """Bad input: reported as one line on stderr with a non-zero exit status."""
