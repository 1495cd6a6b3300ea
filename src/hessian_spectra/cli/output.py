"""What the command line prints and writes: messages, tables, result files, the HTML report.

This is the only module of the package that prints. Under torchrun only rank 0
prints and writes.

An `Outcome` maps each analysis's name (``"eigs"``, ``"eigs_power"``,
``"trace"``, ``"layers"``, ``"density"``, ``"sketch_<kind>"``, ``"sketch"``,
``"landscape_<directions>_<dims>d"``, ``"landscape_1d"``) to its result record
and its figures; `write_report` assembles the report from those names.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from hessian_spectra._distributed import is_main_process
from hessian_spectra.cli.errors import PROG
from hessian_spectra.figures import save_figure
from hessian_spectra.report import Report


# =============================================================================== printing
def main_rank() -> bool:
    """Whether this process prints and writes: always, except on ranks > 0 under torchrun."""
    return is_main_process()


def say(msg: str = "") -> None:
    """Print a line of results on stdout (rank 0 only)."""
    if main_rank():
        print(msg, flush=True)  # noqa: T201 - the CLI is the one place that prints


def note(msg: str) -> None:
    """Print a remark on stderr (rank 0 only)."""
    if main_rank():
        print(msg, file=sys.stderr, flush=True)  # noqa: T201


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table with right-aligned numbers."""

    def cell(x: Any) -> str:
        if isinstance(x, (bool, np.bool_)):
            return "yes" if x else "no"
        if isinstance(x, (int, np.integer)):
            return str(int(x))
        if isinstance(x, (float, np.floating)):
            v = float(x)
            return f"{v:.6g}" if math.isfinite(v) else str(v)
        return str(x)

    cells = [[cell(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


# =============================================================================== outcome
@dataclass(frozen=True)
class FigureFile:
    """A figure written as a PNG, with the title and caption the report shows."""

    title: str
    path: Path
    caption: str


@dataclass
class Analysis:
    """One analysis's output: its result record (None for figures only), figures, summary."""

    result: Any = None
    figures: list[FigureFile] = field(default_factory=list)
    answer: str | None = None  # the report's one-line answer; None: the record's summary
    warnings: list[str] = field(default_factory=list)  # shown set off in the report


@dataclass
class Outcome:
    """What a set of analyses produced, by analysis name, in the order they ran."""

    out: Path
    analyses: dict[str, Analysis] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def entry(self, name: str) -> Analysis:
        """The output of analysis `name`, created empty on first use."""
        return self.analyses.setdefault(name, Analysis())

    def result(self, name: str) -> Any:
        """The result record of analysis `name`, or None."""
        entry = self.analyses.get(name)
        return None if entry is None else entry.result

    def save(self, name: str, result: Any, *, write: bool = True) -> None:
        """Keep `result` as analysis `name`, and write it to ``<out>/<name>.json``."""
        self.entry(name).result = result
        if write and main_rank():
            self.files.append(result.to_json(self.out / f"{name}.json"))

    def figure(self, name: str, stem: str, title: str, fig: Figure, caption: str) -> None:
        """Write `fig` to ``<out>/<stem>.png`` as one of analysis `name`'s figures."""
        if not main_rank():
            return
        path = save_figure(fig, self.out / f"{stem}.png")
        self.files.append(path)
        self.entry(name).figures.append(FigureFile(title, path, caption))

    def warn(self, name: str, text: str) -> None:
        """Print a warning about analysis `name` on stderr; the report shows it set off."""
        note(f"{PROG}: warning: {text}")
        self.entry(name).warnings.append(text)

    def results(self) -> list[Any]:
        """Every distinct result record (an estimate that serves two analyses counts once)."""
        unique = {id(a.result): a.result for a in self.analyses.values() if a.result is not None}
        return list(unique.values())


# =============================================================================== report
#: what the eigenvalues of each --which are
_WHICH = {
    "LA": "Top-{k} eigenvalues",
    "SA": "Smallest {k} eigenvalues",
    "LM": "Largest magnitude: {k} eigenvalues",
    "BE": "Both ends: {k} eigenvalues",
}


#: how the report names each eigensolver
METHOD_NAMES = {"lanczos": "Lanczos", "block": "block Lanczos", "power": "power iteration"}


def eig_title(which: str, k: int | str = "k") -> str:
    """``"Top-10 eigenvalues"``, ``"Both ends: 10 eigenvalues"``: what --which computes."""
    return _WHICH.get(which, _WHICH["LA"]).format(k=k)


# the summary row of each analysis; sketches and landscapes are named by prefix
_TITLES = {
    "eigs": "Top-k eigenvalues",
    "eigs_top": "Top-k eigenvalues (reference)",
    "blocks": "Per-block spectra",
    "eigs_power": "Top-k eigenvalues (power, PyHessian rule)",
    "trace": "Trace",
    "layers": "Per-layer traces",
    "density": "Spectral density",
    "density_hessian": "Spectral density (Hessian)",
    "density_ggn": "Spectral density (GGN)",
}


def _title(name: str, shared_trace: bool, res: Any = None) -> str:
    if name == "layers" and shared_trace:
        return "Trace and per-layer traces"
    if name == "eigs" and res is not None:
        return eig_title(str(getattr(res, "which", "LA")))
    if name in _TITLES:
        return _TITLES[name]
    if name.startswith("sketch_"):
        return f"Sketch ({name[len('sketch_') :]})"
    if name.startswith("landscape"):
        return "Loss landscape"
    return name


def _power_answer(res: Any) -> str:
    lam = np.asarray(res.eigenvalues)
    rel = np.asarray(res.residuals) / np.maximum(np.abs(lam), 1e-300)
    return (
        f"λ1 = {lam[0]:.5g}, λ{lam.size} = {lam[-1]:.5g}; stopped by its own rule with "
        f"relative residuals up to {rel.max():.2g}"
    )


def write_report(
    outcome: Outcome,
    *,
    title: str,
    subtitle: str,
    settings: dict[str, Any],
    training: tuple[str, float] | None = None,
) -> Path:
    """Write ``report.html``: a summary row per analysis, eigenpair tables, every figure.

    Args:
        outcome: the analyses, by name.
        title: the page heading.
        subtitle: the line under it.
        settings: the run's settings table.
        training: (what was trained, seconds) when the model was trained in this run.
    """
    path = outcome.out / "report.html"
    if not main_rank():
        return path
    rep = Report(title, subtitle=subtitle, settings=settings)
    if training is not None:
        rep.add_row("Training", "Adam, full batch", training[0], None, training[1])
    trace = outcome.result("trace")
    shared_trace = trace is not None and trace is outcome.result("layers")
    for entry in outcome.analyses.values():
        for text in entry.warnings:
            rep.add_warning(text)
    for name, entry in outcome.analyses.items():
        res = entry.result
        if res is None or (name == "trace" and shared_trace):
            continue
        answer = _power_answer(res) if name == "eigs_power" else entry.answer
        method = "SLQ" if name == "density" else None
        rep.add_result(_title(name, shared_trace, res), res, answer=answer, method=method)
    eigs = outcome.result("eigs")
    if eigs is not None:
        which = str(getattr(eigs, "which", "LA"))
        rep.add_eigenpairs(
            f"{eig_title(which).replace('eigenvalues', 'eigenpairs')} "
            f"({METHOD_NAMES.get(str(getattr(eigs, 'method', '')), 'Lanczos')})",
            eigs,
            caption="Residuals are ‖Hv − λv‖ of each returned pair."
            + (" Largest first, then the smallest." if which == "BE" else ""),
        )
    blocks = outcome.result("blocks")
    if blocks is not None:
        rep.add_blocks(
            "Per-block spectra",
            blocks,
            caption="Each block's trace (from one estimate of the whole Hessian's trace, so "
            "they sum to it) with its standard error, and its top eigenvalues (the Hessian "
            "with respect to that block's parameters alone).",
        )
    for name, entry in outcome.analyses.items():
        for fig in entry.figures:
            rep.add_figure(fig.title, fig.path, fig.caption)
        if name == "eigs_power" and entry.figures:
            rep.add_eigenpairs(
                "Top-k eigenpairs (power iteration, PyHessian's stopping rule)",
                entry.result,
                caption="Power iteration stops when the Rayleigh quotient changes by less "
                "than 1e-3 relatively; its residuals show how far that is from converged.",
            )
    rep.write(path)
    outcome.files.append(path)
    return path


def unconverged(res: Any, tol: float, advice: str) -> str | None:
    """The warning for an eigsh result with pairs that did not converge; None if all did.

    Says how many of k, the largest relative residual among them against the
    tolerance, why the run stopped, and `advice` (which options to raise).
    """
    conv = np.asarray(res.converged).astype(bool)
    if conv.all():
        return None
    lam = np.asarray(res.eigenvalues, dtype=np.float64)
    rel = np.asarray(res.residuals, dtype=np.float64) / np.maximum(np.abs(lam), 1e-300)
    bad = ~conv
    stop = {"max_matvecs": "its HVP budget was spent", "callback": "it was stopped"}.get(
        str(getattr(res, "stop_reason", "")), "it stopped"
    )
    return (
        f"{int(bad.sum())} of {conv.size} eigenpairs did not converge ({res.method}): {stop} "
        f"after {res.num_matvecs} HVPs with relative residuals up to {rel[bad].max():.2g}, "
        f"above the tolerance {tol:g}; those eigenvalues are accurate only to about their "
        f"residuals. {advice}"
    )


def finish(outcome: Outcome, t0: float) -> None:
    """Print what was written where, with the HVPs and seconds it took."""
    hvps = sum(int(getattr(r, "num_matvecs", 0)) for r in outcome.results())
    n = len(outcome.files)
    say(
        f"\nWrote {n} file{'s' if n != 1 else ''} to {outcome.out.resolve()}/ "
        f"({hvps} HVPs, {time.perf_counter() - t0:.1f} s)"
    )
