"""Offline data: Python's own source as text, scikit-learn's tabular sets."""

import pytest
import torch

from hessian_spectra.data.tabular import tabular
from hessian_spectra.data.text import char_vocab, encode, python_source, text_digest, windows


def test_python_source_is_real_text_read_the_same_every_time():
    text = python_source()
    assert "def " in text and "import " in text and len(text) > 50_000
    assert text_digest(python_source()) == text_digest(text)
    assert python_source(100) == text[:100]


def test_vocab_ranks_by_frequency_breaks_ties_by_character_and_maps_the_rest_to_zero():
    vocab = char_vocab("aaabbbcd", 3)
    assert vocab == {"a": 1, "b": 2}  # a and b tie at 3: alphabetical order
    assert encode("abcx", vocab).tolist() == [1, 2, 0, 0]
    with pytest.raises(ValueError, match="at least 2"):
        char_vocab("abc", 1)


def test_windows_are_consecutive_and_checked():
    ids = torch.arange(10)
    assert windows(ids, 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert windows(ids, 5, 1).tolist() == [[0, 1, 2, 3, 4]]
    with pytest.raises(ValueError, match="gives 2 sequences of 5, not 3"):
        windows(ids, 5, 3)


@pytest.mark.parametrize(
    ("name", "shape", "classes"), [("breast-cancer", (569, 30), 2), ("wine", (178, 13), 3)]
)
def test_tabular_sets_are_standardized(name, shape, classes):
    x, y = tabular(name)
    assert x.shape == shape and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x.double().mean(0), torch.zeros(shape[1], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(x.double().std(0), torch.ones(shape[1], dtype=torch.float64), atol=1e-5)
    assert sorted(set(y.tolist())) == list(range(classes))
    with pytest.raises(ValueError, match="unknown tabular set 'iris'"):
        tabular("iris")
