"""The command line on a HuggingFace model without a wrapper: dict batches, the model's own
loss or --loss module:function, --checkpoint-prefix, analyze --which BE and --blocks."""

from __future__ import annotations

import importlib
import textwrap

import numpy as np
import pytest
import torch

from hessian_spectra.cli import analyses, main, parser
from hessian_spectra.results import load_result
from hessian_spectra.results_blocks import BlockSpectraResult

pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")

FACTORY = textwrap.dedent(
    """
    import torch
    import transformers


    def model():
        config = transformers.GPT2Config(
            n_layer=2, n_embd=8, n_head=2, vocab_size=30, n_positions=12, bos_token_id=0,
            eos_token_id=0, attn_implementation="eager",
        )
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(config)


    def data():
        ids = torch.randint(0, 30, (6, 10), generator=torch.Generator().manual_seed(0))
        return {"input_ids": ids, "labels": ids}


    def batches():
        ids = torch.randint(0, 30, (5, 10), generator=torch.Generator().manual_seed(1))
        labels = ids.clone()
        labels[3:, 7:] = -100  # padding
        return [{"input_ids": ids[:3], "labels": labels[:3]},
                {"input_ids": ids[3:], "labels": labels[3:]}]


    def loss(model, batch):
        return model(**batch).loss
    """
)


@pytest.fixture
def gpt2(tmp_path, monkeypatch):
    (tmp_path / "tiny_gpt2.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "tiny_gpt2"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["--quiet", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hessian-spectra: error: "), err
    return lines[0]


def test_analyze_gpt2_both_ends_and_blocks(gpt2, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys,
        "analyze",
        "--model", f"{gpt2}:model",
        "--data", f"{gpt2}:data",
        "--loss", f"{gpt2}:loss",
        "--what", "eigs,trace",
        "--which", "BE",
        "--blocks", "layers",
        "--k", "4",
        "--tol", "1e-3",
        "--num-matvecs", "12",
        "--trace-method", "hutchinson",
        "--num-steps", "6",
        "--num-probes", "1",
        "--threads", "1",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    top = load_result(out / "eigs.json")
    assert top.which == "BE"
    lam = np.asarray(top.eigenvalues)
    assert lam[0] > 0 > lam[-1]  # the largest, then the most negative
    assert "Both ends: 4 eigenvalues" in stdout
    blocks = BlockSpectraResult.from_json(out / "blocks.json")
    assert list(blocks.blocks) == ["embeddings", "transformer.h.0", "transformer.h.1", "head"]
    assert abs(sum(blocks.block_traces.values()) - blocks.trace) <= 1e-6 * abs(blocks.trace)
    report = (out / "report.html").read_text()
    assert "Per-block spectra" in report and "transformer.h.1" in report
    assert "Both ends: k eigenpairs (Lanczos)" in report
    assert "Jensen-Shannon" in report
    assert (out / "blocks.png").exists()
    # a factory's model is not said to be at its initialization
    assert "initialization" not in report and "initialization" not in err
    assert f"as {gpt2}:model returned it (no --checkpoint)" in report
    assert top.settings["operator"]["n"] == sum(int(v) for v in blocks.block_sizes.values())


def test_gpt2_model_own_loss_by_default_on_padded_dict_batches(gpt2, tmp_path, capsys) -> None:
    code, _, err = _run(
        capsys,
        "trace",
        "--model", f"{gpt2}:model",
        "--data", f"{gpt2}:batches",
        "--num-matvecs", "4",
        "--trace-method", "hutchinson",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 0, err
    tr = load_result(tmp_path / "o" / "trace.json")
    assert np.isfinite(tr.estimate) and tr.num_matvecs == 4
    assert "initialization" not in err


def test_checkpoint_prefix(gpt2, tmp_path, capsys, monkeypatch) -> None:
    trained = importlib.import_module(gpt2).model()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(1.5)
    state = {f"model.{k}": v for k, v in trained.state_dict().items()}
    state["criterion.weight"] = torch.ones(3)  # a training wrapper's own entry: dropped
    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": state}, ckpt)
    common = [
        "--model", f"{gpt2}:model", "--data", f"{gpt2}:data", "--loss", f"{gpt2}:loss",
        "--checkpoint", str(ckpt),
    ]  # fmt: skip
    code, _, err = _run(capsys, "trace", *common, "--out", str(tmp_path / "a"))
    assert code == 2
    assert "--checkpoint-prefix maps a prefix of its keys" in _one_line(err)
    code, _, err = _run(
        capsys, "trace", *common, "--checkpoint-prefix", "encoder.", "--out", str(tmp_path / "b")
    )
    assert code == 2
    assert "no key of checkpoint" in _one_line(err) and "starts with 'encoder.'" in err
    seen = {}
    real = analyses.trace

    def spy(op, **kw):
        seen["weight"] = op.model.transformer.wte.weight.detach().clone()
        return real(op, **kw)

    monkeypatch.setattr(analyses, "trace", spy)
    code, _, err = _run(
        capsys,
        "trace",
        *common,
        "--checkpoint-prefix", "model.",
        "--num-matvecs", "4",
        "--trace-method", "hutchinson",
        "--out", str(tmp_path / "c"),
    )  # fmt: skip
    assert code == 0, err
    assert torch.equal(seen["weight"], trained.transformer.wte.weight.detach())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eigs", "--threads", "0"], "--threads must be a positive integer, got 0"),
        (["analyze", "--loss", "hinge"], "--loss 'hinge': use cross-entropy, mse, model or"),
        (["trace", "--checkpoint-prefix", "model."], "--checkpoint-prefix maps the keys of a"),
        (
            ["trace", "--checkpoint", "x.pt", "--checkpoint-prefix", "=a."],
            "--checkpoint-prefix '=a.': give the prefix to strip",
        ),
        (["eigs", "--loss", "no_such_module_xyz:fn"], "cannot import module 'no_such_module_xyz'"),
    ],
)
def test_bad_new_options_refused_in_one_line(argv, message, capsys, tmp_path) -> None:
    code, out, err = _run(capsys, *argv, "--out", str(tmp_path / "o"))
    assert code == 2
    assert message in _one_line(err)
    assert not (tmp_path / "o" / "report.html").exists()


def test_blocks_choice_and_which_choice_refused(capsys) -> None:
    assert main(["analyze", "--blocks", "rows"]) == 2
    assert "invalid choice: 'rows'" in capsys.readouterr().err
    assert main(["analyze", "--which", "XX"]) == 2


def test_dict_batches_with_a_criterion_are_refused_before_work(gpt2, tmp_path, capsys) -> None:
    code, _, err = _run(
        capsys,
        "eigs",
        "--model", f"{gpt2}:model",
        "--data", f"{gpt2}:data",
        "--loss", "cross-entropy",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 2
    line = _one_line(err)
    assert "does not fit data" in line and "use --loss model" in line


def test_threads_set_for_the_run_and_restored(capsys, monkeypatch) -> None:
    seen = []

    def fake(args):
        seen.append(torch.get_num_threads())
        return 0

    before = torch.get_num_threads()
    monkeypatch.setattr(parser, "cmd_trace", fake)  # bound when the parser is built
    assert main(["trace", "--threads", "1"]) == 0
    assert seen == [1]
    assert torch.get_num_threads() == before
