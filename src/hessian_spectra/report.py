"""One self-contained HTML report of a run: settings, provenance, a summary table, figures.

The file needs nothing beside it: styles are inline, figures are embedded as
base64 PNG, and there are no scripts or external links, so it opens the same
anywhere (including offline and in a browser with scripts off).

Example:
    >>> import tempfile, torch, hessian_spectra as hs
    >>> from hessian_spectra import plots
    >>> op = hs.DenseOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
    >>> top = hs.eigsh(op, k=10, seed=0)
    >>> rep = Report("Hessian spectrum of my model", settings={"k": 10})
    >>> rep.add_result("Top-10 eigenvalues", top)
    >>> rep.add_eigenpairs("Top-10 eigenvalues", top)
    >>> rep.add_figure("Convergence", plots.plot_convergence(top))
    >>> path = rep.write(f"{tempfile.mkdtemp()}/report.html")
    >>> "Top-10 eigenvalues" in path.read_text()
    True
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import numpy as np

from hessian_spectra._atomic import write_text
from hessian_spectra.figures import STYLE
from hessian_spectra.results import provenance

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hessian_spectra.results import Result


def _num(x: Any, digits: int = 5) -> str:
    """A number for a table: significant digits, no trailing noise."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return html.escape(str(x))
    if not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def summarize(result: Result) -> str:
    """A one-line answer of a result for the summary table (plain text)."""
    name = type(result).__name__
    if name == "EigshResult":
        lam = np.asarray(result.eigenvalues, dtype=np.float64)  # type: ignore[attr-defined]
        res = np.asarray(result.residuals, dtype=np.float64)  # type: ignore[attr-defined]
        conv = np.asarray(result.converged).astype(bool)  # type: ignore[attr-defined]
        head = f"λ1 = {_num(lam[0])}" if lam.size else "no eigenvalues"
        if lam.size > 1:
            head += f", λ{lam.size} = {_num(lam[-1])}"
        rel = res / np.maximum(np.abs(lam), 1e-300) if lam.size else res
        return (
            f"{head}; max relative residual {_num(float(rel.max()) if rel.size else 0.0, 2)}; "
            f"{int(conv.sum())}/{conv.size} converged"
        )
    if name == "TraceResult":
        est = float(result.estimate)  # type: ignore[attr-defined]
        se = float(result.stderr)  # type: ignore[attr-defined]
        return f"trace = {_num(est)} ± {_num(se, 2)} (1 standard error)"
    if name == "SketchResult":
        lam = np.asarray(result.eigenvalues, dtype=np.float64)  # type: ignore[attr-defined]
        tr = float(result.trace)  # type: ignore[attr-defined]
        return f"size {lam.size}: top λ = {_num(lam[0])}, sketch trace = {_num(tr)}"
    if name == "DensityResult":
        nodes = np.asarray(result.nodes, dtype=np.float64)  # type: ignore[attr-defined]
        return f"{nodes.size} quadrature nodes on [{_num(nodes.min())}, {_num(nodes.max())}]"
    if name == "LandscapeResult":
        losses = np.asarray(result.losses, dtype=np.float64)  # type: ignore[attr-defined]
        origin = float(result.origin_loss)  # type: ignore[attr-defined]
        shape = "×".join(str(s) for s in losses.shape)
        return (
            f"{shape} grid: loss {_num(origin)} at the parameters, "
            f"{_num(losses.min())} to {_num(losses.max())} on the grid"
        )
    if name == "BlockSpectraResult":
        return _blocks_summary(result)
    if name == "MonitorResult":
        recs = result.records  # type: ignore[attr-defined]
        saved = result.hvps_saved  # type: ignore[attr-defined]
        out = f"{len(recs)} updates"
        if saved is not None:
            out += f", {saved} HVPs saved by warm starts"
        return out
    return name


def _blocks_summary(result: Any) -> str:
    """Per-block spectra in one line: the sharpest block, the largest trace, the JS spread."""
    names = list(result.blocks)
    top = {n: float(np.asarray(result.block_eigenvalues[n])[0]) for n in names}
    sharp = max(names, key=lambda n: top[n])
    traces = dict(result.block_traces)
    big = max(names, key=lambda n: traces[n])
    share = 100 * traces[big] / result.trace if result.trace else float("nan")
    D = np.asarray(result.js_distance, dtype=np.float64)
    off = D[~np.eye(len(names), dtype=bool)] if len(names) > 1 else np.zeros(1)
    return (
        f"{len(names)} blocks ({result.grouping}): largest λ1 in {sharp} ({_num(top[sharp])}); "
        f"largest trace in {big} ({share:.0f}% of {_num(result.trace)}); Jensen-Shannon "
        f"distance between blocks' densities {_num(float(off.mean()), 2)} on average, "
        f"{_num(float(off.max()), 2)} at most"
    )


@dataclass
class _Section:
    kind: str
    title: str
    body: str = ""


