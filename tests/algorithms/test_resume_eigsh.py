"""eigsh checkpoints: an interrupted Lanczos run resumed is the identical computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.algorithms.lanczos import LanczosProcess
from hessian_spectra.checkpoint import CheckpointError, load_checkpoint
from hessian_spectra.operators.base import DenseOperator
from tests.helpers import matrix_with_spectrum

N = 160
# slowly decaying top of the spectrum: many thick restarts with max_basis=16
LAM = np.concatenate([10.0 * 0.93 ** np.arange(40), np.linspace(-1.0, 0.5, N - 40)])
KW = {"k": 5, "tol": 1e-10, "seed": 3, "max_basis": 16, "max_matvecs": 400}


class Interrupting(DenseOperator):
    """A dense operator that raises KeyboardInterrupt during its product number `at`."""

    def __init__(self, matrix, at: int | None = None) -> None:
        super().__init__(matrix)
        self.at = at

    def _matmat(self, V):
        if self.at is not None and self.num_matvecs + V.shape[1] > self.at:
            raise KeyboardInterrupt
        return super()._matmat(V)


def _matrix():
    return torch.as_tensor(matrix_with_spectrum(LAM, seed=1))


def _reference():
    return hs.eigsh(Interrupting(_matrix()), **KW)


def assert_identical(a, b):
    """Bit-for-bit equal results (all but wall-clock seconds)."""
    assert np.array_equal(a.eigenvalues, b.eigenvalues)
    assert torch.equal(a.eigenvectors, b.eigenvectors)
    assert np.array_equal(a.residuals, b.residuals)
    assert np.array_equal(a.converged, b.converged)
    assert a.num_matvecs == b.num_matvecs and a.restarts == b.restarts
    assert a.stop_reason == b.stop_reason and a.seed == b.seed
    assert a.orthogonality_loss == b.orthogonality_loss
    assert len(a.history) == len(b.history)
    for ra, rb in zip(a.history, b.history, strict=True):
        assert {k: v for k, v in ra.items() if k != "seconds"} == {
            k: v for k, v in rb.items() if k != "seconds"
        }


@pytest.fixture(scope="module")
def reference():
    ref = _reference()
    assert ref.converged.all() and ref.restarts >= 4  # the run restarts many times
    return ref


def test_checkpointed_run_equals_plain_run_and_cleans_up(tmp_path, reference):
    path = tmp_path / "eigs.ckpt"
    res = hs.eigsh(Interrupting(_matrix()), **KW, checkpoint=path, checkpoint_every=5)
    assert_identical(res, reference)
    assert not path.exists(), "the checkpoint of a finished run is removed"
    assert not list(tmp_path.iterdir()), "no temporary file left behind"


@pytest.mark.parametrize("step", [1, 16, 27])
def test_keyboard_interrupt_from_callback_saves_and_resumes_identically(tmp_path, reference, step):
    path = tmp_path / "eigs.ckpt"

    def interrupt(record):
        if record["matvecs"] == step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hs.eigsh(
            Interrupting(_matrix()), **KW, checkpoint=path, checkpoint_every=50, callback=interrupt
        )
    # saved on the way out, not at the last periodic save (every 50 steps)
    state = load_checkpoint(path, "eigsh/lanczos", _fingerprint(path))
    assert state["recorder"]["matvecs"] == step and len(state["recorder"]["history"]) == step
    res = hs.eigsh(Interrupting(_matrix()), **KW, checkpoint=path, resume=True)
    assert_identical(res, reference)
    assert not path.exists()


def _fingerprint(path):
    """The fingerprint stored in a checkpoint (read raw, to pass back to load_checkpoint)."""
    return torch.load(path, weights_only=True)["fingerprint"]


@pytest.mark.parametrize("at", [5, 22, 30])
def test_interrupt_during_a_product_resumes_identically(tmp_path, reference, at):
    """Ctrl-C while the operator multiplies (the usual case), also right after a restart."""
    path = tmp_path / "eigs.ckpt"
    with pytest.raises(KeyboardInterrupt):
        hs.eigsh(Interrupting(_matrix(), at=at), **KW, checkpoint=path, checkpoint_every=1000)
    state = load_checkpoint(path, "eigsh/lanczos", _fingerprint(path))
    assert state["process"]["num_matvecs"] == at
    res = hs.eigsh(Interrupting(_matrix()), **KW, checkpoint=path, resume=True)
    assert_identical(res, reference)


def test_saved_state_after_a_restart_is_marked(tmp_path, reference):
    """With max_basis=16, product 16 comes right after the first thick restart."""
    path = tmp_path / "eigs.ckpt"
    with pytest.raises(KeyboardInterrupt):
        hs.eigsh(Interrupting(_matrix(), at=16), **KW, checkpoint=path)
    state = load_checkpoint(path, "eigsh/lanczos", _fingerprint(path))
    assert state["process"]["restarts"] == 1 and state["loop"]["pending"] is False
    res = hs.eigsh(Interrupting(_matrix()), **KW, checkpoint=path, resume=True)
    assert_identical(res, reference)


def test_interrupt_while_updating_keeps_the_last_periodic_save(tmp_path, reference, monkeypatch):
    """An interrupt inside a step's update leaves the last periodic save, which resumes."""
    path = tmp_path / "eigs.ckpt"
    calls = {"n": 0}
    original = LanczosProcess._orthogonalize

    def flaky(self, w, upto):
        calls["n"] += 1
        if calls["n"] == 29:  # during the update of step 29
            raise KeyboardInterrupt
        return original(self, w, upto)

    monkeypatch.setattr(LanczosProcess, "_orthogonalize", flaky)
    with pytest.raises(KeyboardInterrupt):
        hs.eigsh(Interrupting(_matrix()), **KW, checkpoint=path, checkpoint_every=10)
    monkeypatch.setattr(LanczosProcess, "_orthogonalize", original)
    state = load_checkpoint(path, "eigsh/lanczos", _fingerprint(path))
    assert state["recorder"]["matvecs"] == 20  # the save at step 20, not a torn step 29
    res = hs.eigsh(Interrupting(_matrix()), **KW, checkpoint=path, resume=True)
    assert_identical(res, reference)


