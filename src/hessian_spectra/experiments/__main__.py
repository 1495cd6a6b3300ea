"""``python -m hessian_spectra.experiments``: run a reproduction experiment."""

import sys

from hessian_spectra.experiments import main

if __name__ == "__main__":
    sys.exit(main())
