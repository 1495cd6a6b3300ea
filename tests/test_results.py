import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.results import (
    EigshResult,
    LandscapeResult,
    MonitorResult,
    TraceResult,
    load_result,
)


def test_eigsh_result_round_trip_with_npz(tmp_path):
    r = EigshResult(
        num_matvecs=12,
        seconds=0.5,
        history=[{"matvecs": 1, "seconds": 0.1, "ritz": [1.0, 2.0]}],
        seed=3,
        eigenvalues=np.array([2.0, 1.0]),
        eigenvectors=torch.eye(4, 2, dtype=torch.float64),
        residuals=np.array([1e-9, float("inf")]),
        converged=np.array([True, False]),
    )
    p = r.to_json(tmp_path / "r.json")
    assert (tmp_path / "r.npz").exists()
    assert '"__npz__": "eigenvectors"' in p.read_text()  # never inline
    back = EigshResult.from_json(p)
    assert torch.equal(back.eigenvectors, r.eigenvectors)
    np.testing.assert_array_equal(back.eigenvalues, r.eigenvalues)
    assert back.residuals[1] == float("inf") and back.converged.tolist() == [True, False]
    assert back.history[0]["ritz"] == [1.0, 2.0] and back.seed == 3
    with pytest.raises(TypeError, match="load_result"):
        TraceResult.from_json(p)


def test_landscape_and_monitor_records_load_in_a_fresh_process(tmp_path):
    # Every record lives in results.py, so a fresh process that imports only the
    # records reads a landscape and a monitor, imports no analysis module to do
    # it, and still reads files that name the module the record used to live in.
    land = LandscapeResult(
        num_matvecs=0,
        seconds=0.1,
        coordinates=[np.linspace(-1, 1, 3)],
        losses=np.array([1.0, 0.5, 1.0]),
        origin_loss=0.5,
    )
    mon = MonitorResult(
        records=[{"step": 0, "eigenvalues": [3.0], "eig_matvecs": 7, "warm": False}],
        k=1,
        num_matvecs=7,
        seconds=0.2,
    )
    p_land = land.to_json(tmp_path / "land.json")
    p_mon = mon.to_json(tmp_path / "mon.json")
    old = json.loads(p_land.read_text())
    assert old["module"] == "hessian_spectra.results"
    old["module"] = "hessian_spectra.analysis.landscape"  # as earlier versions wrote it
    p_old = tmp_path / "old_land.json"
    p_old.write_text(json.dumps(old))
    code = (
        "import sys\n"
        "from hessian_spectra.results import load_result\n"
        f"a = load_result({str(p_land)!r})\n"
        f"b = load_result({str(p_mon)!r})\n"
        f"c = load_result({str(p_old)!r})\n"
        "print(type(a).__name__, type(b).__name__, type(c).__name__)\n"
        "print(a.losses.tolist(), b.records[0]['eigenvalues'], c.losses.tolist())\n"
        "print(sorted(m for m in sys.modules if m.startswith('hessian_spectra.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, values, modules = out.stdout.splitlines()
    assert names.split() == ["LandscapeResult", "MonitorResult", "LandscapeResult"]
    assert values == "[1.0, 0.5, 1.0] [3.0] [1.0, 0.5, 1.0]"
    assert "analysis" not in modules and "plots" not in modules, modules
    q = tmp_path / "bad.json"
    q.write_text('{"type": "Nope", "module": "os"}')
    with pytest.raises(ValueError, match="unknown result type"):
        load_result(q)


def test_landscape_and_monitor_records_are_exported():
    assert hs.LandscapeResult is LandscapeResult and hs.MonitorResult is MonitorResult
    assert {"LandscapeResult", "MonitorResult"} <= set(hs.__all__)
