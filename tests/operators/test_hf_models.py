"""The models people analyse, with zero glue: a GPT-2, a BERT masked LM, a MobileNetV3-style
network and an LSTM classifier, each against a double-backward reference written here.

The transformers are tiny (2 layers of width 16 for GPT-2, built from configs, no
download), trained a few steps on real text available offline (Python's own
source, character-level), and float64 throughout. HuggingFace's losses cast the
logits to float32 (``logits.float()``), so the LMs here get their loss through
``model.loss_function`` set to the same loss without the cast: the model still
computes its own loss, in float64, and the operator is called with no glue.
"""

from __future__ import annotations

import inspect
import json
import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.rnn import pack_padded_sequence

import hessian_spectra as hs
from hessian_spectra.operators.autograd_support import UnsupportedDerivativeError
from hessian_spectra.operators.hessian import HessianOperator

transformers = pytest.importorskip(
    "transformers", reason="the HuggingFace models need transformers (the [hf] extra)"
)

RTOL_PRODUCT = 1e-10
RTOL_EIGEN = 1e-8


# ----------------------------------------------------------- references


def _flat(model: nn.Module, names: list[str]) -> tuple[torch.Tensor, list[torch.Size]]:
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1) for n in names]), [
        params[n].shape for n in names
    ]


def _as_dict(flat: torch.Tensor, names: list[str], shapes: list[torch.Size]) -> dict:
    out, start = {}, 0
    for name, shape in zip(names, shapes, strict=True):
        size = int(torch.Size(shape).numel())
        out[name] = flat[start : start + size].view(shape)
        start += size
    return out


def reference_hvp(total, theta: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """H V of the scalar function ``total`` at theta by double backward, column by column."""
    x = theta.clone().requires_grad_(True)
    with sdpa_kernel(SDPBackend.MATH):
        (g,) = torch.autograd.grad(total(x), x, create_graph=True)
        cols = [torch.autograd.grad(g, x, v, retain_graph=True)[0] for v in V.T]
    return torch.stack(cols, 1)


def reference_operator(total, theta: torch.Tensor) -> sla.LinearOperator:
    """The reference Hessian as a SciPy operator for ARPACK (one double backward per product).

    Matrix-free: the same double-backward reference, without forming n columns
    (ARPACK needs a few dozen products where the dense matrix needs n).
    """
    x = theta.clone().requires_grad_(True)
    with sdpa_kernel(SDPBackend.MATH):
        (g,) = torch.autograd.grad(total(x), x, create_graph=True)

    def matvec(v: np.ndarray) -> np.ndarray:
        w = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1))
        return torch.autograd.grad(g, x, w, retain_graph=True)[0].numpy()

    n = theta.numel()
    return sla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)


def check_products(op: HessianOperator, total, theta: torch.Tensor, seed: int = 0) -> None:
    V = torch.randn(op.shape[0], 3, generator=torch.Generator().manual_seed(seed)).double()
    got = op.matmat(V)
    want = reference_hvp(total, theta, V)
    err = float((got - want).norm() / want.norm())
    assert err < RTOL_PRODUCT, err


def check_top_eigenvalues(op: HessianOperator, total, theta: torch.Tensor, k: int = 3) -> None:
    top = hs.eigsh(op, k=k, seed=0, tol=1e-11, max_matvecs=4 * op.shape[0])
    v0 = np.ones(op.shape[0])
    reference = reference_operator(total, theta)
    arpack = np.sort(sla.eigsh(reference, k=k, which="LA", tol=1e-14, v0=v0)[0])[::-1]
    ours = np.asarray(top.eigenvalues)
    assert np.abs(ours - arpack).max() <= RTOL_EIGEN * np.abs(arpack).max(), (ours, arpack)


# ----------------------------------------------------------- text, char-level


def _text_ids() -> tuple[torch.Tensor, int]:
    """json's source, lower-cased, as ids over a 28-symbol alphabet (a-z, space, other)."""
    text = inspect.getsource(json).lower()
    alphabet = "abcdefghijklmnopqrstuvwxyz "
    ids = [alphabet.index(c) if c in alphabet else len(alphabet) for c in text]
    return torch.tensor(ids), len(alphabet) + 1


def _causal_loss_float64(logits, labels, vocab_size, **kwargs):
    """HuggingFace's ForCausalLMLoss without its float32 cast."""
    labels = F.pad(labels, (0, 1), value=-100)[..., 1:]
    return F.cross_entropy(logits.reshape(-1, vocab_size), labels.reshape(-1), ignore_index=-100)


