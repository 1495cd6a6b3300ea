"""report.html: self-contained, right numbers in the summary, and it renders in Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hessian_spectra import plots
from hessian_spectra.figures import save_figure
from hessian_spectra.report import Report, summarize
from hessian_spectra.results import TraceResult
from tests.test_plots import FakeDensity, _landscape, fake_eigsh

CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()),
    None,
)


def _report(tmp_path: Path) -> tuple[Path, Report]:
    top = fake_eigsh(k=3, steps=9)
    tr = TraceResult(
        estimate=123.456,
        stderr=1.5,
        block_estimates={"conv": 100.0, "fc": 23.456},
        block_stderrs={"conv": 1.2, "fc": 0.4},
        num_matvecs=60,
        seconds=2.5,
    )
    rep = Report(
        "Hessian spectrum of a test model",
        subtitle="digits CNN, 1,797 samples",
        settings={"model": "digits-cnn", "k": 3, "note": "<script>alert(1)</script>"},
    )
    rep.add_result("Top-3 eigenvalues", top)
    rep.add_result("Trace", tr)
    rep.add_row("Training", "Adam", "loss 0.01", None, 3.0)
    rep.add_eigenpairs("Top-3 eigenpairs", top)
    rep.add_figure("Convergence", plots.plot_convergence(top), caption="Ritz values per HVP")
    rep.add_figure("Density", plots.plot_density(FakeDensity()))
    rep.add_figure("Landscape", plots.plot_landscape(_landscape(2)))
    rep.add_figure("Layers", plots.plot_layer_traces(tr))
    return rep.write(tmp_path / "out" / "report.html"), rep


def test_report_is_self_contained_with_the_numbers(tmp_path):
    path, _ = _report(tmp_path)
    text = path.read_text(encoding="utf-8")
    # no external resources and no scripts: the file opens anywhere as it is
    assert not re.search(r"(src|href)\s*=\s*['\"](https?:|//|file:)", text)
    assert "<script" not in text  # the settings' script tag is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    imgs = re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(imgs) == 4
    for data in imgs:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    # the summary: trace with standard error, HVPs and seconds, and the total row
    assert "trace = 123.46 ± 1.5" in text
    assert "<td class='num'>60</td><td class='num'>2.50</td>" in text
    assert "<td>Total</td><td></td><td></td><td class='num'>69</td>" in text
    # eigenpairs table: each eigenvalue with its residual
    top = fake_eigsh(k=3, steps=9)
    for lam in top.eigenvalues:
        assert f"{lam:.5g}" in text
    assert "Provenance" in text and "torch" in text


def test_summaries_of_each_result_kind():
    top = fake_eigsh(k=2, steps=5)
    s = summarize(top)
    assert s.startswith(f"λ1 = {top.eigenvalues[0]:.5g}, λ2 =") and "2/2 converged" in s
    tr = TraceResult(estimate=10.0, stderr=0.25, num_matvecs=5, seconds=0.1)
    assert summarize(tr) == "trace = 10 ± 0.25 (1 standard error)"
    land = _landscape(2)
    assert summarize(land).startswith("11×9 grid: loss 1 at the parameters")


def test_figure_must_be_png(tmp_path):
    rep = Report("x")
    bad = tmp_path / "x.png"
    bad.write_bytes(b"GIF89a not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        rep.add_figure("bad", bad)
    with pytest.raises(TypeError, match="matplotlib Figure"):
        rep.add_figure("bad", 42)  # type: ignore[arg-type]


# ---------------------------------------------------------------- headless Chromium
_HEAD = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push('error: ' + (e.message || (e.target && (e.target.src || '').slice(0, 40))));
}, true);
['error', 'warn'].forEach(function (level) {
  var orig = console[level];
  console[level] = function () {
    window.__errors.push(level + ': ' + Array.from(arguments).join(' '));
    orig.apply(console, arguments);
  };
});
</script>"""

_TAIL = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var out = document.createElement('pre');
  out.id = 'render-check';
  out.textContent = 'images=' + imgs.length + ' bad=' + bad +
    ' errors=' + JSON.stringify(window.__errors);
  document.body.appendChild(out);
});
</script>"""


def render_in_chromium(report: Path, tmp_path: Path) -> tuple[str, str]:
    """Open a copy of `report` with the check scripts in headless Chromium.

    Returns the check line written into the DOM and Chromium's console lines.
    """
    assert CHROMIUM is not None
    html = report.read_text(encoding="utf-8")
    assert "<script" not in html  # the report has none of its own: the checks are ours
    html = html.replace("<head>", "<head>" + _HEAD, 1).replace("</body>", _TAIL + "</body>", 1)
    copy = tmp_path / "checked.html"
    copy.write_text(html, encoding="utf-8")
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            copy.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"<pre id=\"render-check\">([^<]*)</pre>", proc.stdout)
    assert m is not None, "the check script did not run: " + proc.stdout[-500:]
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln]
    return m.group(1), "\n".join(console)


chromium_needed = pytest.mark.skipif(
    CHROMIUM is None,
    reason="SKIPPED: headless Chromium not installed (apt-get install chromium; .ci/run does it)",
)


@chromium_needed
def test_report_renders_in_headless_chromium(tmp_path):
    path, _ = _report(tmp_path)
    check, console = render_in_chromium(path, tmp_path)
    assert check == "images=4 bad=0 errors=[]", check
    assert console == "", console


@chromium_needed
def test_render_check_catches_a_broken_image(tmp_path):
    # the check itself must be able to fail: a corrupt PNG is reported as not decoded
    rep = Report("broken")
    good = save_figure(plots.plot_landscape(_landscape(1)), tmp_path / "ok.png")
    rep.add_figure("fine", good)
    path = rep.write(tmp_path / "report.html")
    html = path.read_text(encoding="utf-8")
    head = "data:image/png;base64,"
    start = html.index(head) + len(head)
    corrupt = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(np.arange(200, dtype=np.uint8)))
    end = html.index("'", start)
    path.write_text(html[:start] + corrupt.decode() + html[end:], encoding="utf-8")
    check, _ = render_in_chromium(path, tmp_path)
    assert check.startswith("images=1 bad=1"), check
