"""Per-block spectra in figures and in the report: the densities, the JS heat map, the table."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import hessian_spectra as hs
from hessian_spectra import plots
from hessian_spectra.figures import save_figure
from hessian_spectra.plots.blocks import short_names
from hessian_spectra.report import Report, summarize


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(30, 3), torch.randint(0, 2, (30,))
    return hs.block_spectra(
        model, nn.CrossEntropyLoss(), (x, y), k=2, num_matvecs=10, num_steps=8, seed=0
    )


def test_short_names() -> None:
    assert short_names(["embeddings", "transformer.h.0", "transformer.h.1", "head"]) == [
        "embeddings",
        "h.0",
        "h.1",
        "head",
    ]
    assert short_names(["0", "2"]) == ["0", "2"]


def test_plot_block_spectra(result, tmp_path) -> None:
    fig = plots.plot_block_spectra(result)
    assert isinstance(fig, Figure)
    left, right = fig.axes[:2]
    assert len(left.get_lines()) == 3  # one density per block
    assert "Jensen-Shannon" in right.get_title()
    assert save_figure(fig, tmp_path / "blocks.png").stat().st_size > 0


def test_report_table_and_summary(result, tmp_path) -> None:
    line = summarize(result)
    assert line.startswith("3 blocks (layers): largest λ1 in ")
    assert "Jensen-Shannon distance" in line
    rep = Report("blocks")
    rep.add_result("Per-block spectra", result)
    rep.add_blocks("Per-block spectra", result, caption="one row per block")
    rep.add_figure("Per-block densities", plots.plot_block_spectra(result))
    text = rep.write(tmp_path / "r.html").read_text()
    assert "<th>λ2</th>" in text and "<td>4</td>" in text and "one row per block" in text
