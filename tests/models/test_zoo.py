"""The small networks of the architecture zoo: sizes, seeding, shapes."""

import pytest
import torch

from hessian_spectra.models.zoo import char_lstm, mlp, resnet_digits, tiny_gpt2, tiny_vit


def _n(model):
    return sum(p.numel() for p in model.parameters())


def _same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    ("build", "size", "inputs", "out_shape"),
    [
        (lambda s: mlp(30, 2, seed=s), 2114, torch.randn(5, 30), (5, 2)),
        (lambda s: resnet_digits(seed=s), 5142, torch.randn(5, 1, 12, 12), (5, 10)),
        (lambda s: char_lstm(32, seed=s), 5344, torch.randint(0, 32, (5, 7)), (5, 7, 32)),
        (lambda s: tiny_vit(seed=s), 5018, torch.randn(5, 1, 8, 8), (5, 10)),
    ],
)
def test_sizes_shapes_and_seeds(build, size, inputs, out_shape):
    state = torch.random.get_rng_state()
    a, b, c = build(0), build(0), build(1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is left alone
    assert _n(a) == size
    assert _same(a, b) and not _same(a, c)
    assert tuple(a.eval()(inputs).shape) == out_shape


def test_vit_is_built_from_torch_transformer_layers_and_checks_its_patch():
    vit = tiny_vit(seed=0)
    assert isinstance(vit.encoder, torch.nn.TransformerEncoder)
    with pytest.raises(ValueError, match="patch 3 must divide the image size 8"):
        tiny_vit(patch=3)


def test_tiny_gpt2_has_no_dropout_and_is_seeded():
    pytest.importorskip("transformers", reason="tiny_gpt2 needs the hf extra")
    a, b = tiny_gpt2(32, 16, seed=0), tiny_gpt2(32, 16, seed=0)
    assert _same(a, b) and _n(a) == 7360
    ids = torch.randint(0, 32, (2, 16))
    assert tuple(a(input_ids=ids).logits.shape) == (2, 16, 32)
    assert all(getattr(m, "p", 0.0) == 0.0 for m in a.modules() if isinstance(m, torch.nn.Dropout))