@dataclass
class Report:
    """Collects a run's tables and figures and writes them as one HTML file.

    Args:
        title: the page heading (say what was run on what).
        subtitle: a line under the heading.
        settings: the run's settings (model, data, seeds, options), shown as a table.
    """

    title: str
    subtitle: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)
    _rows: list[tuple[str, str, str, int | None, float | None]] = field(default_factory=list)
    _sections: list[_Section] = field(default_factory=list)
    _notes: list[str] = field(default_factory=list)
    _warnings: list[str] = field(default_factory=list)

    def add_result(
        self, name: str, result: Result, *, answer: str | None = None, method: str | None = None
    ) -> None:
        """Add one row to the summary table: analysis, method, answer, HVPs, seconds."""
        meth = method or str(getattr(result, "method", "") or getattr(result, "kind", "") or "")
        self._rows.append(
            (
                name,
                meth,
                answer if answer is not None else summarize(result),
                int(result.num_matvecs),
                float(result.seconds),
            )
        )

    def add_row(
        self,
        name: str,
        method: str,
        answer: str,
        hvps: int | None = None,
        seconds: float | None = None,
    ) -> None:
        """Add a summary row that is not a result record (e.g. training)."""
        self._rows.append((name, method, answer, hvps, seconds))

    def add_note(self, text: str) -> None:
        """Add a paragraph under the summary (plain text, escaped)."""
        self._notes.append(text)

    def add_warning(self, text: str) -> None:
        """Add a warning under the summary, set off so that it is not missed (e.g. a run
        that stopped with unconverged eigenpairs); plain text, escaped."""
        self._warnings.append(text)

    def add_table(
        self,
        title: str,
        header: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        caption: str = "",
    ) -> None:
        """Add a table; numbers are formatted with 5 significant digits."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows
        )
        cap = f"<p class='caption'>{html.escape(caption)}</p>" if caption else ""
        self._sections.append(
            _Section(
                "table",
                title,
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{cap}",
            )
        )

    def add_eigenpairs(self, title: str, result: Result, *, caption: str = "") -> None:
        """Add the table of an eigsh result: index, eigenvalue, residual, relative residual."""
        lam = np.asarray(result.eigenvalues, dtype=np.float64)  # type: ignore[attr-defined]
        res = np.asarray(result.residuals, dtype=np.float64)  # type: ignore[attr-defined]
        conv = np.asarray(result.converged).astype(bool)  # type: ignore[attr-defined]
        rows = [
            (
                i + 1,
                lam[i],
                res[i],
                res[i] / max(abs(lam[i]), 1e-300),
                "yes" if conv[i] else "no",
            )
            for i in range(lam.size)
        ]
        self.add_table(
            title,
            ["i", "eigenvalue λi", "residual ‖Hv − λv‖", "relative residual", "converged"],
            rows,
            caption=caption,
        )

    def add_blocks(self, title: str, result: Result, *, caption: str = "") -> None:
        """Add the table of a `block_spectra` result: each block's size, trace and top λ."""
        names = list(result.blocks)  # type: ignore[attr-defined]
        eig = result.block_eigenvalues  # type: ignore[attr-defined]
        k = max(np.asarray(eig[n]).size for n in names)
        total = float(result.trace)  # type: ignore[attr-defined]
        rows = []
        for n in names:
            lam = np.asarray(eig[n], dtype=np.float64)
            tr = float(result.block_traces[n])  # type: ignore[attr-defined]
            se = float(result.block_trace_stderrs[n])  # type: ignore[attr-defined]
            rows.append(
                (
                    n,
                    int(result.block_sizes[n]),  # type: ignore[attr-defined]
                    tr,
                    se,
                    f"{100 * tr / total:.1f}%" if total else "",
                    *[lam[i] if i < lam.size else "" for i in range(k)],
                    bool(result.block_converged[n]),  # type: ignore[attr-defined]
                )
            )
        self.add_table(
            title,
            [
                "block",
                "parameters",
                "trace",
                "std. error",
                "share",
                *[f"λ{i + 1}" for i in range(k)],
                "converged",
            ],
            rows,
            caption=caption,
        )

    def add_figure(
        self, title: str, figure: Figure | bytes | str | Path, caption: str = ""
    ) -> None:
        """Add a figure: a matplotlib Figure, PNG bytes, or the path of a PNG file."""
        png = _png_bytes(figure)
        data = base64.b64encode(png).decode("ascii")
        alt = html.escape(title, quote=True)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        # show every figure at the same scale (its size in inches), so that fonts match
        width = round(_png_inches(png) * _PX_PER_INCH)
        self._sections.append(
            _Section(
                "figure",
                title,
                f"<figure><img src='data:image/png;base64,{data}' alt='{alt}' "
                f"style='width: {width}px'>{cap}</figure>",
            )
        )

    def render(self) -> str:
        """The whole HTML document as a string."""
        prov = provenance()
        parts = [
            "<!DOCTYPE html>",
            "<html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>{html.escape(self.title)}</title>",
            f"<style>{_CSS}</style></head><body><main>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        if self.subtitle:
            parts.append(f"<p class='subtitle'>{html.escape(self.subtitle)}</p>")
        if self._rows:
            parts.append("<h2>Summary</h2>")
            parts.append(self._summary_table())
        for text in self._warnings:
            parts.append(
                f"<p class='warning' role='alert'><strong>Warning:</strong> {html.escape(text)}</p>"
            )
        for note in self._notes:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
        for sec in self._sections:
            parts.append(f"<section><h2>{html.escape(sec.title)}</h2>{sec.body}</section>")
        parts.append("<h2>Settings</h2>")
        parts.append(_kv_table(_flatten(self.settings)))
        parts.append("<h2>Provenance</h2>")
        parts.append(_kv_table(prov))
        parts.append(
            "<footer>Written by hessian-spectra "
            f"{html.escape(str(prov['version']))}. Eigenvalues are of the loss "
            f"{html.escape(str(self.settings.get('curvature', 'Hessian')))} "
            "with respect to the analysed parameters; an HVP is one product of that matrix "
            "with a vector (one column of a block product).</footer>"
        )
        parts.append("</main></body></html>")
        return "\n".join(parts)

    def write(self, path: str | Path) -> Path:
        """Write the report to `path` atomically (folders created); returns the path."""
        return write_text(path, self.render())

    def _summary_table(self) -> str:
        rows = []
        tot_hvp = 0
        tot_sec = 0.0
        for name, meth, answer, hvps, secs in self._rows:
            tot_hvp += hvps or 0
            tot_sec += secs or 0.0
            rows.append(
                "<tr>"
                f"<td>{html.escape(name)}</td><td>{html.escape(meth)}</td>"
                f"<td>{html.escape(answer)}</td>"
                f"<td class='num'>{'' if hvps is None else hvps}</td>"
                f"<td class='num'>{'' if secs is None else f'{secs:.2f}'}</td></tr>"
            )
        rows.append(
            "<tr class='total'><td>Total</td><td></td><td></td>"
            f"<td class='num'>{tot_hvp}</td><td class='num'>{tot_sec:.2f}</td></tr>"
        )
        return (
            "<table class='summary'><thead><tr><th>analysis</th><th>method</th>"
            "<th>answer</th><th>HVPs</th><th>seconds</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )


def _cell(c: Any) -> str:
    if isinstance(c, (bool, np.bool_)):
        return "yes" if c else "no"
    if isinstance(c, (int, np.integer)):
        return str(int(c))
    if isinstance(c, (float, np.floating)):
        return _num(c)
    return html.escape(str(c))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _kv_table(d: Mapping[str, Any]) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, (list, tuple)):
            text = json.dumps(list(v), default=str)
        else:
            text = str(v)
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(text)}</td></tr>")
    return f"<table class='kv'><tbody>{''.join(rows)}</tbody></table>"


