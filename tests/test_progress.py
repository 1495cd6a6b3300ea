from __future__ import annotations

import numpy as np
import pytest

import hessian_spectra as hs
from hessian_spectra import _progress
from hessian_spectra._progress import _NoBar, outer_progress, progress_bar, set_progress
from tests.helpers import dense_op


def test_outer_bar_hides_inner_bars_and_restores_the_setting():
    set_progress(True)
    try:
        with outer_progress(3, "outer", unit="matrix") as bar:
            assert not isinstance(bar, _NoBar)  # the outer bar is shown
            with progress_bar(10, "inner", enabled=True) as inner:
                assert isinstance(inner, _NoBar)  # inner bars are hidden
            bar.update(3)
        assert _progress._ENABLED is True
        with progress_bar(10, "after", enabled=False) as again:
            assert not isinstance(again, _NoBar)  # forced on again afterwards
    finally:
        set_progress(None)


def test_outer_bar_silent_when_progress_is_off():
    set_progress(None)
    with outer_progress(3, "outer", unit="matrix") as bar:
        assert isinstance(bar, _NoBar)
    assert _progress._ENABLED is None


# ---------------------------------------------------------------- what the bars show


class FakeBar:
    """Records what a tqdm bar would draw: (count, postfix) at each update or refresh."""

    bars: list[FakeBar] = []

    def __init__(self, total=None, desc=None, unit=None, **kwargs):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.postfix = ""
        self.drawn: list[tuple[int, str]] = []
        self.closed = False
        FakeBar.bars.append(self)

    def update(self, n=1):
        self.n += n
        self.drawn.append((self.n, self.postfix))

    def set_postfix_str(self, s, refresh=True):
        self.postfix = s
        if refresh:
            self.drawn.append((self.n, self.postfix))

    def set_description(self, desc=None, refresh=True):
        self.desc = desc

    def refresh(self):
        self.drawn.append((self.n, self.postfix))

    def close(self):
        self.closed = True


@pytest.fixture
def fake_bars(monkeypatch):
    FakeBar.bars = []
    monkeypatch.setattr(_progress, "tqdm", FakeBar)
    return FakeBar.bars


def _op():
    lam = np.concatenate([[9.0, 7.0, 6.0], np.linspace(0.0, 3.0, 97)])
    return dense_op(lam)


def test_trace_bar_ends_on_the_returned_estimate(fake_bars):
    res = hs.trace(_op(), method="hutchinson", num_matvecs=40, block_size=7, seed=0, progress=True)
    (bar,) = fake_bars
    assert bar.closed and bar.total == 40
    assert bar.drawn[-1] == (res.num_matvecs, f"{res.estimate:.4g} +- {res.stderr:.2g}")
    # every draw shows the estimate of the products counted so far, not the one before
    first = res.history[0]
    assert bar.drawn[0] == (first["matvecs"], f"{first['estimate']:.4g} +- {first['stderr']:.2g}")


def test_eigsh_bar_has_no_end_unless_max_matvecs_is_given(fake_bars):
    res = hs.eigsh(_op(), 3, seed=0, progress=True)
    bar = fake_bars[-1]
    assert bar.total is None  # not the default cap of 1000 products: no false ETA
    assert bar.drawn[-1] == (res.num_matvecs, "3/3 converged")
    hs.eigsh(_op(), 3, seed=0, progress=True, max_matvecs=300, verify=True)
    assert fake_bars[-1].total == 300 + 3  # the bound, with verify's products
    assert fake_bars[-1].n == fake_bars[-1].drawn[-1][0]


def test_products_after_the_last_record_are_counted(fake_bars):
    res = hs.eigsh(_op(), 3, seed=0, progress=True, verify=True)
    assert fake_bars[-1].drawn[-1][0] == res.num_matvecs  # verify's 3 products included
    den = hs.density(_op(), num_steps=10, num_probes=3, seed=0, progress=True)
    assert fake_bars[-1].drawn[-1] == (den.num_matvecs, "3 probes")
