import pytest
import torch

from hessian_spectra.checkpoint import (
    CheckpointError,
    generator_state,
    load_checkpoint,
    restore_generator,
    save_checkpoint,
)

FP = {"n": 10, "dtype": "torch.float64", "k": 3}


def test_round_trip_and_generator_continues(tmp_path):
    gen = torch.Generator().manual_seed(5)
    torch.randn(3, generator=gen)
    state = {
        "basis": torch.arange(6.0).reshape(3, 2),
        "alpha": [1.0, 2.0],
        "gen": generator_state(gen),
    }
    p = save_checkpoint(tmp_path / "c.pt", "eigsh/lanczos", FP, state)
    back = load_checkpoint(p, "eigsh/lanczos", FP)
    assert torch.equal(back["basis"], state["basis"]) and back["alpha"] == [1.0, 2.0]
    g2 = restore_generator(back["gen"])
    assert torch.equal(torch.randn(4, generator=g2), torch.randn(4, generator=gen))
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_truncated_file_refused(tmp_path):
    p = save_checkpoint(tmp_path / "c.pt", "trace", FP, {"x": torch.ones(1000)})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(p, "trace", FP)


def test_foreign_files_refused(tmp_path):
    p = tmp_path / "model.pt"
    torch.save({"weight": torch.ones(2)}, p)
    with pytest.raises(CheckpointError, match="not a hessian-spectra checkpoint"):
        load_checkpoint(p, "trace", FP)
    q = tmp_path / "notes.txt"
    q.write_text("hello")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(q, "trace", FP)


def test_other_computation_refused(tmp_path):
    p = save_checkpoint(tmp_path / "c.pt", "trace", FP, {})
    with pytest.raises(CheckpointError, match="holds a 'trace'"):
        load_checkpoint(p, "density", FP)
    with pytest.raises(CheckpointError, match="k: saved 3, now 4"):
        load_checkpoint(p, "trace", {**FP, "k": 4})
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", "trace", FP)


def test_hessian_operator_fingerprint_follows_the_weights():
    """A checkpoint is not continued on a model whose parameters changed."""
    from torch import nn

    from hessian_spectra.operators.hessian import HessianOperator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    batch = (torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1, 0]))
    crit = nn.CrossEntropyLoss()
    first = HessianOperator(model, crit, batch).fingerprint()
    assert HessianOperator(model, crit, batch).fingerprint() == first
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-9
    changed = HessianOperator(model, crit, batch).fingerprint()
    assert changed["params"] != first["params"] and changed["n"] == first["n"] == 26
    assert HessianOperator(model, crit, batch, params="0.").fingerprint()["n"] == 16
