"""Reference models: parameter counts, options, seeded init, digits training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hessian_spectra.data import digits
from hessian_spectra.models import digits_cnn, resnet20, train_digits_cnn


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet20_has_the_studys_parameter_count():
    assert count(resnet20()) == 272_474


def test_resnet20_structure():
    model = resnet20()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    three = [c for c in convs if c.kernel_size == (3, 3)]
    ones = [c for c in convs if c.kernel_size == (1, 1)]
    assert len(three) == 19 and len(ones) == 2  # 19 + fc = 20 weight layers
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 21
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_options_change_the_architecture():
    # 6n + 2: n = 5 blocks per stage
    assert sum(isinstance(m, nn.Conv2d) for m in resnet20(depth=32).modules()) == 31 + 2
    no_bn = resnet20(batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())
    # 272,474 minus the BatchNorm affine parameters (2 per channel)
    bn_params = 2 * (16 + 6 * 16 + 6 * 32 + 32 + 6 * 64 + 64)
    assert count(no_bn) == 272_474 - bn_params
    # no residual connections: no projection shortcuts (they would get no gradient)
    plain = resnet20(residual=False)
    assert count(plain) == 272_474 - (16 * 32 + 64 + 32 * 64 + 128)
    wide = resnet20(width=32, num_classes=100)
    assert wide(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    with pytest.raises(ValueError, match="6n"):
        resnet20(depth=21)


def test_residual_flag_changes_the_function():
    x = torch.randn(2, 3, 32, 32)
    a = resnet20(seed=1).eval()
    b = resnet20(seed=1, residual=False).eval()
    assert not torch.allclose(a(x), b(x))


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = resnet20(seed=3), resnet20(seed=3), resnet20(seed=4)
    after = torch.rand(1)
    assert torch.equal(before, after)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    # He-normal (fan-out) scale on the stem: std sqrt(2 / (9 * 16))
    assert a.conv1.weight.std().item() == pytest.approx((2 / 144) ** 0.5, rel=0.2)


def test_digits_cnn_shape_and_count():
    model = digits_cnn(seed=0)
    assert count(model) == 2_650
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    w0 = digits_cnn(seed=0)[0].weight
    assert torch.equal(w0, model[0].weight)
    assert not torch.equal(w0, digits_cnn(seed=1)[0].weight)


def test_train_digits_cnn_is_deterministic():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = train_digits_cnn(seed=2, steps=5)
        assert torch.get_num_threads() == 2  # the caller's setting is restored
        torch.set_num_threads(1)
        b = train_digits_cnn(seed=2, steps=5)
    finally:
        torch.set_num_threads(threads)
    c = train_digits_cnn(seed=3, steps=5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a[0].weight, c[0].weight)
    assert not a.training


def test_train_digits_cnn_reaches_low_loss():
    x, y = digits()
    untrained = digits_cnn(seed=0).eval()
    model = train_digits_cnn(seed=0)
    with torch.no_grad():
        loss0 = nn.functional.cross_entropy(untrained(x), y).item()
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    assert loss0 > 2.0
    assert loss < 0.05
    assert acc > 0.99
