from hessian_spectra import _progress
from hessian_spectra._progress import _NoBar, outer_progress, progress_bar, set_progress


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
