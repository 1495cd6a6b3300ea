"""The one progress helper: tqdm bars that the CLI turns on and users can turn off."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

from hessian_spectra._distributed import is_main_process

_ENABLED: bool | None = None  # None: follow each call's `progress` argument


def set_progress(enabled: bool | None) -> None:
    """Force progress bars on (True) or off (False) everywhere; None restores per-call control."""
    global _ENABLED
    _ENABLED = enabled


class _NoBar:
    """Stands in for a tqdm bar when progress is off."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def progress_bar(
    total: int | None, desc: str, enabled: bool = False, unit: str = "HVP"
) -> Iterator[Any]:
    """A tqdm bar counting `unit`s, or a silent stand-in when progress is off.

    `total` is what bounds the run, in `unit`s; None when nothing does (a run
    that stops on convergence alone): the bar then counts without an ETA.
    """
    on = enabled if _ENABLED is None else _ENABLED
    if not on or not is_main_process():  # one bar per job, on rank 0
        yield _NoBar()
        return
    bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


@contextmanager
def outer_progress(total: int | None, desc: str, unit: str) -> Iterator[Any]:
    """One bar for a long loop of many small computations, whose own bars stay hidden.

    Shown when progress is on (forced by the CLI or by `set_progress`);
    the computations inside run with progress forced off.
    """
    global _ENABLED
    saved = _ENABLED
    with progress_bar(total, desc, enabled=bool(saved), unit=unit) as bar:
        _ENABLED = False
        try:
            yield bar
        finally:
            _ENABLED = saved
