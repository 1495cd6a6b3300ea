"""SpectrumMonitor: warm starts save HVPs on a slowly changing model; the series round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hessian_spectra.analysis.monitor import SpectrumMonitor
from hessian_spectra.results import MonitorResult, load_result


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (200,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    return model, x, y


def _dense_top(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> np.ndarray:
    """The top-k eigenvalues of the dense Hessian, built column by column (float64)."""
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.cat([t.reshape(-1) for t in grads])
    H = torch.stack(
        [
            torch.cat([t.reshape(-1) for t in torch.autograd.grad(g[i], params, retain_graph=True)])
            for i in range(g.numel())
        ]
    )
    H = (H + H.T) / 2
    return np.sort(np.linalg.eigvalsh(H.detach().numpy()))[::-1][:k]


def test_warm_start_uses_fewer_hvps_than_a_cold_start():
    # 163 parameters, top 4, small gradient-descent steps between updates: the previous
    # eigenvectors are close to the new ones, so a warm-started Lanczos needs fewer HVPs
    model, x, y = _problem()
    crit = nn.CrossEntropyLoss()
    mon = SpectrumMonitor(
        model, crit, (x, y), k=4, every=5, tol=1e-3, compare_cold=True, trace=False, seed=0
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(26):
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
        mon(step, lr=0.05)
    recs = mon.records
    assert [r["step"] for r in recs] == [0, 5, 10, 15, 20, 25]
    first, rest = recs[0], recs[1:]
    assert not first["warm"] and first["cold_matvecs"] == first["eig_matvecs"]
    for r in rest:
        assert r["warm"]
        assert r["eig_matvecs"] < r["cold_matvecs"], r
        # same answer either way, to the tolerance
        np.testing.assert_allclose(r["eigenvalues"], r["cold_eigenvalues"], rtol=2e-3)
    saved = sum(r["cold_matvecs"] - r["eig_matvecs"] for r in rest)
    assert mon.hvps_saved == saved > 0
    # and the answer is right: the last record against the dense Hessian
    np.testing.assert_allclose(recs[-1]["eigenvalues"], _dense_top(model, x, y, 4), rtol=2e-3)
    assert (
        mon.num_matvecs
        == sum(r["eig_matvecs"] + r["cold_matvecs"] for r in rest) + (first["eig_matvecs"])
    )


def test_trace_layers_json_and_plot(tmp_path):
    model, x, y = _problem(1)
    mon = SpectrumMonitor(
        model, nn.CrossEntropyLoss(), (x, y), k=2, trace=True, layers=True, trace_matvecs=40
    )
    model.train()
    rec = mon.update(0, loss=torch.tensor(1.25), lr=0.1)
    assert model.training  # its mode is restored after the update
    assert rec["loss"] == 1.25 and isinstance(rec["loss"], float)
    layer_sum = sum(v[0] for v in rec["layer_traces"].values())
    assert layer_sum == pytest.approx(rec["trace"], rel=1e-9)
    assert set(rec["layer_traces"]) == {"0", "2"}  # the two Linear layers
    assert rec["trace_stderr"] > 0 and rec["trace_matvecs"] == 40
    mon.update(1, lr=0.1)
    path = mon.to_json(tmp_path / "monitor.json")
    back = load_result(path)
    assert isinstance(back, MonitorResult)
    assert [r["step"] for r in back.records] == [0, 1]
    steps, lam1 = back.series("trace")
    assert steps.tolist() == [0, 1] and np.isfinite(lam1).all()
    fig = mon.plot(tmp_path / "monitor.png")
    assert (tmp_path / "monitor.png").read_bytes().startswith(b"\x89PNG")
    assert fig.axes[0].get_ylabel()
    layer_lines = [ln for ln in fig.axes[1].get_lines() if ln.get_label().startswith("layer ")]
    assert [ln.get_label() for ln in layer_lines] == ["layer 0", "layer 2"]
    np.testing.assert_allclose(
        layer_lines[0].get_ydata(), [r["layer_traces"]["0"][0] for r in mon.records]
    )


def test_every_and_bad_input():
    model, x, y = _problem(2)
    mon = SpectrumMonitor(model, nn.CrossEntropyLoss(), (x, y), k=1, every=3, trace=False)
    assert mon(1) is None and mon(2) is None
    assert mon(3) is not None and len(mon.records) == 1
    with pytest.raises(ValueError, match="records itself"):
        mon.update(4, eigenvalues=[1.0])
    with pytest.raises(ValueError, match="exactly one"):
        SpectrumMonitor(model, None, (x, y))
    with pytest.raises(ValueError, match="k must be at least 1"):
        SpectrumMonitor(model, nn.CrossEntropyLoss(), (x, y), k=0)
    with pytest.raises(ValueError, match="warm-startable"):
        SpectrumMonitor(model, nn.CrossEntropyLoss(), (x, y), method="power")
    with pytest.raises(ValueError, match="no data"):
        SpectrumMonitor(model, nn.CrossEntropyLoss()).update(0)


def test_each_submodule_keeps_its_own_mode():
    """A frozen eval-mode BatchNorm inside a train-mode model comes back in eval mode."""
    model, x, y = _problem(3)
    model = nn.Sequential(model[0], nn.BatchNorm1d(16), model[1], model[2]).double().train()
    model[1].eval()  # frozen statistics
    mon = SpectrumMonitor(model, nn.CrossEntropyLoss(), (x, y), k=1, trace=False)
    mon.update(0)
    assert model.training and model[0].training and not model[1].training
