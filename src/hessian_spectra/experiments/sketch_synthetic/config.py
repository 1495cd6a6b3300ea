"""Settings of `sketch-synthetic` and its command-line options."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

from hessian_spectra.experiments.synthetic import num_zero_eigenvalues

KINDS: tuple[str, ...] = ("rademacher", "rangefinder", "nystrom")


@dataclass(frozen=True)
class SketchSyntheticConfig:
    """Sizes and counts of the experiment; the defaults are the study's.

    Attributes:
        n: matrix size.
        zero_fractions: fractions of exactly-zero eigenvalues.
        ratios: sketch sizes as fractions of n (d = round(ratio * n)).
        num_matrices: random matrices per zero fraction.
        num_sketches: sketches per matrix and ratio (per kind).
        top_k: eigenvalues compared (fewer where d < top_k).
        kinds: sketch kinds passed to `hs.sketch`.
        seed: the run's seed; every matrix and sketch seed is derived from it.
    """

    n: int = 1000
    zero_fractions: tuple[float, ...] = (0.1, 0.2, 0.4, 0.6, 0.8, 0.9)
    ratios: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4, 0.6)
    num_matrices: int = 3
    num_sketches: int = 10
    top_k: int = 20
    kinds: tuple[str, ...] = KINDS
    seed: int = 0

    def sketch_size(self, ratio: float) -> int:
        return int(round(ratio * self.n))

    def validate(self) -> None:
        """Refuse settings that cannot give a percent error for every compared eigenvalue."""
        if self.n < 2:
            raise ValueError(f"n must be at least 2, got {self.n}")
        if self.num_matrices < 1 or self.num_sketches < 1 or self.top_k < 1:
            raise ValueError("num_matrices, num_sketches and top_k must be at least 1")
        if not self.zero_fractions or not self.ratios or not self.kinds:
            raise ValueError("give at least one zero fraction, one ratio and one kind")
        for kind in self.kinds:
            if kind not in KINDS:
                raise ValueError(f"unknown sketch kind {kind!r}; choose from {', '.join(KINDS)}")
        for f in self.zero_fractions:
            nonzero = self.n - num_zero_eigenvalues(self.n, f)
            if nonzero < self.top_k:
                raise ValueError(
                    f"with zero fraction {f} a {self.n} x {self.n} matrix has only {nonzero} "
                    f"non-zero eigenvalues, fewer than top_k={self.top_k}: the percent error "
                    "of a zero eigenvalue is undefined; lower top_k or the fraction"
                )
        for r in self.ratios:
            d = self.sketch_size(r)
            if not 1 <= d <= self.n:
                raise ValueError(
                    f"ratio {r} gives sketch size {d} for n={self.n}; it must be in [1, n]"
                )

    @property
    def num_sketches_per_kind(self) -> int:
        return len(self.zero_fractions) * self.num_matrices * len(self.ratios) * self.num_sketches


#: A configuration that runs end to end in a few seconds (tests, smoke runs).
SMALL = SketchSyntheticConfig(
    n=200,
    zero_fractions=(0.1, 0.5, 0.9),
    ratios=(0.05, 0.2, 0.5),
    num_matrices=2,
    num_sketches=3,
    top_k=10,
)


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.1,0.5, got {text!r}"
        ) from exc
    if not vals:
        raise argparse.ArgumentTypeError("give at least one value")
    return vals


def _kinds(text: str) -> tuple[str, ...]:
    vals = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [v for v in vals if v not in KINDS]
    if bad or not vals:
        raise argparse.ArgumentTypeError(f"kinds must be among {', '.join(KINDS)}, got {text!r}")
    return vals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `experiment sketch-synthetic`."""
    d = SketchSyntheticConfig()
    parser.add_argument("--out", help="output folder (default out/sketch-synthetic)")
    parser.add_argument(
        "--replot",
        metavar="DIR",
        help="redraw the tables, claims and figures of a finished run from DIR's run.json and "
        "errors.csv, without sketching again (written to --out, default DIR)",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="a seconds-long configuration (n=200, 3 fractions, 3 ratios, 2 x 3 sketches, "
        "top 10); the options below override it",
    )
    parser.add_argument("--n", type=int, help=f"matrix size (default {d.n})")
    parser.add_argument(
        "--zero-fractions", type=_floats, help="comma-separated (default 0.1,0.2,0.4,0.6,0.8,0.9)"
    )
    parser.add_argument(
        "--ratios", type=_floats, help="comma-separated d/n (default 0.02,0.05,0.1,0.2,0.4,0.6)"
    )
    parser.add_argument(
        "--matrices", type=int, help=f"matrices per fraction (default {d.num_matrices})"
    )
    parser.add_argument(
        "--sketches", type=int, help=f"sketches per matrix and ratio (default {d.num_sketches})"
    )
    parser.add_argument("--top-k", type=int, help=f"eigenvalues compared (default {d.top_k})")
    parser.add_argument("--kinds", type=_kinds, help="comma-separated (default all three)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    parser.add_argument("--no-plots", action="store_true", help="write tables only")


def config_from_args(args: argparse.Namespace) -> SketchSyntheticConfig:
    base = SMALL if args.small else SketchSyntheticConfig()
    over: dict[str, Any] = {"seed": args.seed}
    for attr, key in (
        ("n", "n"),
        ("zero_fractions", "zero_fractions"),
        ("ratios", "ratios"),
        ("matrices", "num_matrices"),
        ("sketches", "num_sketches"),
        ("top_k", "top_k"),
        ("kinds", "kinds"),
    ):
        val = getattr(args, attr, None)
        if val is not None:
            over[key] = val
    fields = asdict(base)
    fields.update(over)
    cfg = SketchSyntheticConfig(**fields)
    cfg.validate()
    return cfg