#: CSS pixels per inch of figure: a 9-inch figure fills the page's 1000-pixel column
_PX_PER_INCH = 110


def _png_inches(png: bytes) -> float:
    """The width in inches a PNG was drawn at (IHDR width over its pHYs resolution)."""
    width = int.from_bytes(png[16:20], "big")
    dpi = 150.0
    at = png.find(b"pHYs")
    if at > 0 and png[at + 12] == 1:  # unit: metre
        dpi = int.from_bytes(png[at + 4 : at + 8], "big") * 0.0254
    return width / max(dpi, 1.0)


def _png_bytes(figure: Any) -> bytes:
    if isinstance(figure, (bytes, bytearray)):
        data = bytes(figure)
    elif isinstance(figure, (str, Path)):
        data = Path(figure).read_bytes()
    elif hasattr(figure, "savefig"):
        buf = io.BytesIO()
        with mpl.rc_context(STYLE):
            figure.savefig(buf, format="png", dpi=150)
        data = buf.getvalue()
    else:
        raise TypeError(
            f"a figure must be a matplotlib Figure, PNG bytes or a PNG path, got {type(figure)}"
        )
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("the figure is not a PNG image; save it with format='png'")
    return data


_CSS = """
:root { --fg: #1d232a; --muted: #5b6672; --line: #d9dee4; --accent: #2b5d8a; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1060px; margin: 0 auto; padding: 28px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 34px 0 10px; padding-bottom: 4px;
  border-bottom: 2px solid var(--line); color: var(--accent); }
.subtitle { color: var(--muted); margin: 0 0 10px; }
.note { color: var(--muted); font-size: 14px; }
.warning { background: #fff4e0; border-left: 4px solid #d9822b; padding: 8px 12px;
  margin: 12px 0; font-size: 14px; }
table { border-collapse: collapse; width: 100%; font-size: 14px;
  font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
thead th { background: #f3f5f8; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; }
tr.total td { font-weight: 600; border-top: 2px solid var(--fg); }
table.kv th { width: 30%; font-weight: 500; color: var(--muted); }
table.kv td { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px;
  word-break: break-all; }
figure { margin: 8px 0 0; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption, .caption { color: var(--muted); font-size: 13.5px; margin-top: 6px; }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; }
"""
