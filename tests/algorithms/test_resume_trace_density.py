"""trace and density checkpoints: interrupted runs resumed are the identical computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.checkpoint import CheckpointError, load_checkpoint
from tests.algorithms.test_resume_eigsh import Interrupting
from tests.helpers import matrix_with_spectrum

N = 120
LAM = np.concatenate([np.linspace(5.0, 1.0, 20), np.linspace(-0.5, 0.5, N - 20)])
BLOCKS = {"first": slice(0, 50), "rest": torch.arange(50, N)}


def _matrix():
    return torch.as_tensor(matrix_with_spectrum(LAM, seed=2))


def _saved(path, kind):
    raw = torch.load(path, weights_only=True)
    return load_checkpoint(path, kind, raw["fingerprint"])


def same_history(a, b):
    assert len(a.history) == len(b.history)
    for ra, rb in zip(a.history, b.history, strict=True):
        assert {k: v for k, v in ra.items() if k != "seconds"} == {
            k: v for k, v in rb.items() if k != "seconds"
        }


def assert_same_trace(a, b):
    assert a.estimate == b.estimate and a.stderr == b.stderr
    assert np.array_equal(a.samples, b.samples)
    assert a.block_estimates == b.block_estimates and a.block_stderrs == b.block_stderrs
    assert a.num_matvecs == b.num_matvecs and a.converged == b.converged and a.seed == b.seed
    same_history(a, b)


def assert_same_density(a, b):
    for name in ("nodes", "weights", "residuals", "converged", "num_nodes"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.num_matvecs == b.num_matvecs and a.seed == b.seed
    same_history(a, b)


TRACE_CASES = {
    "hutchinson": {"method": "hutchinson", "num_matvecs": 60, "blocks": BLOCKS},
    "hutch++": {"method": "hutch++", "num_matvecs": 66, "blocks": BLOCKS},
    "xtrace": {"method": "xtrace", "num_matvecs": 70, "blocks": BLOCKS},
    "xtrace-rtol": {"method": "xtrace", "rtol": 1e-9, "max_matvecs": 90},
}


@pytest.mark.parametrize("case", list(TRACE_CASES))
def test_trace_interrupted_in_a_product_and_in_the_callback(tmp_path, case):
    kw = {**TRACE_CASES[case], "seed": 7, "block_size": 3}
    ref = hs.trace(Interrupting(_matrix()), **kw)
    assert len(ref.history) >= 5
    path = tmp_path / "trace.ckpt"
    kind = f"trace/{kw['method']}"
    # Ctrl-C inside the product of the 4th block (xtrace multiplies twice per block)
    at = ref.history[2]["matvecs"] + 1
    with pytest.raises(KeyboardInterrupt):
        hs.trace(Interrupting(_matrix(), at=at), **kw, checkpoint=path, checkpoint_every=100)
    assert len(_saved(path, kind)["recorder"]["history"]) == 3

    # resumed, then interrupted again from the callback two blocks later
    def interrupt(record):
        if record["probes"] == ref.history[4]["probes"]:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hs.trace(Interrupting(_matrix()), **kw, checkpoint=path, resume=True, callback=interrupt)
    assert len(_saved(path, kind)["recorder"]["history"]) == 5
    res = hs.trace(Interrupting(_matrix()), **kw, checkpoint=path, resume=True)
    assert_same_trace(res, ref)
    assert not path.exists()


def test_trace_refuses_other_settings_and_foreign_files(tmp_path):
    path = tmp_path / "trace.ckpt"
    kw = {"method": "hutchinson", "num_matvecs": 60, "seed": 1, "block_size": 3}
    with pytest.raises(KeyboardInterrupt):
        hs.trace(Interrupting(_matrix(), at=20), **kw, checkpoint=path)
    with pytest.raises(CheckpointError, match="num_matvecs: saved 60, now 90"):
        hs.trace(Interrupting(_matrix()), **{**kw, "num_matvecs": 90}, checkpoint=path, resume=True)
    with pytest.raises(CheckpointError, match="holds a 'trace/hutchinson' computation"):
        hs.trace(
            Interrupting(_matrix()), **{**kw, "method": "xtrace"}, checkpoint=path, resume=True
        )
    with pytest.raises(CheckpointError, match="holds a 'trace/hutchinson' computation"):
        hs.eigsh(Interrupting(_matrix()), 3, seed=1, checkpoint=path, resume=True)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        hs.trace(Interrupting(_matrix()), **kw, checkpoint=path, resume=True)


DENSITY_KW = {"num_steps": 30, "num_probes": 5, "block_size": 2, "seed": 4}


@pytest.mark.parametrize(
    "at",
    [
        7,  # inside the first group's run
        2 * 30 + 2 * 30,  # the first product of the third group, after a group change
        2 * 30 + 2 * 30 + 11,  # inside the last group (one probe)
    ],
)
def test_density_interrupted_in_a_product_resumes_identically(tmp_path, at):
    ref = hs.density(Interrupting(_matrix()), **DENSITY_KW)
    assert ref.num_matvecs == 5 * 30
    path = tmp_path / "density.ckpt"
    with pytest.raises(KeyboardInterrupt):
        hs.density(Interrupting(_matrix(), at=at), **DENSITY_KW, checkpoint=path)
    saved = _saved(path, "density/slq")
    assert saved["recorder"]["matvecs"] == at - at % 2 if at < 120 else at
    res = hs.density(Interrupting(_matrix()), **DENSITY_KW, checkpoint=path, resume=True)
    assert_same_density(res, ref)
    assert not path.exists()


def test_density_interrupted_from_the_callback_and_periodic_saves(tmp_path):
    ref = hs.density(Interrupting(_matrix()), **DENSITY_KW)
    path = tmp_path / "density.ckpt"
    saved_sizes = []

    def interrupt(record):
        if path.exists():
            saved_sizes.append(_saved(path, "density/slq")["recorder"]["matvecs"])
        if record["matvecs"] == 84:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hs.density(
            Interrupting(_matrix()),
            **DENSITY_KW,
            checkpoint=path,
            checkpoint_every=4,
            callback=interrupt,
        )
    # a save every 4 lockstep steps (8 products per step while two probes run)
    assert sorted(set(saved_sizes)) == [8, 16, 24, 32, 40, 48, 56, 64, 72, 80]
    assert _saved(path, "density/slq")["recorder"]["matvecs"] == 84
    res = hs.density(Interrupting(_matrix()), **DENSITY_KW, checkpoint=path, resume=True)
    assert_same_density(res, ref)


def test_density_interrupted_between_probe_updates_keeps_the_periodic_save(tmp_path, monkeypatch):
    """A Ctrl-C after one probe of a block took its step and before the next did.

    The state is torn there (one probe a step ahead of the other), so the last
    periodic save must stay, and resuming from it gives the identical result.
    """
    from hessian_spectra.algorithms.lanczos import LanczosProcess

    ref = hs.density(Interrupting(_matrix()), **DENSITY_KW)
    path = tmp_path / "density.ckpt"
    original = LanczosProcess.step
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 2 * 13 + 2:  # the second probe's update in lockstep step 14
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(LanczosProcess, "step", flaky)
    with pytest.raises(KeyboardInterrupt):
        hs.density(Interrupting(_matrix()), **DENSITY_KW, checkpoint=path, checkpoint_every=5)
    monkeypatch.setattr(LanczosProcess, "step", original)
    saved = _saved(path, "density/slq")
    assert saved["recorder"]["matvecs"] == 2 * 10  # the save at step 10
    assert [len(p["alpha"]) for p in saved["group"]] == [10, 10]
    res = hs.density(Interrupting(_matrix()), **DENSITY_KW, checkpoint=path, resume=True)
    assert_same_density(res, ref)
