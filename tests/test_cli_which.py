"""analyze --which: the eigs analysis at both ends, while sketches keep a top-k reference."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from hessian_spectra.cli import main
from hessian_spectra.results import load_result

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn


    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


    def data():
        g = torch.Generator().manual_seed(0)
        return torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    """
)


@pytest.fixture
def mlp(tmp_path, monkeypatch):
    (tmp_path / "tiny_mlp_which.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "tiny_mlp_which"


def test_analyze_both_ends_with_a_sketch(mlp, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    code = main(
        [
            "--quiet", "analyze", "--model", f"{mlp}:model", "--data", f"{mlp}:data",
            "--what", "eigs,sketch", "--which", "BE", "--k", "4", "--size", "10",
            "--kind", "rangefinder", "--out", str(out),
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    both = load_result(out / "eigs.json")
    top = load_result(out / "eigs_top.json")
    assert both.which == "BE" and top.which == "LA"
    lam = np.asarray(both.eigenvalues)
    assert lam[0] == pytest.approx(np.asarray(top.eigenvalues)[0], rel=1e-3)
    assert lam[-1] < 0 < lam[0]
    report = (out / "report.html").read_text()
    assert "Both ends: k eigenvalues" in report
    assert "Sketches vs Lanczos" in report
    assert "at its initialization" not in report


@pytest.mark.parametrize(("grouping", "names"), [("layers", ["0", "2"]), ("modules", ["mlp"])])
def test_trace_by_blocks(mlp, tmp_path, capsys, grouping, names) -> None:
    out = tmp_path / grouping
    code = main(
        [
            "--quiet", "trace", "--model", f"{mlp}:model", "--data", f"{mlp}:data",
            "--blocks", grouping, "--trace-method", "hutchinson", "--num-matvecs", "8",
            "--out", str(out),
        ]
    )  # fmt: skip
    cap = capsys.readouterr()
    assert code == 0, cap.err
    tr = load_result(out / "layers.json")
    assert list(tr.block_estimates) == names
    assert sum(tr.block_estimates.values()) == pytest.approx(tr.estimate, rel=1e-10)
    assert sum(tr.block_sizes.values()) == 67
