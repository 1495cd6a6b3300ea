"""``python -m hessian_spectra``: the same command line as ``hessian-spectra``."""

from hessian_spectra.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
