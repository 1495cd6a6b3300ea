"""TensorBoard: a writer for `SpectrumMonitor` in plain PyTorch loops, and reading the logs back.

``SpectrumMonitor(..., writer=summary_writer("runs/exp"))`` writes every
update as scalars ``hessian/lambda_1``, ``hessian/lambda_2``, ...,
``hessian/trace``, ``hessian/trace_stderr``, ``hessian/preconditioned_lambda_1``,
``hessian/threshold`` and, with ``density=``, the histogram ``hessian/density``
(any ``torch.utils.tensorboard.SummaryWriter`` does). `read_scalars` and
`read_histograms` read an event folder back, for checks and notebooks.

Needs the ``tensorboard`` extra: ``pip install 'hessian-spectra[tensorboard]'``.
"""

from __future__ import annotations

from pathlib import Path

try:  # the optional extra this module exists for
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "hessian_spectra.integrations.tensorboard needs TensorBoard; install it with "
        "pip install 'hessian-spectra[tensorboard]'"
    ) from err

__all__ = ["read_histograms", "read_scalars", "summary_writer"]


def summary_writer(log_dir: str | Path) -> SummaryWriter:
    """A ``torch.utils.tensorboard.SummaryWriter`` writing into `log_dir`."""
    return SummaryWriter(log_dir=str(log_dir))


def _accumulator(log_dir: str | Path) -> EventAccumulator:
    path = Path(log_dir)
    if not path.exists():
        raise FileNotFoundError(f"no TensorBoard folder at {path}")
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of `log_dir`: ``{tag: [(step, value), ...]}``.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with summary_writer(folder) as w:
        ...     w.add_scalar("hessian/lambda_1", 2.5, 10)
        >>> read_scalars(folder)
        {'hessian/lambda_1': [(10, 2.5)]}
    """
    acc = _accumulator(log_dir)
    return {
        tag: [(int(e.step), float(e.value)) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }


def read_histograms(log_dir: str | Path) -> dict[str, list[tuple[int, list[float], list[float]]]]:
    """Every histogram in `log_dir`: ``{tag: [(step, bucket_limits, bucket_counts), ...]}``."""
    acc = _accumulator(log_dir)
    out: dict[str, list[tuple[int, list[float], list[float]]]] = {}
    for tag in acc.Tags()["histograms"]:
        out[tag] = [
            (
                int(e.step),
                [float(x) for x in e.histogram_value.bucket_limit],
                [float(x) for x in e.histogram_value.bucket],
            )
            for e in acc.Histograms(tag)
        ]
    return out
