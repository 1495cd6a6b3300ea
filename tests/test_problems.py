"""The problem registry: model names, the state-dict loader and the data specs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hessian_spectra.problems import (
    BUILTIN_MODELS,
    ProblemError,
    build_model,
    canonical_model_name,
    default_data,
    load_data,
    load_state_dict,
)


def test_one_spelling_of_each_model_name():
    assert canonical_model_name("digits_cnn") == "digits-cnn"
    assert canonical_model_name("digits-cnn") == "digits-cnn"
    assert canonical_model_name("pkg.mod:make") == "pkg.mod:make"
    assert set(BUILTIN_MODELS) == {
        "digits-cnn",
        "resnet20",
        "resnet20-no-bn",
        "resnet20-no-residual",
        "resnet32",
    }
    a, b = build_model("digits_cnn", 3), build_model("digits-cnn", 3)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    assert default_data("digits_cnn") == "digits" and default_data("resnet20") is None


def test_errors_are_value_errors_that_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'resnet99'"):
        build_model("resnet99", 0)
    with pytest.raises(ProblemError, match="unknown data 'mnist'"):
        load_data("mnist")
    with pytest.raises(ProblemError, match="checkpoint file .* not found"):
        load_state_dict(build_model("digits-cnn", 0), tmp_path / "none.pt", "digits-cnn")


def test_state_dict_loader_accepts_wrapped_and_prefixed_dicts(tmp_path):
    src = build_model("digits-cnn", 1)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "wrapped.pt"
    torch.save({"model_state_dict": state, "epoch": 3}, path)
    dst = build_model("digits-cnn", 2)
    load_state_dict(dst, path, "digits-cnn")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    other = tmp_path / "other.pt"
    torch.save(nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(ProblemError, match="does not fit model digits-cnn: missing keys"):
        load_state_dict(dst, other, "digits-cnn")


def test_fixed_subset_in_batches():
    data = load_data("digits", samples=50, batch_size=20, dtype=torch.float64)
    assert [len(b[0]) for b in data.batches] == [20, 20, 10]
    assert data.num_samples == 50 and data.batches[0][0].dtype == torch.float64
    again = load_data("digits", samples=50, batch_size=50)
    assert torch.equal(again.batches[0][1], torch.cat([b[1] for b in data.batches]))
