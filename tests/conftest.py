"""Fixtures and settings for every test. Shared helpers live in `tests.helpers`."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import matrix_with_spectrum

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def spectrum_matrix():
    """Factory fixture: build a symmetric matrix with the given eigenvalues."""
    return matrix_with_spectrum