def _interrupted(path, at=30):
    with pytest.raises(KeyboardInterrupt):
        hs.eigsh(Interrupting(_matrix(), at=at), **KW, checkpoint=path)
    assert path.exists()


def test_resume_takes_the_saved_seed_and_refuses_another(tmp_path, reference):
    path = tmp_path / "eigs.ckpt"
    _interrupted(path)
    with pytest.raises(CheckpointError, match="seed=3, this call has seed=4"):
        hs.eigsh(Interrupting(_matrix()), **{**KW, "seed": 4}, checkpoint=path, resume=True)
    res = hs.eigsh(Interrupting(_matrix()), **{**KW, "seed": None}, checkpoint=path, resume=True)
    assert_identical(res, reference)


def test_existing_checkpoint_needs_resume(tmp_path):
    path = tmp_path / "eigs.ckpt"
    _interrupted(path)
    with pytest.raises(CheckpointError, match="pass resume=True to continue it"):
        hs.eigsh(Interrupting(_matrix()), **KW, checkpoint=path)
    assert path.exists(), "a refused call leaves the saved run alone"


def test_other_computation_refused(tmp_path):
    path = tmp_path / "eigs.ckpt"
    _interrupted(path)
    with pytest.raises(CheckpointError, match="k: saved 5, now 6"):
        hs.eigsh(Interrupting(_matrix()), **{**KW, "k": 6}, checkpoint=path, resume=True)
    other = _matrix().clone()
    other[0, 0] += 1e-12
    with pytest.raises(CheckpointError, match="matrix: saved"):
        hs.eigsh(Interrupting(other), **KW, checkpoint=path, resume=True)


def test_truncated_and_foreign_files_refused(tmp_path):
    path = tmp_path / "eigs.ckpt"
    _interrupted(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a hessian-spectra"):
        hs.eigsh(Interrupting(_matrix()), **KW, checkpoint=path, resume=True)
    torch.save({"model": torch.ones(3)}, path)
    with pytest.raises(CheckpointError, match="not a hessian-spectra checkpoint"):
        hs.eigsh(Interrupting(_matrix()), **KW, checkpoint=path, resume=True)


def test_resume_without_file_starts_afresh(tmp_path, reference):
    path = tmp_path / "eigs.ckpt"
    res = hs.eigsh(Interrupting(_matrix()), **KW, checkpoint=path, resume=True)
    assert_identical(res, reference)


def test_options_refused_where_they_do_not_apply(tmp_path):
    op = Interrupting(_matrix())
    with pytest.raises(ValueError, match="resume=True needs a checkpoint path"):
        hs.eigsh(op, 3, resume=True)
    with pytest.raises(ValueError, match="options of method='lanczos'"):
        hs.eigsh(op, 3, method="power", checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="checkpoint_every must be a positive int"):
        hs.eigsh(op, 3, checkpoint=tmp_path / "c.pt", checkpoint_every=0)


def test_fingerprint_only_taken_with_a_checkpoint(tmp_path):
    """Hashing a model's parameters is skipped when no checkpoint is asked for."""

    class Costly(Interrupting):
        calls = 0

        def fingerprint(self):
            Costly.calls += 1
            return super().fingerprint()

    hs.eigsh(Costly(_matrix()), 3, seed=0)
    hs.trace(Costly(_matrix()), seed=0, num_matvecs=20)
    hs.density(Costly(_matrix()), seed=0, num_steps=5)
    assert Costly.calls == 0
    hs.eigsh(Costly(_matrix()), 3, seed=0, checkpoint=tmp_path / "c.ckpt")
    assert Costly.calls == 1
