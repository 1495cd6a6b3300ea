"""The model's own loss (``model(**batch).loss``) and the batch weight rules, weight_fn included."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hessian_spectra.operators.criteria import is_causal_lm, label_count, loss_identity
from hessian_spectra.operators.fisher import FisherOperator
from hessian_spectra.operators.ggn import GGNOperator
from hessian_spectra.operators.hessian import HessianOperator
from hessian_spectra.operators.model import ModelLoss, prepare_batch

CE = nn.CrossEntropyLoss()


class TinyLM(nn.Module):
    """A language model returning its own loss, HuggingFace style: ``{"loss": ..., "logits": ...}``.

    ``causal``: the loss compares the prediction at t with the label at t + 1
    (and the class name says so, as HuggingFace's causal LMs do).
    """

    def __init__(self, vocab: int = 7, width: int = 3, causal: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.out = nn.Linear(width, vocab)
        self.causal = causal

    def forward(self, input_ids, labels=None, attention_mask=None):
        h = torch.tanh(self.mix(self.emb(input_ids)))
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1).to(h.dtype)
        logits = self.out(h)
        loss = None
        if labels is not None:
            if self.causal:
                logits_, labels_ = logits[:, :-1], labels[:, 1:]
            else:
                logits_, labels_ = logits, labels
            loss = F.cross_entropy(logits_.reshape(-1, logits.shape[-1]), labels_.reshape(-1))
        return {"loss": loss, "logits": logits}


class TinyForCausalLM(TinyLM):
    pass


def _lm_batches(gen: torch.Generator, sizes=((3, 6), (2, 4), (4, 5))) -> list[dict]:
    """Batches of unequal size and length, with padding (-100 labels, zero mask)."""
    batches = []
    for b, t in sizes:
        ids = torch.randint(0, 7, (b, t), generator=gen)
        labels = ids.clone()
        mask = torch.ones(b, t, dtype=torch.long)
        labels[0, -2:] = -100  # padding at the end of the first sequence
        mask[0, -2:] = 0
        batches.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    return batches


def _token_weighted_hessian(model: nn.Module, batches: list[dict], causal: bool) -> torch.Tensor:
    """The dense Hessian of the mean loss over every counted token of every batch."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def total(flat: torch.Tensor) -> torch.Tensor:
        params, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = int(torch.Size(shape).numel())
            params[name] = flat[start : start + size].view(shape)
            start += size
        loss_sum, count = flat.new_zeros(()), 0
        for batch in batches:
            logits = torch.func.functional_call(model, params, (batch["input_ids"],))["logits"]
            labels = batch["labels"]
            if causal:
                logits, labels = logits[:, :-1], labels[:, 1:]
            loss_sum = loss_sum + F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"
            )
            count += int((labels != -100).sum())
        return loss_sum / count

    return torch.autograd.functional.hessian(total, theta)


# ----------------------------------------------------------- the rules


def test_causal_lm_rule():
    assert is_causal_lm(TinyForCausalLM())
    assert not is_causal_lm(TinyLM())
    lm_head = type("GPT2LMHeadModel", (nn.Module,), {})()
    assert is_causal_lm(lm_head)
    masked = type("BertForMaskedLM", (nn.Module,), {})()
    assert not is_causal_lm(masked)
    decoder = nn.Module()
    decoder.config = SimpleNamespace(is_decoder=True, is_encoder_decoder=False)  # type: ignore[assignment]
    assert is_causal_lm(decoder)
    seq2seq = nn.Module()
    seq2seq.config = SimpleNamespace(is_decoder=True, is_encoder_decoder=True)  # type: ignore[assignment]
    assert not is_causal_lm(seq2seq)
    by_architecture = nn.Module()
    by_architecture.config = SimpleNamespace(architectures=["LlamaForCausalLM"])  # type: ignore[assignment]
    assert is_causal_lm(by_architecture)
    typed = nn.Module()
    typed.loss_type = "ForCausalLM"  # type: ignore[assignment]
    assert is_causal_lm(typed)


def test_label_count_shifts_for_causal_lms_and_skips_ignored():
    labels = torch.tensor([[1, 2, 3, -100], [4, -100, 5, 6]])
    assert label_count(labels, causal=False) == 6.0
    assert label_count(labels, causal=True) == 4.0  # [2, 3, -100] and [-100, 5, 6]
    assert label_count(torch.zeros(5, 2), causal=False) == 10.0  # regression: every element


def test_own_loss_weights_are_the_counted_tokens():
    model = TinyForCausalLM().double()
    batches = _lm_batches(torch.Generator().manual_seed(0))
    problem = ModelLoss(model, data=batches)
    assert problem.causal
    weights = [problem.loss(b)[1] for b in problem.batches()]
    expected = [float((b["labels"][:, 1:] != -100).sum()) for b in batches]
    assert weights == expected == [13.0, 4.0, 14.0]
    masked = ModelLoss(TinyLM(causal=False).double(), data=batches)
    assert not masked.causal
    assert [masked.loss(b)[1] for b in masked.batches()] == [16.0, 6.0, 18.0]
    assert loss_identity(None, None) == "the model's own loss, model(**batch).loss"


