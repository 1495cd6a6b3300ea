import subprocess
import sys

import numpy as np
import pytest
import torch

from hessian_spectra.results import EigshResult, TraceResult, load_result


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


def test_records_defined_above_results_load_in_a_fresh_process(tmp_path):
    # A landscape record registers only when its module is imported; load_result
    # in a fresh process must import it from the file's own record of its module.
    from hessian_spectra.analysis.landscape import LandscapeResult

    r = LandscapeResult(
        num_matvecs=0,
        seconds=0.1,
        coordinates=[np.linspace(-1, 1, 3)],
        losses=np.array([1.0, 0.5, 1.0]),
        origin_loss=0.5,
    )
    p = r.to_json(tmp_path / "land.json")
    code = (
        "import sys\n"
        "from hessian_spectra.results import load_result\n"
        f"r = load_result({str(p)!r})\n"
        "print(type(r).__name__, r.losses.tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "LandscapeResult"
    assert "[1.0, 0.5, 1.0]" in out.stdout
    q = tmp_path / "bad.json"
    q.write_text('{"type": "Nope", "module": "os"}')
    with pytest.raises(ValueError, match="unknown result type"):
        load_result(q)