def _lm_batches(ids: torch.Tensor, layout, seed: int) -> list[dict]:
    """Batches of unequal size and length; each batch's first sequence right-padded by 3."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for size, length in layout:
        starts = torch.randint(0, len(ids) - length, (size,), generator=g)
        input_ids = torch.stack([ids[s : s + length] for s in starts.tolist()])
        mask = torch.ones_like(input_ids)
        mask[0, -3:] = 0
        labels = input_ids.masked_fill(mask == 0, -100)
        batches.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return batches


@pytest.fixture(scope="module")
def gpt2():
    ids, vocab = _text_ids()
    config = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_inner=16,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = _lm_batches(ids, [(4, 16)] * 12, seed=1)
    for batch in train:  # a few steps on real text
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model = model.double().eval()
    model.loss_function = _causal_loss_float64
    batches = _lm_batches(ids, [(3, 12), (2, 9), (4, 7)], seed=2)
    return model, batches


def _lm_total(model, batches, names, shapes, causal: bool):
    def total(flat):
        params = _as_dict(flat, names, shapes)
        loss_sum, count = flat.new_zeros(()), 0
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = torch.func.functional_call(model, params, (), inputs).logits
            labels = batch["labels"]
            if causal:
                logits, labels = logits[:, :-1], labels[:, 1:]
            loss_sum = loss_sum + F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"
            )
            count += int((labels != -100).sum())
        return loss_sum / count  # every counted token of every batch, equally

    return total


def test_gpt2_products_are_token_weighted(gpt2):
    model, batches = gpt2
    op = HessianOperator(model, data=batches)
    assert op.model_loss.causal
    names = op.param_names
    theta, shapes = _flat(model, names)
    check_products(op, _lm_total(model, batches, names, shapes, causal=True), theta)


def test_gpt2_top_eigenvalues_match_arpack(gpt2):
    model, batches = gpt2
    params = "transformer.h.1.mlp|transformer.ln_f"  # a dense reference of 576 rows
    op = HessianOperator(model, data=batches, params=params)
    names = op.param_names
    theta, shapes = _flat(model, names)
    total = _lm_total(model, batches, names, shapes, causal=True)  # the rest held fixed
    check_products(op, total, theta, seed=1)
    check_top_eigenvalues(op, total, theta)


def test_hf_float32_loss_warns_and_default_attention_fails_without_the_math_kernel(gpt2):
    model, batches = gpt2
    plain = transformers.GPT2LMHeadModel(model.config).double().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        op = HessianOperator(plain, data=batches[:1], check_deterministic=False)
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))
    assert any("computes its loss in torch.float32" in str(w.message) for w in caught)
    # what the math kernel spares users: torch's default attention kernel on the CPU
    x = torch.randn(1, 2, 4, 8, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(
        F.scaled_dot_product_attention(x, x, x).pow(2).sum(), x, create_graph=True
    )
    with pytest.raises(RuntimeError, match="flash_attention.*not implemented"):
        torch.autograd.grad(g.sum(), x)


# ----------------------------------------------------------- BERT, masked LM


def _masked_loss_float64(logits, labels, vocab_size, **kwargs):
    """HuggingFace's ForMaskedLMLoss without its float32 cast."""
    return F.cross_entropy(logits.reshape(-1, vocab_size), labels.reshape(-1), ignore_index=-100)


@pytest.fixture(scope="module")
def bert():
    ids, vocab = _text_ids()
    config = transformers.BertConfig(
        vocab_size=vocab + 1,  # the last id is [MASK]
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).double().eval()
    model.loss_function = _masked_loss_float64
    g = torch.Generator().manual_seed(3)
    batches = _lm_batches(ids, [(3, 12), (2, 9), (4, 7)], seed=4)
    for batch in batches:  # labels only where masked (about 30%), the input there is [MASK]
        masked = (torch.rand(batch["labels"].shape, generator=g) < 0.3) & (batch["labels"] >= 0)
        masked[:, 1] = True
        batch["labels"] = batch["input_ids"].masked_fill(~masked, -100)
        batch["input_ids"] = batch["input_ids"].masked_fill(masked, vocab)
    return model, batches


def test_bert_masked_lm_products_and_eigenvalues(bert):
    model, batches = bert
    op = HessianOperator(model, data=batches)
    assert not op.model_loss.causal
    names = op.param_names
    theta, shapes = _flat(model, names)
    check_products(op, _lm_total(model, batches, names, shapes, causal=False), theta)
    params = "encoder.layer.0.output|cls"  # the last MLP and the head: a dense reference
    sub = HessianOperator(model, data=batches, params=params)
    names = sub.param_names
    theta, shapes = _flat(model, names)
    total = _lm_total(model, batches, names, shapes, causal=False)
    check_top_eigenvalues(sub, total, theta)


# ----------------------------------------------------------- MobileNetV3-style


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, hidden: int, gate: nn.Module) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = gate

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class HardSigmoidMath(nn.Module):
    """nn.Hardsigmoid's function from twice-differentiable operations (the reference)."""

    def forward(self, x):
        return torch.clamp(x / 6 + 0.5, 0.0, 1.0)


