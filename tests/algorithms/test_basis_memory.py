"""The Lanczos basis kept in a lower precision (or elsewhere) than the operator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.algorithms.lanczos import LanczosProcess
from hessian_spectra.operators.base import DenseOperator
from tests.algorithms.test_resume_eigsh import Interrupting, assert_identical
from tests.helpers import matrix_with_spectrum

N = 150
LAM = np.concatenate([np.array([9.0, 7.0, 6.0, 5.5, 5.0]), np.linspace(-2.0, 3.0, N - 5)])
KW = {"k": 5, "tol": 1e-5, "seed": 0, "max_basis": 20}


def _op():
    return Interrupting(torch.as_tensor(matrix_with_spectrum(LAM, seed=3)))


def test_float32_basis_under_a_float64_operator():
    full = hs.eigsh(_op(), **KW)
    low = hs.eigsh(_op(), **KW, basis_dtype=torch.float32)
    assert low.converged.all() and low.restarts > 0
    np.testing.assert_allclose(low.eigenvalues, LAM[:5], rtol=1e-5)
    # half the memory, reported; the basis is orthonormal to float32 precision only
    assert full.settings["basis_bytes"] == N * 21 * 8
    assert low.settings["basis_bytes"] == N * 21 * 4
    assert low.settings["basis_dtype"] == "torch.float32"
    assert 1e-10 < low.orthogonality_loss < 1e-5 and full.orthogonality_loss < 1e-13
    assert low.eigenvectors.dtype == torch.float64
    # the pairs are accurate to about eps(float32) ||H||
    A = _op().matrix
    R = A @ low.eigenvectors - low.eigenvectors * torch.as_tensor(low.eigenvalues)
    assert float(torch.linalg.vector_norm(R, dim=0).max()) < 1e-4


def test_basis_on_the_operators_device_is_the_default_path():
    a = hs.eigsh(_op(), **KW)
    b = hs.eigsh(_op(), **KW, basis_device="cpu", basis_dtype=torch.float64)
    assert_identical(a, b)


def test_chunked_upcast_agrees(monkeypatch):
    """The basis upcast a few rows at a time gives the same pairs up to rounding."""
    whole = hs.eigsh(_op(), **KW, basis_dtype=torch.float32)
    monkeypatch.setattr(LanczosProcess, "_CHUNK_ELEMENTS", 64)  # 3 to 64 rows per chunk
    chunked = hs.eigsh(_op(), **KW, basis_dtype=torch.float32)
    np.testing.assert_allclose(chunked.eigenvalues, whole.eigenvalues, rtol=1e-12)
    assert chunked.num_matvecs == whole.num_matvecs


def test_lanczos_decomposition_in_the_operators_dtype():
    op = DenseOperator(matrix_with_spectrum(LAM, seed=3))
    v0 = torch.ones(N, dtype=torch.float64)
    proc = LanczosProcess(op, v0, 12, basis_dtype=torch.bfloat16)
    for _ in range(12):
        proc.step()
    dec = proc.decomposition()
    assert dec.basis.dtype == torch.float64 and proc.Q.dtype == torch.bfloat16
    assert proc.basis_bytes == N * 13 * 2
    # bfloat16 keeps about 3 digits: the stored basis is orthonormal to that level
    assert 1e-4 < dec.orthogonality_loss < 5e-2


def test_resume_with_a_float32_basis(tmp_path):
    path = tmp_path / "c.ckpt"
    ref = hs.eigsh(_op(), **KW, basis_dtype=torch.float32)
    assert ref.restarts >= 1 and ref.num_matvecs > 21
    op = _op()
    op.at = 21  # the first product after the restart
    with pytest.raises(KeyboardInterrupt):
        hs.eigsh(op, **KW, basis_dtype=torch.float32, checkpoint=path)
    res = hs.eigsh(_op(), **KW, basis_dtype=torch.float32, checkpoint=path, resume=True)
    assert_identical(res, ref)


def test_bad_basis_dtype_refused():
    with pytest.raises(ValueError, match="basis_dtype must be a floating"):
        hs.eigsh(_op(), 3, basis_dtype=torch.int32)
