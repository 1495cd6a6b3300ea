"""diagonal: Hutchinson and XDiag against exact diagonals of dense matrices.

Unbiasedness and the reported standard errors are checked over many seeds:
each estimate's mean against the exact diagonal (a t-test per entry), and the
fraction of entries within +-2 standard errors against the nominal coverage
of a t interval, within a binomial band. The band is that of one Bernoulli
trial per seed (entries of one run share its probes, so at worst they count
as one): 3 sqrt(p (1 - p) / seeds).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import hessian_spectra as hs
from hessian_spectra import history
from hessian_spectra.algorithms import diagonal
from hessian_spectra.algorithms.errors import InsufficientMemoryError
from hessian_spectra.operators import DenseOperator, GGNOperator
from hessian_spectra.results import DiagonalResult, load_result
from tests.helpers import random_orthogonal

SEEDS = 200


@pytest.fixture(autouse=True)
def one_thread():
    # hundreds of tiny products: thread hand-offs would cost more than the products
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def low_rank_plus_noise(n: int, rank: int, seed: int = 0, noise: float = 0.5) -> np.ndarray:
    """rank eigenvalues between 10 and 5, the rest uniform in [-noise, noise]; Haar eigenvectors."""
    rng = np.random.default_rng(seed)
    Q = random_orthogonal(n, rng)
    lam = np.concatenate([np.linspace(10, 5, rank), rng.uniform(-noise, noise, n - rank)])
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2


def sweep(op, method: str, num_matvecs: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    runs = [diagonal(op, method=method, num_matvecs=num_matvecs, seed=s) for s in range(SEEDS)]
    return (
        torch.stack([r.estimate for r in runs]),
        torch.stack([r.stderr for r in runs]),
        runs[0].probes,
    )


def nominal_coverage(probes: int) -> float:
    """P(|T| <= 2) for a t variable with probes - 1 degrees of freedom."""
    return float(1 - 2 * scipy.stats.t.sf(2.0, probes - 1))


def band(p: float) -> float:
    return 3 * (p * (1 - p) / SEEDS) ** 0.5


@pytest.mark.parametrize("method", ["hutchinson", "xdiag"])
def test_unbiased_over_seeds(method):
    A = torch.as_tensor(low_rank_plus_noise(24, 3))
    est, _, _ = sweep(DenseOperator(A), method, 24)
    t = (est.mean(0) - A.diagonal()) / (est.std(0) / SEEDS**0.5)
    assert float(t.abs().max()) < 4.5, t  # 24 entries: |t| > 4.5 has probability 2e-4 overall


def test_hutchinson_standard_errors_cover_at_the_nominal_rate():
    A = torch.as_tensor(low_rank_plus_noise(24, 3))
    est, err, probes = sweep(DenseOperator(A), "hutchinson", 30)
    covered = float(((est - A.diagonal()).abs() <= 2 * err).double().mean())
    p = nominal_coverage(probes)
    assert abs(covered - p) <= band(p), (covered, p)


def test_xdiag_standard_errors_cover_at_least_the_nominal_rate():
    # the jackknife over-estimates (Efron-Stein), the spread of XDiag's exchangeable
    # estimates would under-report: the error bar must cover at least as often as promised
    A = torch.as_tensor(low_rank_plus_noise(24, 3))
    est, err, probes = sweep(DenseOperator(A), "xdiag", 30)
    covered = float(((est - A.diagonal()).abs() <= 2 * err).double().mean())
    p = nominal_coverage(probes)
    assert covered >= p - band(p), (covered, p)
    # and it is no blanket: the error bar is within a factor 2.5 of the actual error
    rms = ((est - A.diagonal()) ** 2).mean(0).sqrt()
    ratio = err.mean(0) / rms
    assert 0.8 < float(ratio.median()) < 2.5, ratio


def test_xdiag_beats_hutchinson_on_a_low_rank_plus_noise_matrix():
    n = 150
    A = torch.as_tensor(low_rank_plus_noise(n, 5, seed=1, noise=0.05))
    op = DenseOperator(A)
    errors = {}
    for method in ("hutchinson", "xdiag"):
        runs = [diagonal(op, method=method, num_matvecs=40, seed=s) for s in range(10)]
        errors[method] = float(
            torch.stack([(r.estimate - A.diagonal()) ** 2 for r in runs]).mean().sqrt()
        )
        # the standard errors say so too
        errors[method + " stderr"] = float(torch.stack([r.stderr for r in runs]).mean())
    assert errors["xdiag"] < errors["hutchinson"] / 5, errors
    assert errors["xdiag stderr"] < errors["hutchinson stderr"] / 5, errors


def test_exact_cases():
    # a diagonal matrix: every Hutchinson probe gives the diagonal, with zero spread
    D = torch.diag(torch.arange(1.0, 21.0, dtype=torch.float64))
    r = diagonal(D, method="hutchinson", num_matvecs=5, seed=0)
    assert torch.equal(r.estimate, D.diagonal()) and float(r.stderr.max()) == 0.0
    # rank 3 < probes: XDiag's basis holds the whole range, the diagonal is exact and the
    # error bar is the products' rounding level, not zero
    rng = np.random.default_rng(2)
    U = np.linalg.qr(rng.standard_normal((30, 3)))[0]
    A = torch.as_tensor((U * [3.0, -2.0, 1.0]) @ U.T)
    r = diagonal(A, method="xdiag", num_matvecs=16, seed=0)
    assert float((r.estimate - A.diagonal()).abs().max()) < 1e-13
    assert 0 < float(r.stderr.max()) < 1e-12


def test_blocks_sum_to_the_trace_and_carry_standard_errors():
    n = 40
    A = torch.as_tensor(low_rank_plus_noise(n, 4, seed=3))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[::2] = True
    blocks = {"head": slice(0, 10), "tail": slice(10, n), "even": mask, "some": [1, 5, 7]}
    for method in ("hutchinson", "xdiag"):
        r = diagonal(A, method=method, num_matvecs=30, seed=0, blocks=blocks, block_size=4)
        assert r.block_sizes == {"head": 10, "tail": 30, "even": 20, "some": 3}
        total = r.block_estimates["head"] + r.block_estimates["tail"]
        assert total == pytest.approx(float(r.estimate.sum()), rel=1e-12)
        assert r.block_estimates["some"] == pytest.approx(float(r.estimate[[1, 5, 7]].sum()))
        assert r.block_estimates["even"] == pytest.approx(float(r.estimate[mask].sum()))
        assert r.history[-1][history.ESTIMATE] == pytest.approx(float(r.estimate.sum()))
        assert all(v > 0 for v in r.block_stderrs.values())


def test_a_model_operator_groups_its_parameters_by_name():
    # blocks="parameters" is the model's own parameter slices, as trace takes it
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    data = (torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)))
    op = hs.HessianOperator(model, nn.CrossEntropyLoss(), data)
    by_name = diagonal(op, method="xdiag", num_matvecs=20, seed=1, blocks="parameters")
    explicit = diagonal(
        op, method="xdiag", num_matvecs=20, seed=1, blocks=op.blocks_by("parameters")
    )
    assert list(by_name.block_estimates) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert by_name.block_estimates == explicit.block_estimates
    assert sum(by_name.block_sizes.values()) == op.shape[0]
    with pytest.raises(TypeError, match="needs a model operator"):
        diagonal(torch.eye(4, dtype=torch.float64), num_matvecs=4, blocks="layers")


def test_record_counts_history_and_json_round_trip(tmp_path):
    A = torch.as_tensor(low_rank_plus_noise(30, 3))
    a = diagonal(A, method="xdiag", num_matvecs=21, seed=4, block_size=4)
    b = diagonal(A, method="xdiag", num_matvecs=21, seed=4, block_size=4)
    assert torch.equal(a.estimate, b.estimate) and torch.equal(a.stderr, b.stderr)
    assert a.num_matvecs == 20 and a.probes == 10 and a.seed == 4  # an odd budget leaves one
    names = {getattr(history, k) for k in history.__all__}
    assert {key for rec in a.history for key in rec} <= names
    assert a.settings["operator"]["n"] == 30 and a.settings["method"] == "xdiag"
    back = load_result(a.to_json(tmp_path / "diag.json"))
    assert isinstance(back, DiagonalResult)
    assert torch.equal(back.estimate, a.estimate) and torch.equal(back.stderr, a.stderr)
    drawn = diagonal(A, method="hutchinson", num_matvecs=8)
    assert isinstance(drawn.seed, int) and drawn.num_matvecs == 8


def test_a_callback_stops_hutchinson_early():
    A = torch.as_tensor(low_rank_plus_noise(30, 3))
    r = diagonal(
        A,
        method="hutchinson",
        num_matvecs=100,
        seed=0,
        block_size=5,
        callback=lambda rec: rec[history.PROBES] >= 15,
    )
    assert r.probes == 15 and r.num_matvecs == 15


def test_on_a_model_operator_within_its_error_bars():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    op = GGNOperator(model, nn.CrossEntropyLoss(), (x, y))
    exact = op.matmat(torch.eye(op.shape[0], dtype=op.dtype)).diagonal()
    r = hs.diagonal(op, method="xdiag", num_matvecs=40, seed=0, blocks=op.blocks)
    z = (r.estimate - exact) / r.stderr
    assert float((z.abs() <= 3).double().mean()) > 0.9
    per_layer = op.unflatten(r.estimate)
    assert per_layer["2.weight"].shape == (3, 6)
    assert set(r.block_estimates) == set(op.blocks)


def test_float32_operators_give_float64_estimates():
    A = torch.as_tensor(low_rank_plus_noise(30, 3)).float()
    r = diagonal(A, method="xdiag", num_matvecs=20, seed=0)
    assert r.estimate.dtype == torch.float64 and r.stderr.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "diag++"}, ValueError, "method must be one of"),
        ({"method": "hutchinson", "num_matvecs": 1}, ValueError, "num_matvecs >= 2"),
        ({"method": "xdiag", "num_matvecs": 3}, ValueError, "num_matvecs >= 4"),
        ({"method": "xdiag", "num_matvecs": 60}, ValueError, "exact diagonal costs n=30"),
        ({"num_matvecs": 10.0}, TypeError, "num_matvecs must be an int"),
        ({"block_size": 0}, ValueError, "block_size must be at least 1"),
        ({"blocks": {"x": slice(5, 5)}}, ValueError, "empty"),
        ({"max_memory": 100}, InsufficientMemoryError, "max_memory"),
    ],
)
def test_refusals(kwargs, error, match):
    A = torch.as_tensor(low_rank_plus_noise(30, 3))
    with pytest.raises(error, match=match):
        diagonal(A, **{"num_matvecs": 20, **kwargs})
