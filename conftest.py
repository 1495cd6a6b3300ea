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

collect_ignore = [
    path for path, module in _EXTRA_MODULES.items() if importlib.util.find_spec(module) is None
]
