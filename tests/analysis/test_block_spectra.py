"""Per-block spectra: traces that sum to the whole, eigenvalues of the parameter-subset
operator, Jensen-Shannon distances, the record's JSON round trip, and a tiny GPT-2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import hessian_spectra as hs
from hessian_spectra.analysis.blocks import block_param_names, js_distance, js_distances
from hessian_spectra.analysis.layers import layer_traces
from hessian_spectra.operators import DenseOperator, HessianOperator
from hessian_spectra.results_blocks import BlockSpectraResult


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)
    ).double()


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 4, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (48,), generator=g)


def _dense(op: HessianOperator) -> np.ndarray:
    H = op.matmat(torch.eye(op.shape[0], dtype=op.dtype)).numpy()
    assert np.abs(H - H.T).max() < 1e-10 * np.abs(H).max()
    return (H + H.T) / 2


@pytest.fixture(scope="module")
def result() -> BlockSpectraResult:
    return hs.block_spectra(
        _model(),
        nn.CrossEntropyLoss(),
        _data(),
        blocks="layers",
        k=3,
        tol=1e-10,
        num_matvecs=200,
        num_steps=20,
        num_probes=2,
        seed=0,
    )


def test_block_traces_sum_to_the_whole_and_match_the_dense_blocks(result) -> None:
    assert list(result.blocks) == ["0", "2", "4"]
    # Hutchinson: the block traces come from the same probes, so they sum exactly
    total = sum(result.block_traces.values())
    assert abs(total - result.trace) <= 1e-10 * abs(result.trace)
    # each block trace is within 4 of its standard errors of the exact trace of its block
    op = HessianOperator(_model(), nn.CrossEntropyLoss(), _data())
    H = _dense(op)
    idx = op.blocks_by("layers")
    for name in result.blocks:
        exact = float(np.trace(H[idx[name], idx[name]]))
        se = result.block_trace_stderrs[name]
        assert se > 0
        assert abs(result.block_traces[name] - exact) <= 4 * se, name
    assert abs(result.trace - float(np.trace(H))) <= 4 * result.trace_stderr
    assert result.block_sizes == {"0": 30, "2": 42, "4": 21}


def test_block_eigenvalues_are_those_of_the_parameter_subset_operator(result) -> None:
    model, data = _model(), _data()
    op = HessianOperator(model, nn.CrossEntropyLoss(), data)
    _, members = block_param_names(op, "layers")
    H = _dense(op)
    idx = op.blocks_by("layers")
    for name, names in members.items():
        sub = HessianOperator(model, nn.CrossEntropyLoss(), data, params=names)
        lam = np.linalg.eigvalsh(_dense(sub))[::-1][:3]
        # the subset operator is the diagonal block of the full Hessian
        block = H[idx[name], idx[name]]
        assert np.allclose(np.linalg.eigvalsh(block)[::-1][:3], lam, rtol=1e-10, atol=1e-12)
        got = result.block_eigenvalues[name]
        assert np.allclose(got, lam, rtol=1e-8, atol=1e-10 * abs(lam[0])), name
        assert result.block_converged[name]


def test_js_distance_zero_on_equal_densities_and_symmetric(result) -> None:
    rng = np.random.default_rng(0)
    p, q = rng.random(50), rng.random(50)
    assert js_distance(p, p) == 0.0
    assert js_distance(p, 3 * p) < 1e-7  # normalized first
    assert js_distance(p, q) == js_distance(q, p)
    assert 0 < js_distance(p, q) < 1
    assert js_distance(np.r_[1.0, 0.0], np.r_[0.0, 1.0]) == pytest.approx(1.0)
    den = result.density("2")
    d, grid = js_distances({"a": den, "b": den, "c": result.density("0")}, points=200)
    assert grid.shape == (200,)
    assert d[0, 1] == 0.0 and d[1, 0] == 0.0
    assert np.array_equal(d, d.T) and np.all(np.diag(d) == 0)
    D = np.asarray(result.js_distance)
    assert D.shape == (3, 3) and np.array_equal(D, D.T) and np.all(np.diag(D) == 0)
    assert np.all((D[~np.eye(3, dtype=bool)] > 0) & (D[~np.eye(3, dtype=bool)] <= 1))
    assert result.distance("0", "4") == D[0, 2]


def test_json_round_trip(result, tmp_path) -> None:
    path = result.to_json(tmp_path / "blocks.json")
    back = BlockSpectraResult.from_json(path)
    again = hs.load_result(path)
    assert isinstance(again, BlockSpectraResult)
    assert list(back.blocks) == list(result.blocks)
    assert back.block_traces == result.block_traces
    assert np.array_equal(back.js_distance, result.js_distance)
    for name in result.blocks:
        assert np.array_equal(back.block_eigenvalues[name], result.block_eigenvalues[name])
        grid = np.linspace(-1, 1, 7)
        assert np.array_equal(back.density(name).pdf(grid), result.density(name).pdf(grid))


def test_trace_accepts_a_grouping_on_model_operators_only() -> None:
    op = HessianOperator(_model(), nn.CrossEntropyLoss(), _data())
    by_name = hs.trace(op, method="hutchinson", num_matvecs=20, seed=0, blocks="modules")
    by_map = hs.trace(
        op, method="hutchinson", num_matvecs=20, seed=0, blocks=op.blocks_by("modules")
    )
    assert by_name.block_estimates == by_map.block_estimates
    assert list(by_name.block_estimates) == ["mlp"]
    with pytest.raises(TypeError, match="needs a model operator"):
        hs.trace(DenseOperator(torch.eye(5)), num_matvecs=10, blocks="layers")


def test_layer_traces_by_grouping() -> None:
    tr = layer_traces(
        _model(), nn.CrossEntropyLoss(), _data(), blocks="layers", num_matvecs=10, seed=0
    )
    assert list(tr.block_estimates) == ["0", "2", "4"]
    with pytest.raises(ValueError, match="depth or blocks"):
        layer_traces(_model(), nn.CrossEntropyLoss(), _data(), blocks="layers", depth=1)


def test_custom_blocks_of_whole_parameters_only() -> None:
    op = HessianOperator(_model(), nn.CrossEntropyLoss(), _data())
    grouping, members = block_param_names(op, {"first": slice(0, 30), "rest": slice(30, 93)})
    assert grouping == "custom"
    assert members["first"] == ["0.weight", "0.bias"]
    with pytest.raises(ValueError, match="split between blocks"):
        block_param_names(op, {"part": slice(0, 10), "rest": slice(10, 93)})
    with pytest.raises(ValueError, match="overlaps"):
        block_param_names(op, {"a": slice(0, 30), "b": slice(24, 93)})


def test_tiny_gpt2_block_spectra() -> None:
    transformers = pytest.importorskip("transformers", reason="the [hf] extra is not installed")
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=8,
        n_head=2,
        vocab_size=30,
        n_positions=12,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    ids = torch.randint(0, 30, (3, 10), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}

    def loss_fn(m: nn.Module, b: dict) -> torch.Tensor:
        return m(**b).loss

    res = hs.block_spectra(
        model,
        data=batch,
        loss_fn=loss_fn,
        blocks="layers",
        k=1,
        num_matvecs=10,
        num_steps=6,
        num_probes=1,
        seed=0,
    )
    assert list(res.blocks) == ["embeddings", "transformer.h.0", "transformer.h.1", "head"]
    total = sum(res.block_traces.values())
    assert abs(total - res.trace) <= 1e-10 * abs(res.trace)
    sub = HessianOperator(model, data=batch, loss_fn=loss_fn, params=r"^transformer\.h\.1\.")
    lam = hs.eigsh(sub, 1, tol=1e-10, seed=1).eigenvalues[0]
    assert res.block_eigenvalues["transformer.h.1"][0] == pytest.approx(lam, rel=1e-3)


def test_hs_load_result_reads_block_records_in_a_fresh_process(result, tmp_path) -> None:
    path = result.to_json(tmp_path / "blocks.json")
    code = (
        "import sys, hessian_spectra as hs; r = hs.load_result(sys.argv[1]); "
        "print(type(r).__name__, list(r.blocks))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "BlockSpectraResult ['0', '2', '4']"
