"""The HuggingFace Trainer callback: the model's own loss, TensorBoard scalars, an unchanged run."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

transformers = pytest.importorskip("transformers", reason="the [hf] extra is not installed")
pytest.importorskip("accelerate", reason="the [hf] extra is not installed (accelerate)")
pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")

import hessian_spectra as hs  # noqa: E402
from hessian_spectra.integrations.tensorboard import read_scalars  # noqa: E402
from hessian_spectra.integrations.transformers import SpectrumCallback, model_loss  # noqa: E402
from hessian_spectra.results import MonitorKeys as Key  # noqa: E402

VOCAB, LENGTH = 40, 8


def tiny_gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=LENGTH,
        n_embd=16,
        n_layer=1,
        n_head=2,
        resid_pdrop=0.1,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def examples(n: int = 32, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    labels = ids.clone()
    labels[:, :2] = -100  # a prompt that is not scored
    return [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels, strict=True)]


def probe() -> dict[str, torch.Tensor]:
    batch = examples(8, seed=1)
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def train(tmp_path, callbacks, monkeypatch, steps: int = 6):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    np.random.seed(0)
    random.seed(0)
    model = tiny_gpt2()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        logging_steps=2,
        report_to=["tensorboard"],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=examples(), callbacks=callbacks
    )
    trainer.train()
    state = {
        "params": [p.detach().clone() for p in model.parameters()],
        "optimizer": trainer.optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
        "training": [m.training for m in model.modules()],
    }
    return trainer, model, state


def test_model_loss_counts_the_scored_tokens_after_the_shift():
    model = tiny_gpt2().eval()
    batch = probe()
    loss, count = model_loss(model, batch)
    assert count == 8 * (LENGTH - 2)  # the prompt is -100; the first label is never scored
    assert torch.isclose(loss, model(**batch).loss)
    full = {"input_ids": batch["input_ids"], "labels": batch["input_ids"]}
    loss, count = model_loss(model, full)
    assert count == 8 * (LENGTH - 1)  # every token predicts the next: LENGTH - 1 per sequence
    logits = model(input_ids=full["input_ids"]).logits[:, :-1]
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), full["labels"][:, 1:].reshape(-1), reduction="sum"
    )
    assert torch.isclose(loss * count, per_token)  # the mean is over exactly `count` tokens
    with pytest.raises(TypeError, match="dict batches"):
        model_loss(model, (batch["input_ids"], batch["labels"]))
    with pytest.raises(ValueError, match="no loss"):
        model_loss(model, {"input_ids": batch["input_ids"]})


def test_scalars_in_the_trainers_tensorboard_folder_and_log_history(tmp_path, monkeypatch):
    cb = SpectrumCallback(
        probe(), every_n_steps=2, k=2, trace_matvecs=6, max_matvecs=16, max_overhead=None
    )
    trainer, model, _ = train(tmp_path, [cb], monkeypatch, steps=4)
    scalars = read_scalars(tmp_path / "tb")
    for tag in ("hessian/lambda_1", "hessian/lambda_2", "hessian/trace"):
        assert [s for s, _ in scalars[tag]] == [2, 4], tag
    assert [s for s, _ in scalars["hessian/preconditioned_lambda_1"]] == [2, 4]  # AdamW
    assert scalars["hessian/threshold"][0][1] == pytest.approx(38_000.0)
    assert "train/loss" in scalars  # the trainer's own TensorBoard callback, same folder
    logged = [e for e in trainer.state.log_history if "hessian/lambda_1" in e]
    assert [e["step"] for e in logged] == [2, 4]
    recs = cb.result().records
    assert [r[Key.STEP] for r in recs] == [2, 4]
    # the last measurement is the top eigenvalue of the model's own (token-weighted) loss
    model.eval()
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no second derivative
        H = hs.HessianOperator(model, data=probe(), loss_fn=model_loss)
        top = hs.eigsh(H, 1, seed=0, max_matvecs=16)
    assert recs[-1][Key.EIGENVALUES][0] == pytest.approx(float(top.eigenvalues[0]), rel=1e-2)


def test_the_run_is_the_same_with_and_without_the_callback(tmp_path, monkeypatch):
    """Dropout draws masks from the global RNG: a measurement that touched it would show."""
    cb = SpectrumCallback(
        probe(), every_n_steps=2, k=1, trace=False, max_matvecs=8, max_overhead=None
    )
    _, _, with_cb = train(tmp_path / "a", [cb], monkeypatch, steps=4)
    _, _, without = train(tmp_path / "b", [], monkeypatch, steps=4)
    assert len(cb.result().records) == 2
    for a, b in zip(with_cb["params"], without["params"], strict=True):
        assert torch.equal(a, b)
    for key, st in with_cb["optimizer"]["state"].items():
        for name, value in st.items():
            other = without["optimizer"]["state"][key][name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other))
    assert torch.equal(with_cb["torch_rng"], without["torch_rng"])
    assert np.array_equal(with_cb["numpy_rng"], without["numpy_rng"])
    assert with_cb["python_rng"] == without["python_rng"]
    assert with_cb["training"] == without["training"]
