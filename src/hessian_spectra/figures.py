"""The one figure helper: the style, a figure without pyplot, and saving it.

Every figure of the library (`plots`), the CLI and the experiments is made with
`new_figure` inside `style()` (or a function wrapped by `styled`) and written by
`save_figure`, so they all look alike and none needs a display or pyplot's
global state.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import matplotlib as mpl
from matplotlib.figure import Figure
from PIL import Image  # a dependency of matplotlib

from hessian_spectra._atomic import atomic_open
from hessian_spectra.results import write_json

#: the style every figure is drawn in
STYLE: Any = {
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.labelsize": 9.5,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.4,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "image.cmap": "viridis",
}

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Draw inside the library's style (an `rc_context`, nothing global changes)."""
    with mpl.rc_context(STYLE):
        yield


def styled(fn: F) -> F:
    """Decorate a drawing function so that it runs inside `style()`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with style():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(width: float = 6.4, height: float = 4.2, **subplots: Any) -> tuple[Figure, Any]:
    """A constrained-layout figure and its axes (``fig.subplots(**subplots)``), no pyplot."""
    fig = empty_figure(width, height)
    axes = fig.subplots(**subplots) if subplots else fig.subplots()
    return fig, axes


def empty_figure(width: float = 6.4, height: float = 4.2) -> Figure:
    """A constrained-layout figure with no axes yet, no pyplot.

    For axes of different kinds (a 3-D surface beside a contour plot): add them
    with ``fig.add_subplot(..., projection="3d")``. Otherwise use `new_figure`.
    """
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(
    fig: Figure,
    path: str | Path,
    data: Mapping[str, Any] | None = None,
    *,
    dpi: int = 150,
    palette: bool = False,
) -> Path:
    """Write `fig` as a PNG (folders created, atomically) and return its path.

    Args:
        fig: the figure.
        path: where; the suffix is set to ``.png``.
        data: the numbers the figure draws; when given they are written as JSON
            beside the PNG (same stem), with the library's provenance.
        dpi: resolution.
        palette: rewrite the PNG with a 256-colour palette (`shrink_png`), for
            figures kept in the repository.
    """
    path = Path(path).with_suffix(".png")
    with style(), atomic_open(path, "wb") as fh:
        if palette:
            buf = io.BytesIO()
            fig.savefig(buf, dpi=dpi, format="png", bbox_inches="tight")
            buf.seek(0)
            _write_palette_png(buf, fh)
        else:
            fig.savefig(fh, dpi=dpi, format="png", bbox_inches="tight")
    if data is not None:
        write_json(path.with_suffix(".json"), {"figure": path.name, **data})
    return path


def shrink_png(path: str | Path) -> None:
    """Rewrite a PNG with a 256-colour palette (no dithering): about a third of the bytes.

    Line plots use few colours, so the palette loses nothing visible. The file
    is replaced atomically.
    """
    data = io.BytesIO(Path(path).read_bytes())
    with atomic_open(path, "wb") as fh:
        _write_palette_png(data, fh)


def _write_palette_png(src: Any, dst: Any) -> None:
    """Read a PNG from file object `src`, write it with a 256-colour palette to `dst`."""
    with Image.open(src) as im:
        q = im.convert("RGB").quantize(
            colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    q.save(dst, format="PNG", optimize=True)
