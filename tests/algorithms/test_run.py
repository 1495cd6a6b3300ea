"""The run context (seed policy, record, checkpoint hooks) and the named history keys."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra import history
from hessian_spectra.algorithms._run import RunContext, resolve_seed
from hessian_spectra.algorithms.eigen.eigsh import METHODS, SOLVERS, Method
from hessian_spectra.checkpoint import CheckpointError, RunCheckpoint, save_checkpoint
from hessian_spectra.operators.base import digest
from tests.helpers import dense_op

LAM = np.r_[np.linspace(10.0, 4.0, 6), np.linspace(-1.0, 1.0, 34)]


def test_explicit_seed_seeds_the_generator():
    seed, gen = resolve_seed(7)
    assert seed == 7
    assert torch.equal(
        torch.randn(5, generator=gen), torch.randn(5, generator=torch.Generator().manual_seed(7))
    )


def test_drawn_seed_is_recorded_and_bad_seeds_refused():
    seed, _ = resolve_seed(None)
    assert isinstance(seed, int) and 0 <= seed < 2**32
    with pytest.raises(TypeError, match="seed must be an int or None"):
        resolve_seed(True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an int or None"):
        resolve_seed(1.5)  # type: ignore[arg-type]


def test_resumed_run_keeps_its_saved_seed(tmp_path):
    path = tmp_path / "run.pt"
    fp = {"n": 3}
    save_checkpoint(path, "test/kind", fp, {"seed": 5})
    run = RunCheckpoint(path, "test/kind", fp, resume=True)
    assert resolve_seed(None, run=run)[0] == 5
    assert resolve_seed(5, run=run)[0] == 5
    with pytest.raises(CheckpointError, match="written with seed=5, this call has seed=6"):
        resolve_seed(6, run=run)


def test_checkpoint_options_need_a_path():
    op = dense_op(LAM)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint path"):
        RunContext(op, "x", seed=0, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every needs a checkpoint path"):
        RunContext(op, "x", seed=0, checkpoint_every=3)


def test_context_saves_on_the_way_out_and_removes_the_file_when_done(tmp_path):
    op = dense_op(LAM)
    path = tmp_path / "run.pt"
    state = {"count": 0}

    def loop(ctx: RunContext, fail: bool) -> None:
        with ctx:
            ctx.track(lambda: dict(state))
            for _ in range(3):
                op.matvec(torch.ones(op.shape[0], dtype=op.dtype))
                ctx.dirty()
                state["count"] += 1
                ctx.record({history.ESTIMATE: float(state["count"])})
            if fail:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop(
            RunContext(op, "x", seed=4, checkpoint=path, kind="test/run", checkpoint_every=100),
            True,
        )
    saved = torch.load(path, weights_only=True)
    assert saved["state"]["seed"] == 4 and saved["state"]["count"] == 3
    assert [r[history.ESTIMATE] for r in saved["state"]["recorder"]["history"]] == [1.0, 2.0, 3.0]
    ctx = RunContext(op, "x", seed=None, checkpoint=path, kind="test/run", resume=True)
    assert ctx.seed == 4 and ctx.resumed and ctx.saved is not None
    state["count"] = int(ctx.saved["count"])
    loop(ctx, False)
    assert not path.exists()
    assert ctx.matvecs == 6 and [r[history.MATVECS] for r in ctx.history] == [1, 2, 3, 4, 5, 6]


def test_digest_of_a_tensor_is_the_digest_of_the_sequence_of_it():
    t = torch.arange(6.0).reshape(2, 3)
    assert digest(t) == digest([t]) != digest([t, t])
    assert digest(t) != digest(t.reshape(3, 2))


def test_every_solver_is_in_the_method_literal():
    assert METHODS == tuple(SOLVERS) == typing.get_args(Method)


def _history_keys(result) -> set[str]:
    return {key for record in result.history for key in record}


@pytest.mark.filterwarnings("ignore::hessian_spectra.algorithms.errors.ConvergenceWarning")
def test_algorithms_write_only_named_history_keys():
    names = {getattr(history, name) for name in history.__all__}
    op = dense_op(LAM)
    results = [hs.eigsh(op, 3, method=m, which=w, seed=0) for m in METHODS for w in ("LA", "BE")]
    results.append(hs.refine(op, results[0].eigenvalues, results[0].eigenvectors))
    results += [
        hs.trace(op, method=m, num_matvecs=12, seed=0) for m in ("hutchinson", "hutch++", "xtrace")
    ]
    results.append(hs.density(op, num_steps=8, num_probes=2, seed=0))
    results += [hs.sketch(op, 6, kind=k, seed=0) for k in ("rademacher", "rangefinder", "nystrom")]
    results.append(hs.sketch(op, 6, kind="rangefinder", power_steps=1, seed=0))
    for res in results:
        assert res.history, res
        assert _history_keys(res) <= names, (type(res).__name__, _history_keys(res) - names)
        assert all(history.MATVECS in r and history.SECONDS in r for r in res.history)
