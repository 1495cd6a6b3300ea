"""Parameters grouped by repeated layer and by module role: plain networks and a tiny GPT-2."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hessian_spectra.operators import HessianOperator
from hessian_spectra.operators.grouping import group_names, group_parameters, repeated_blocks


def _covers(groups: dict, n: int) -> None:
    """The groups partition range(n)."""
    seen = torch.zeros(n, dtype=torch.long)
    for idx in groups.values():
        seen[idx] += 1
    assert bool((seen == 1).all())


def test_sequential_layers_and_modules() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.LayerNorm(4))
    names = [n for n, _ in model.named_parameters()]
    # Linear, Linear, LayerNorm are not one type: no stack, one group per top-level child
    assert list(group_names(model, names, "layers")) == ["0", "2", "3"]
    assert group_names(model, names, "modules") == {
        "linear": ["0.weight", "0.bias", "2.weight", "2.bias"],
        "norm": ["3.weight", "3.bias"],
    }
    groups = group_parameters(model, names, "modules")
    assert groups["linear"] == slice(0, 36)
    assert groups["norm"] == slice(36, 44)
    _covers(groups, 44)


def test_repeated_stack_with_stem_and_head() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(2, 4)
            self.blocks = nn.ModuleList(
                nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.LayerNorm(4)) for _ in range(3)
            )
            self.head = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    model = Net()
    assert repeated_blocks(model) == ["blocks.0", "blocks.1", "blocks.2"]
    names = [n for n, _ in model.named_parameters()]
    layers = group_names(model, names, "layers")
    assert list(layers) == ["stem", "blocks.0", "blocks.1", "blocks.2", "head"]
    assert layers["blocks.1"] == [n for n in names if n.startswith("blocks.1.")]
    modules = group_names(model, names, "modules")
    assert list(modules) == ["linear", "mlp", "norm", "head"]
    n = sum(p.numel() for p in model.parameters())
    _covers(group_parameters(model, names, "layers"), n)
    _covers(group_parameters(model, names, "modules"), n)
    # a selection: only the parameters asked for, in their vector's coordinates
    sel = [nm for nm in names if nm.startswith("blocks.2") or nm.startswith("head")]
    groups = group_parameters(model, sel, "layers")
    assert groups == {"blocks.2": slice(0, 28), "head": slice(28, 33)}


def test_unknown_grouping_and_name_refused() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="is not a grouping"):
        group_parameters(model, ["0.weight"], "rows")
    with pytest.raises(ValueError, match="not a parameter"):
        group_parameters(model, ["1.weight"], "layers")


def test_operator_blocks_by_matches_grouping() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), params=r"^2\.")
    assert op.blocks_by("layers") == {"2": slice(0, 10)}
    assert op.blocks_by("parameters") == op.blocks


def _gpt2():
    transformers = pytest.importorskip("transformers", reason="the [hf] extra is not installed")
    config = transformers.GPT2Config(
        n_layer=3,
        n_embd=8,
        n_head=2,
        vocab_size=40,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def test_tiny_gpt2_layers() -> None:
    model = _gpt2()
    names = [n for n, _ in model.named_parameters()]
    layers = group_names(model, names, "layers")
    assert list(layers) == [
        "embeddings",
        "transformer.h.0",
        "transformer.h.1",
        "transformer.h.2",
        "head",
    ]
    assert layers["embeddings"] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert layers["head"] == ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    assert all(n.startswith("transformer.h.1.") for n in layers["transformer.h.1"])
    _covers(group_parameters(model, names, "layers"), sum(p.numel() for p in model.parameters()))


def test_tiny_gpt2_modules() -> None:
    model = _gpt2()
    names = [n for n, _ in model.named_parameters()]
    modules = group_names(model, names, "modules")
    assert list(modules) == ["embeddings", "norm", "attention", "mlp"]
    assert set(modules["attention"]) == {
        f"transformer.h.{i}.attn.{m}.{p}"
        for i in range(3)
        for m in ("c_attn", "c_proj")
        for p in ("weight", "bias")
    }
    assert set(modules["mlp"]) == {
        f"transformer.h.{i}.mlp.{m}.{p}"
        for i in range(3)
        for m in ("c_fc", "c_proj")
        for p in ("weight", "bias")
    }
    assert "transformer.ln_f.weight" in modules["norm"]
    _covers(group_parameters(model, names, "modules"), sum(p.numel() for p in model.parameters()))


def test_tiny_bert_layers_and_modules() -> None:
    transformers = pytest.importorskip("transformers", reason="the [hf] extra is not installed")
    config = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=8,
        num_attention_heads=2,
        intermediate_size=16,
        vocab_size=30,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config)
    names = [n for n, _ in model.named_parameters()]
    layers = group_names(model, names, "layers")
    assert list(layers) == ["embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "head"]
    assert "bert.embeddings.LayerNorm.weight" in layers["embeddings"]  # before the stack
    assert all(n.startswith("cls.") for n in layers["head"])
    modules = group_names(model, names, "modules")
    assert list(modules) == ["embeddings", "norm", "attention", "mlp", "head"]
    assert "bert.encoder.layer.1.attention.output.dense.weight" in modules["attention"]
    assert "bert.encoder.layer.1.intermediate.dense.weight" in modules["mlp"]
    assert "bert.encoder.layer.1.output.dense.weight" in modules["mlp"]
    assert "bert.encoder.layer.0.output.LayerNorm.weight" in modules["norm"]
    _covers(group_parameters(model, names, "modules"), sum(p.numel() for p in model.parameters()))
