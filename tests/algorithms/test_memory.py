"""Memory is checked before large allocations: a call that cannot fit is refused up front."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hessian_spectra as hs
from hessian_spectra.algorithms import (
    InsufficientMemoryError,
    available_memory,
    density_memory,
    eigsh_memory,
    trace_memory,
)
from hessian_spectra.algorithms import memory as memory_module
from tests.helpers import dense_op

N = 200
LAM = np.linspace(-1.0, 10.0, N)


@pytest.mark.parametrize("method", ["lanczos", "block", "power", "rqi"])
@pytest.mark.filterwarnings("ignore::hessian_spectra.algorithms.errors.ConvergenceWarning")
def test_eigsh_refuses_a_run_over_max_memory_before_any_product(method):
    op = dense_op(LAM)
    need = eigsh_memory(N, 5, method=method, dtype=op.dtype)
    with pytest.raises(InsufficientMemoryError) as info:
        hs.eigsh(op, 5, method=method, seed=0, max_memory=need - 1)
    assert op.num_matvecs == 0
    msg = str(info.value)
    assert f"({need} bytes)" in msg and f"max_memory={need - 1}" in msg
    assert "k" in msg and "raise max_memory" in msg
    # a MemoryError and a ValueError
    assert isinstance(info.value, MemoryError) and isinstance(info.value, ValueError)
    # exactly the estimate fits
    res = hs.eigsh(dense_op(LAM), 5, method=method, seed=0, max_memory=need)
    assert res.eigenvalues.size == 5


def test_lanczos_refusal_names_the_options_that_lower_it():
    with pytest.raises(InsufficientMemoryError, match="max_basis.*basis_dtype.*basis_device"):
        hs.eigsh(dense_op(LAM), 5, seed=0, max_memory=1000)
    with pytest.raises(InsufficientMemoryError, match="block_size"):
        hs.eigsh(dense_op(LAM), 5, method="block", seed=0, max_memory=1000)


def test_eigsh_estimate_follows_the_options_and_covers_the_basis():
    big = eigsh_memory(270_000, 5000)
    assert big > 270_000 * 15_001 * 4  # at least the float32 basis of max(3k, k + 32)
    assert eigsh_memory(270_000, 5000, max_basis=5100) < big
    assert eigsh_memory(270_000, 5000, basis_dtype=torch.bfloat16) < big
    assert eigsh_memory(270_000, 5000, dtype=torch.float64) > big
    assert eigsh_memory(270_000, 50, method="block", block_size=32) > eigsh_memory(
        270_000, 50, method="block", block_size=4
    )
    # the estimate holds the basis the run reports
    op = dense_op(LAM)
    res = hs.eigsh(op, 5, seed=0, max_basis=20)
    assert res.settings["basis_bytes"] <= eigsh_memory(N, 5, dtype=op.dtype, max_basis=20)
    with pytest.raises(ValueError, match="max_basis"):
        eigsh_memory(N, 5, max_basis=3)  # the same refusals as eigsh


def test_basis_on_another_device_counts_against_max_memory_too():
    op = dense_op(LAM)
    need = eigsh_memory(N, 5, dtype=op.dtype, basis_dtype=torch.float32)
    assert need < eigsh_memory(N, 5, dtype=op.dtype)
    res = hs.eigsh(op, 5, seed=0, basis_dtype=torch.float32, max_memory=need)
    assert res.converged.all()


def test_automatic_check_against_available_memory(monkeypatch):
    monkeypatch.setattr(memory_module, "available_memory", lambda device: 10_000)
    op = dense_op(LAM)
    with pytest.raises(
        InsufficientMemoryError, match=r"only 10\.0 kB \(10000 bytes\) are available"
    ):
        hs.eigsh(op, 5, seed=0)
    with pytest.raises(InsufficientMemoryError, match="max_memory=<bytes>"):
        hs.density(op, num_steps=50, num_probes=4, seed=0)
    with pytest.raises(InsufficientMemoryError, match="num_matvecs"):
        hs.trace(op, num_matvecs=60, seed=0)
    assert op.num_matvecs == 0
    # the user's limit replaces the automatic one
    res = hs.eigsh(op, 5, seed=0, max_memory=10**9)
    assert res.converged.all()


def test_unknown_availability_skips_the_check(monkeypatch):
    monkeypatch.setattr(memory_module, "available_memory", lambda device: None)
    assert hs.eigsh(dense_op(LAM), 5, seed=0).converged.all()


def test_trace_and_density_refuse_over_max_memory():
    op = dense_op(LAM)
    for method in ("hutchinson", "hutch++", "xtrace"):
        need = trace_memory(N, method=method, num_matvecs=60, dtype=op.dtype)
        with pytest.raises(InsufficientMemoryError, match=f"{need} bytes"):
            hs.trace(op, method=method, num_matvecs=60, seed=0, max_memory=need - 1)
        hs.trace(op, method=method, num_matvecs=60, seed=0, max_memory=need)
    need = density_memory(N, num_steps=30, num_probes=3, dtype=op.dtype)
    with pytest.raises(InsufficientMemoryError, match="block_size"):
        hs.density(op, num_steps=30, num_probes=3, seed=0, max_memory=need - 1)
    hs.density(op, num_steps=30, num_probes=3, seed=0, max_memory=need)
    assert density_memory(N, num_steps=30, num_probes=3, block_size=1) < need


def test_xtrace_estimate_grows_with_the_budget_hutchinson_does_not():
    assert trace_memory(10**6, num_matvecs=400) > 3 * trace_memory(10**6, num_matvecs=100)
    small = trace_memory(10**6, method="hutchinson", num_matvecs=100)
    assert small == trace_memory(10**6, method="hutchinson", num_matvecs=400)


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "8GB", True])
def test_max_memory_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="max_memory"):
        hs.eigsh(dense_op(LAM), 3, seed=0, max_memory=bad)
    with pytest.raises(ValueError, match="max_memory"):
        hs.trace(dense_op(LAM), num_matvecs=20, seed=0, max_memory=bad)


def test_available_memory_on_this_machine():
    cpu = available_memory("cpu")
    assert cpu is None or cpu > 0
    assert available_memory("meta") is None