def mobilenet_v3_style(gate: type[nn.Module] = nn.Hardsigmoid) -> nn.Module:
    """Stem conv-BN-Hardswish, an inverted residual (expand, depthwise, SE, project), head."""
    torch.manual_seed(0)

    class InvertedResidual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.expand = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8))
            self.act1 = nn.Hardswish()
            self.depthwise = nn.Sequential(
                nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
            )
            self.act2 = nn.Hardswish()
            self.se = SqueezeExcite(8, 4, gate())
            self.project = nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4))

        def forward(self, x):
            y = self.act2(self.depthwise(self.act1(self.expand(x))))
            return x + self.project(self.se(y))

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.Hardswish(),
        InvertedResidual(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 8),
        nn.Hardswish(),
        nn.Linear(8, 3),
    )
    model.train()
    with torch.no_grad():  # running statistics that are not the defaults
        for _ in range(3):
            model(torch.randn(16, 3, 8, 8) * 2 + 0.5)
    return model.double().eval()


def _image_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [
        (
            torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=g),
        )
        for n in (6, 3)
    ]


def _criterion_total(model, batches, names, shapes, call=None):
    call = call or (lambda m, params, x: torch.func.functional_call(m, params, (x,)))

    def total(flat):
        params = _as_dict(flat, names, shapes)
        loss_sum = flat.new_zeros(())
        for x, y in batches:
            loss_sum = loss_sum + F.cross_entropy(call(model, params, x), y, reduction="sum")
        return loss_sum / sum(len(y) for _, y in batches)

    return total


def test_mobilenet_hardsigmoid_is_named_and_finite_differences_agree():
    model = mobilenet_v3_style()
    batches = _image_batches()
    CE = nn.CrossEntropyLoss()
    with pytest.raises(UnsupportedDerivativeError) as caught:
        HessianOperator(model, CE, batches).matvec(
            torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
        )
    message = str(caught.value)
    assert "aten::hardsigmoid_backward" in message
    assert "3.se.gate (Hardsigmoid)" in message
    assert "hvp_mode='finite_difference'" in message
    assert caught.value.modules == ["3.se.gate (Hardsigmoid)"]
    with pytest.raises(UnsupportedDerivativeError, match="forward-mode.*3.se.gate"):
        HessianOperator(model, CE, batches, hvp_mode="forward_over_reverse").matvec(
            torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
        )

    # the reference: the same network with the gate written in differentiable operations
    reference_model = mobilenet_v3_style(HardSigmoidMath)
    reference_model.load_state_dict(model.state_dict())
    exact = HessianOperator(reference_model, CE, batches)
    names = exact.param_names
    theta, shapes = _flat(reference_model, names)
    total = _criterion_total(reference_model, batches, names, shapes)
    check_products(exact, total, theta)
    check_top_eigenvalues(exact, total, theta)

    before = [p.detach().clone() for p in model.parameters()]
    fd = HessianOperator(model, CE, batches, hvp_mode="finite_difference")
    V = torch.randn(fd.shape[0], 4, generator=torch.Generator().manual_seed(6)).double()
    got, want = fd.matmat(V), reference_hvp(total, theta, V)
    errors = (got - want).norm(dim=0) / want.norm(dim=0)
    estimate = fd.fd_error_estimate
    assert float(errors.max()) < 1e-5, errors
    assert float(errors.max()) <= estimate, (errors, estimate)
    assert estimate < 1e-4
    settings = fd.settings
    assert settings["fd_error_estimate"] == estimate and settings["fd_truncation_estimate"] > 0
    # bit for bit the parameters as they were
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


# ----------------------------------------------------------- LSTM, packed sequences


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(12, 5)
        self.lstm = nn.LSTM(5, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, inputs):
        tokens, lengths = inputs
        packed = pack_padded_sequence(
            self.emb(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.lstm(packed)
        return self.head(h[-1])


def test_lstm_packed_sequences_products_and_eigenvalues():
    model = LSTMClassifier().double().eval()
    g = torch.Generator().manual_seed(7)
    batches = []
    for n, t in ((5, 7), (3, 4)):
        lengths = torch.randint(1, t + 1, (n,), generator=g)
        lengths[0] = t
        tokens = torch.randint(0, 12, (n, t), generator=g)
        tokens[torch.arange(t)[None, :] >= lengths[:, None]] = 0  # padding
        batches.append(((tokens, lengths), torch.randint(0, 3, (n,), generator=g)))
    op = HessianOperator(model, nn.CrossEntropyLoss(), batches)
    names = op.param_names
    theta, shapes = _flat(model, names)
    total = _criterion_total(model, batches, names, shapes)
    check_products(op, total, theta)
    check_top_eigenvalues(op, total, theta)