@pytest.mark.parametrize("causal", [True, False])
def test_full_data_hessian_is_token_weighted(causal):
    torch.manual_seed(1)
    model = (TinyForCausalLM() if causal else TinyLM(causal=False)).double()
    batches = _lm_batches(torch.Generator().manual_seed(2))
    op = HessianOperator(model, data=batches)
    H = op.matmat(torch.eye(op.shape[0], dtype=torch.float64))
    reference = _token_weighted_hessian(model, batches, causal)
    assert torch.allclose(reference, reference.T, rtol=0, atol=1e-12)
    assert float((H - reference).norm() / reference.norm()) < 1e-10
    # the per-sequence mean (batch size weights) is a different matrix
    by_rows = HessianOperator(model, data=batches, weight_fn=lambda b: b["input_ids"].shape[0])
    H_rows = by_rows.matmat(torch.eye(op.shape[0], dtype=torch.float64))
    assert float((H_rows - reference).norm() / reference.norm()) > 1e-3


def test_weight_fn_overrides_criterion_and_loss_fn_counts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(3)
    batches = [
        (
            torch.randn(n, 3, generator=g, dtype=torch.float64),
            torch.randint(0, 2, (n,), generator=g),
        )
        for n in (5, 2)
    ]
    fixed = ModelLoss(model, CE, batches, weight_fn=lambda b: 1.0)
    assert [fixed.loss(b)[1] for b in fixed.batches()] == [1.0, 1.0]
    counted = ModelLoss(
        model, data=batches, loss_fn=lambda m, b: (CE(m(b[0]), b[1]), 99), weight_fn=lambda b: 7
    )
    assert [counted.loss(b)[1] for b in counted.batches()] == [7.0, 7.0]
    # equal weights: the full-data Hessian is the plain mean of the two batch Hessians
    op = HessianOperator(model, CE, batches, weight_fn=lambda b: 1.0)
    n = op.shape[0]
    H = op.matmat(torch.eye(n, dtype=torch.float64))
    Hs = [HessianOperator(model, CE, b).matmat(torch.eye(n, dtype=torch.float64)) for b in batches]
    assert torch.allclose(H, (Hs[0] + Hs[1]) / 2, rtol=0, atol=1e-12)
    with pytest.raises(TypeError, match="weight_fn must be callable"):
        ModelLoss(model, CE, batches, weight_fn=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_fn returned 0.0"):
        ModelLoss(model, CE, batches, weight_fn=lambda b: 0).loss(batches[0])


# ----------------------------------------------------------- refusals and batches


def test_output_without_loss_is_refused_saying_what_to_pass():
    model = TinyForCausalLM().double()
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long)}  # no labels: no loss
    op_problem = ModelLoss(model, data=batch)
    with pytest.raises(ValueError, match=r"returned dict with no loss.*'labels'.*loss_fn="):
        op_problem.loss(next(op_problem.batches()))
    with pytest.raises(ValueError, match=r"exactly one.*neither.*not dicts"):
        HessianOperator(model, data=[(torch.zeros(2, 3), torch.zeros(2))])
    with pytest.raises(ValueError, match="exactly one.*both"):
        ModelLoss(model, CE, batch, loss_fn=lambda m, b: 0)


def test_model_output_attribute_loss_is_used():
    class OutputForCausalLM(TinyForCausalLM):
        def forward(self, **batch):
            out = super().forward(**batch)
            return SimpleNamespace(loss=out["loss"], logits=out["logits"])

    model = OutputForCausalLM().double()
    batches = _lm_batches(torch.Generator().manual_seed(4))
    problem = ModelLoss(model, data=batches)
    loss, weight = problem.loss(next(problem.batches()))
    assert loss.ndim == 0 and weight == 13.0


def test_nested_dict_batches_keep_integer_dtypes():
    batch = {
        "input_ids": torch.zeros(2, 3, dtype=torch.int32),
        "extra": {"pixel_values": torch.ones(2, 4, dtype=torch.float32), "ids": torch.ones(2)},
        "labels": torch.zeros(2, 3, dtype=torch.long),
    }
    out = prepare_batch(batch, torch.device("cpu"), torch.float64)
    assert out["input_ids"].dtype == torch.int32 and out["labels"].dtype == torch.long
    assert out["extra"]["pixel_values"].dtype == torch.float64


def test_batch_encoding_is_a_dict_batch():
    transformers = pytest.importorskip(
        "transformers", reason="BatchEncoding comes from transformers"
    )
    enc = transformers.BatchEncoding(
        {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[1, 2, 3]])}
    )
    model = TinyForCausalLM().double()
    problem = ModelLoss(model, data=[enc, enc])
    seen = list(problem.batches())
    assert seen[0]["input_ids"].dtype == torch.long
    assert [problem.loss(b)[1] for b in seen] == [2.0, 2.0]


def test_coarser_loss_dtype_warns_once():
    class Float32Loss(TinyForCausalLM):
        def forward(self, **batch):
            out = super().forward(**batch)
            return {"loss": out["loss"].float()}

    model = Float32Loss().double()
    batches = _lm_batches(torch.Generator().manual_seed(5))
    problem = ModelLoss(model, data=batches)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for b in problem.batches():
            problem.loss(b)
    messages = [str(w.message) for w in caught if "computes its loss in" in str(w.message)]
    assert len(messages) == 1 and "torch.float32" in messages[0]


def test_batch_without_counted_labels_is_refused():
    model = TinyForCausalLM().double()
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long)}
    batch["labels"] = torch.full((2, 3), -100)
    problem = ModelLoss(model, data=batch)
    with pytest.raises(ValueError, match="no label other than -100"):
        problem.loss(next(problem.batches()))


def test_ggn_and_fisher_refuse_a_models_own_loss_saying_what_to_use():
    model = TinyForCausalLM().double()
    batches = _lm_batches(torch.Generator().manual_seed(6))
    for operator in (GGNOperator, FisherOperator):
        with pytest.raises(ValueError, match=r"own loss.*use HessianOperator\(model, data="):
            operator(model, data=batches)
