"""Collection settings for the whole tree (tests/conftest.py holds the fixtures).

The docstring examples run over the package (``--doctest-modules``); the
modules of an optional extra (``hessian_spectra.integrations``) import their
framework at the top, so where the extra is absent they are left out of the
collection instead of failing it. Their tests skip with a reason.
"""

from __future__ import annotations

import importlib.util

_EXTRA_MODULES = {
    "src/hessian_spectra/integrations/lightning.py": "lightning",
    "src/hessian_spectra/integrations/transformers.py": "transformers",
    "src/hessian_spectra/integrations/tensorboard.py": "tensorboard",
}


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a broken or half-installed package counts as absent
        return True


collect_ignore = [path for path, module in _EXTRA_MODULES.items() if _absent(module)]
