"""The analyses the commands run: each prints a table, writes JSON and a figure.

Every ``run_*`` takes the `Setup`, its own options record and the `Outcome`
it adds its result and figures to (under its analysis name); `run_analyses`
runs a chosen set in the order that lets one serve another (the top
eigenpairs feed the density plot, the sketch comparison and the landscape).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from hessian_spectra import plots
from hessian_spectra.algorithms import ConvergenceWarning, density, eigsh, sketch, trace
from hessian_spectra.analysis.landscape import loss_landscape, random_directions
from hessian_spectra.analysis.layers import layer_traces
from hessian_spectra.cli.blocks import BlocksOptions, run_blocks
from hessian_spectra.cli.errors import CLIError
from hessian_spectra.cli.output import Outcome, eig_title, note, say, table, unconverged
from hessian_spectra.cli.setup import Resume, Setup, hessian, run_state
from hessian_spectra.operators import select_parameters
from hessian_spectra.report import summarize

ANALYSES = ("eigs", "trace", "density", "sketch", "landscape", "layers")
# asked for by name only, not in the default set (blocks: also by analyze --blocks)
EXTRA_ANALYSES = ("hessian-vs-ggn", "blocks")
SKETCH_KINDS = ("rademacher", "rangefinder", "nystrom")

#: range passes beyond the first of each sketch kind when --power-steps is not given. One
#: step for Nystrom: without it, on a trained network's spread spectrum, its top
#: eigenvalues come out far low (90-97% low on trained ResNets; on the trained digits CNN,
#: d = 50, its top-5 are 4.4% low on average, 0.002% after one step); the range finder's
#: two passes already give its top eigenpairs (0.3% at d = 50).
DEFAULT_POWER_STEPS = {"rademacher": 0, "rangefinder": 0, "nystrom": 1}

#: what each sketch is good for, printed beside it and shown in the report
SKETCH_PURPOSE = {
    "rademacher": "the trace: tr(SᵀHS) is an unbiased estimate of tr(H); its eigenvalues "
    "are biased (spread by the random projection), not estimates of H's",
    "rangefinder": "the top eigenpairs: Rayleigh-Ritz on a randomized range; its eigenvalues "
    "never exceed the true ones",
    "nystrom": "a PSD low-rank approximation of H; its eigenvalues never exceed the true "
    "ones and, on a spread spectrum, are far too low without a power step",
}
REFERENCE_TOL = 1e-4  # of the top eigenpairs computed to serve a sketch or a landscape


# =============================================================================== options
@dataclass(frozen=True)
class EigsOptions:
    """Top-k eigenpairs: ``--k``, ``--tol``, ``--which``, ``--method`` and their kin."""

    k: int = 10
    tol: float = 1e-4
    which: str = "LA"
    method: str = "lanczos"
    block_size: int = 8
    max_matvecs: int | None = None
    max_basis: int | None = None
    verify: bool = True
    compare_power: bool = False


@dataclass(frozen=True)
class TraceOptions:
    """The trace: estimator, HVP budget, or a relative standard-error target."""

    method: str = "xtrace"
    num_matvecs: int = 60
    rtol: float | None = None


@dataclass(frozen=True)
class DensityOptions:
    """Stochastic Lanczos quadrature: steps per probe and probes."""

    num_steps: int = 80
    num_probes: int = 2


@dataclass(frozen=True)
class SketchOptions:
    """Sketches: size, kind (or "all") and range passes; `k` eigenvalues compared."""

    size: int = 50
    kind: str = "all"
    power_steps: int | None = None  # None: DEFAULT_POWER_STEPS of each kind
    k: int = 10


@dataclass(frozen=True)
class LandscapeOptions:
    """The loss on a grid: directions, a line or a plane, span, grid points, 1-D curves."""

    directions: str = "eigen"
    dims: int = 2
    span: float | None = None
    steps: int = 25
    curves: bool = True


@dataclass(frozen=True)
class Options:
    """The options of every analysis, for `run_analyses`."""

    eigs: EigsOptions = field(default_factory=EigsOptions)
    trace: TraceOptions = field(default_factory=TraceOptions)
    density: DensityOptions = field(default_factory=DensityOptions)
    sketch: SketchOptions = field(default_factory=SketchOptions)
    landscape: LandscapeOptions = field(default_factory=LandscapeOptions)
    resume: Resume = field(default_factory=Resume)
    blocks: BlocksOptions = field(default_factory=BlocksOptions)


def parse_what(text: str) -> list[str]:
    """The analyses of ``--what eigs,trace,...``, refused when one is unknown."""
    items = [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in items if w not in ANALYSES + EXTRA_ANALYSES]
    if bad or not items:
        raise CLIError(
            f"--what {text!r}: unknown analysis {', '.join(bad) or '(none)'}; "
            f"choose from {','.join(ANALYSES + EXTRA_ANALYSES)}"
        )
    return items


# =============================================================================== eigenpairs
def run_eigs(s: Setup, opts: EigsOptions, resume: Resume, out: Outcome) -> Any:
    """Top-k eigenpairs (and PyHessian-style power iteration beside them, when asked)."""
    op = hessian(s)
    method: Any = opts.method or "lanczos"
    kwargs: dict[str, Any] = {}
    if opts.max_matvecs is not None:
        kwargs["max_matvecs"] = opts.max_matvecs
    if opts.max_basis is not None:
        kwargs["max_basis"] = opts.max_basis
    if method == "block":
        kwargs["block_size"] = opts.block_size
    if method == "lanczos":
        kwargs.update(run_state(s, resume, "eigs"))
    elif resume.resume:
        raise CLIError(f"--resume continues Lanczos runs; --method {method} saves no state")
    top = eigsh(
        op,
        opts.k,
        which=opts.which,  # type: ignore[arg-type]
        method=method,
        tol=opts.tol,
        seed=s.seed,
        progress=True,
        verify=opts.verify,
        max_memory=s.max_memory,
        **kwargs,
    )
    out.save("eigs", top)
    say(
        f"\n{eig_title(opts.which, opts.k)} ({method}, tol {opts.tol:g}): {top.num_matvecs} "
        f"HVPs, {top.seconds:.2f} s"
    )
    warning = unconverged(top, opts.tol, "Raise --max-matvecs or loosen --tol.")
    if warning is not None:
        out.warn("eigs", warning)
    lam = np.asarray(top.eigenvalues)
    res = np.asarray(top.residuals)
    say(
        table(
            ["i", "eigenvalue", "residual", "rel. residual", "converged"],
            [
                (i + 1, lam[i], res[i], res[i] / max(abs(lam[i]), 1e-300), bool(top.converged[i]))
                for i in range(lam.size)
            ],
        )
    )
    out.figure(
        "eigs",
        "eigs_convergence",
        f"Convergence: {eig_title(opts.which, opts.k)} ({method})",
        plots.plot_convergence(top),
        "Left: Ritz values after each Hessian-vector product (red: final values). Right: the "
        "residual norm of each Ritz pair; a pair is converged below tol × |λ|.",
    )
    if opts.compare_power:
        _compare_power(s, opts.k, top, out)
    return top


def _compare_power(s: Setup, k: int, top: Any, out: Outcome) -> None:
    power = eigsh(
        hessian(s),
        k,
        which="LA",
        method="power",
        stop="relative_change",
        tol=1e-3,
        seed=s.seed,
        progress=True,
        max_memory=s.max_memory,
    )
    out.save("eigs_power", power)
    lam = np.asarray(top.eigenvalues)
    plam = np.asarray(power.eigenvalues)
    err = np.abs(plam - lam) / np.maximum(np.abs(lam), 1e-300)
    say(
        f"Power iteration (PyHessian's rule, tol 1e-3): {power.num_matvecs} HVPs, "
        f"{power.seconds:.2f} s, max relative difference to Lanczos {err.max():.2g}"
    )
    out.figure(
        "eigs_power",
        "eigs_methods",
        "Lanczos vs PyHessian-style power iteration",
        plots.plot_method_comparison({"Lanczos": top, "power iteration\n(PyHessian rule)": power}),
        "The same top-k eigenvalues from Lanczos (full reorthogonalization, residual "
        "stopping rule) and from deflated power iteration with PyHessian's stopping rule "
        "(relative change of the Rayleigh quotient below 1e-3), and what each cost.",
    )


def reference_eigs(s: Setup, k: int, out: Outcome, name: str = "eigs") -> Any:
    """Top-k eigenpairs computed to serve another analysis (a sketch or a landscape)."""
    top = eigsh(
        hessian(s), k, tol=REFERENCE_TOL, seed=s.seed, progress=True, max_memory=s.max_memory
    )
    out.save(name, top)
    warning = unconverged(
        top,
        REFERENCE_TOL,
        "They are the reference of the sketch or landscape analysis; compute them with "
        "'eigs --max-matvecs N' (a larger budget) to check.",
    )
    if warning is not None:
        out.warn(name, warning)
    return top


# =============================================================================== trace
def run_trace(s: Setup, opts: TraceOptions, resume: Resume, out: Outcome) -> Any:
    """The trace with a standard error, to a budget or a relative standard-error target."""
    tr = trace(
        hessian(s),
        method=opts.method,  # type: ignore[arg-type]
        # a standard-error target replaces the fixed budget
        num_matvecs=None if opts.rtol is not None else opts.num_matvecs,
        rtol=opts.rtol,
        seed=s.seed,
        progress=True,
        max_memory=s.max_memory,
        **run_state(s, resume, "trace"),
    )
    out.save("trace", tr)
    say(
        f"\nTrace ({tr.method}): {tr.estimate:.6g} ± {tr.stderr:.2g} (1 standard error), "
        f"{tr.num_matvecs} HVPs, {tr.seconds:.2f} s"
    )
    return tr


def _loss_fn(s: Setup) -> dict[str, Any]:
    """``loss_fn=`` for the analyses that take the model's loss, when --loss gave one."""
    return {"loss_fn": s.loss_fn} if s.loss_fn is not None else {}


def _layer_label(model: nn.Module, layer: str, size: int) -> str:
    """``"conv1 Conv2d (456)"``: a layer's name, module type and parameter count."""
    try:
        kind = type(model.get_submodule(layer)).__name__
    except AttributeError:
        kind = "parameters"
    return f"{layer or '(top level)'} {kind} ({size:,})"


def run_layers(s: Setup, opts: TraceOptions, out: Outcome, blocks: str | None = None) -> Any:
    """The trace and every layer's share of it, from one estimate (`blocks`: grouped by
    "layers" or "modules" instead of by the module holding each parameter)."""
    tr = layer_traces(
        s.model,
        s.criterion,
        s.data.batches,
        method=opts.method,  # type: ignore[arg-type]
        num_matvecs=opts.num_matvecs,
        seed=s.seed,
        params=s.params,
        progress=True,
        blocks=blocks,
        **_loss_fn(s),
    )
    out.save("layers", tr)
    est = dict(tr.block_estimates or {})
    err = dict(tr.block_stderrs or {})
    sizes = dict(tr.block_sizes or {})
    labels = {n: _layer_label(s.model, n, sizes.get(n, 0)) for n in est}
    if est:
        top_layer = max(est, key=lambda n: est[n])
        out.entry("layers").answer = (
            f"trace = {tr.estimate:.5g} ± {tr.stderr:.2g} (1 standard error); largest layer: "
            f"{labels[top_layer]}, {100 * est[top_layer] / tr.estimate:.0f}% of the trace"
        )
    say(
        f"\nTrace ({tr.method}): {tr.estimate:.6g} ± {tr.stderr:.2g} (1 standard error), "
        f"{tr.num_matvecs} HVPs, {tr.seconds:.2f} s; per layer, from the same probes:"
    )
    say(
        table(
            ["layer (parameters)", "trace", "std. error", "share"],
            [
                (labels[n], est[n], err.get(n, float("nan")), f"{100 * est[n] / tr.estimate:.1f}%")
                for n in est
            ],
        )
    )
    fig = plots.plot_layer_traces(
        {labels[n]: (est[n], err.get(n, float("nan"))) for n in est},
        title=f"Per-layer Hessian traces (total {tr.estimate:.4g} ± {tr.stderr:.2g}, "
        f"{tr.method}, {tr.num_matvecs} HVPs)",
    )
    out.figure(
        "layers",
        "layers",
        "Per-layer Hessian traces",
        fig,
        "The trace of each layer's diagonal Hessian block, all from the same probes (their sum "
        "is the total trace), with ±1 standard error; parameter counts in brackets. Layers "
        "that keep a high trace are the sharp ones.",
    )
    return tr


# =============================================================================== density
def run_density(s: Setup, opts: DensityOptions, resume: Resume, out: Outcome, top: Any) -> Any:
    """The spectral density by stochastic Lanczos quadrature (`top` marks the top-k)."""
    den = density(
        hessian(s),
        num_steps=opts.num_steps,
        num_probes=opts.num_probes,
        seed=s.seed,
        progress=True,
        max_memory=s.max_memory,
        **run_state(s, resume, "density"),
    )
    out.save("density", den)
    nodes = np.asarray(den.nodes)
    lmax = float(np.max(np.abs(nodes)))
    neg = float(den.cdf(-1e-3 * lmax))
    above = float(den.count_above(0.01 * lmax))
    out.entry("density").answer = (
        f"spectrum in [{nodes.min():.4g}, {nodes.max():.4g}]; about {above:.0f} of {den.n:,} "
        f"eigenvalues above 1% of max|λ|; {100 * neg:.2f}% below -0.1% of max|λ|"
    )
    say(
        f"\nDensity (SLQ, {opts.num_steps} steps × {opts.num_probes} probes, {den.num_matvecs} "
        f"HVPs): spectrum in [{nodes.min():.4g}, {nodes.max():.4g}]; {100 * neg:.2f}% of "
        f"eigenvalues below -0.1% of max|λ|; about {above:.0f} of {den.n} above 1% of max|λ|"
    )
    out.figure(
        "density",
        "density",
        "Spectral density",
        plots.plot_density(den, eigenvalues=None if top is None else top.eigenvalues),
        "Stochastic Lanczos quadrature: each quadrature node broadened by a Gaussian of its "
        "local spacing. Left: density on a log scale; right: the cumulative fraction of "
        "eigenvalues (red lines: top-k from Lanczos).",
    )
    return den


def run_hessian_vs_ggn(s: Setup, opts: DensityOptions, out: Outcome) -> dict[str, Any]:
    """The Hessian's and the GGN's densities (same probes), drawn together.

    Their difference is the curvature of the loss's residual term: where the
    Hessian has negative eigenvalues, the GGN (positive semi-definite) has none.
    """
    dens = {}
    for curvature, label in (("hessian", "Hessian"), ("ggn", "GGN")):
        dens[label] = density(
            hessian(s, curvature),
            num_steps=opts.num_steps,
            num_probes=opts.num_probes,
            seed=s.seed,
            progress=True,
            max_memory=s.max_memory,
        )
        out.save(f"density_{curvature}", dens[label])
        nodes = np.asarray(dens[label].nodes)
        neg = float(dens[label].cdf(-1e-3 * float(np.max(np.abs(nodes)))))
        out.entry(f"density_{curvature}").answer = (
            f"spectrum in [{nodes.min():.4g}, {nodes.max():.4g}]; {100 * neg:.2f}% of "
            "eigenvalues below -0.1% of max|λ|"
        )
        say(f"\n{label} density (SLQ): {out.entry(f'density_{curvature}').answer}")
    out.figure(
        "density_ggn",
        "hessian_vs_ggn",
        "Hessian and GGN spectral densities",
        plots.plot_densities(dens),
        "Stochastic Lanczos quadrature with the same probes for both matrices. The GGN "
        "(generalized Gauss-Newton) drops the term of the Hessian that carries the network's "
        "second derivatives, so it is positive semi-definite; where the curves differ, and "
        "in the Hessian's negative eigenvalues, is the curvature of that residual term.",
    )
    return dens


# =============================================================================== sketch
def run_sketch(s: Setup, opts: SketchOptions, out: Outcome, top: Any) -> dict[str, Any]:
    """Sketches of each kind, compared with the Lanczos top-k `top` where given."""
    kinds: tuple[Any, ...] = SKETCH_KINDS if opts.kind == "all" else (opts.kind,)
    if opts.size >= s.num_params:
        raise CLIError(f"--size {opts.size} must be below the parameter count {s.num_params}")
    results = {}
    for kind in kinds:
        steps = DEFAULT_POWER_STEPS[kind] if opts.power_steps is None else opts.power_steps
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            sk = sketch(
                hessian(s),
                opts.size,
                kind=kind,
                power_steps=steps if kind != "rademacher" else 0,
                seed=s.seed,
                progress=True,
            )
        out.save(f"sketch_{kind}", sk)
        for w in caught:  # e.g. a one-pass Nystrom sketch of an indefinite Hessian
            if not issubclass(w.category, ConvergenceWarning):  # the CLI says those itself
                out.warn(f"sketch_{kind}", str(w.message))
        out.entry(f"sketch_{kind}").answer = f"{summarize(sk)}. Good for {SKETCH_PURPOSE[kind]}"
        results[kind] = sk
    k = min(opts.k, opts.size)
    say(f"\nSketches of size {opts.size} (top-{k} eigenvalues):")
    rows: list[Sequence[Any]] = []
    ref = None if top is None else np.asarray(top.eigenvalues)[:k]
    if ref is not None:
        rows.append(("Lanczos (reference)", top.num_matvecs, *[f"{v:.5g}" for v in ref[:5]]))
    for kind, sk in results.items():
        lam = np.asarray(sk.eigenvalues)[:k]
        cells = [f"{v:.5g}" for v in lam[:5]]
        if ref is not None:
            err = np.abs(lam - ref[: lam.size]) / np.abs(ref[: lam.size])
            cells.append(f"{100 * err.max():.1f}%")
        rows.append((kind, sk.num_matvecs, *cells))
    header = ["sketch", "HVPs", *[f"λ{i + 1}" for i in range(min(k, 5))]]
    if ref is not None:
        header.append(f"max err top-{k}")
        rows[0] = (*rows[0], "")
    say(table(header, rows))
    for kind, sk in results.items():
        q = int(sk.settings.get("power_steps", 0) or 0)
        passes = f", {q} power step{'s' if q != 1 else ''}" if kind != "rademacher" else ""
        say(f"  {kind}{passes}: good for {SKETCH_PURPOSE[kind]}")
    if ref is not None:
        out.figure(
            "sketch",
            "sketch",
            "Sketches vs Lanczos",
            plots.plot_sketch(results, top, k=k),
            f"Top-{k} eigenvalues of each size-{opts.size} sketch against Lanczos (left) and "
            "their relative error (right). The study's Rademacher sketch SᵀHS is trace-"
            "preserving but not eigenvalue-preserving; the range finder and Nystrom never "
            "over-estimate, and Nystrom needs a power step on a spread spectrum.",
        )
    return results


# =============================================================================== landscape
def _auto_span(top: Any) -> float:
    """A span where the quadratic model along v1 rises by about one loss unit."""
    lam1 = float(np.max(np.abs(np.asarray(top.eigenvalues)))) if top is not None else 1.0
    return float(math.sqrt(2.0 / max(lam1, 1e-12)))


_DIRECTIONS = {
    "eigen": "the top Hessian eigenvectors",
    "random": "random filter-normalized directions (Li et al. 2018)",
    "gradient": "the gradient",
}


def run_landscape(s: Setup, opts: LandscapeOptions, out: Outcome, top: Any) -> Any:
    """A landscape along the top eigenvectors (plus 1-D curves along v1, v2 and a random
    unit direction), or along random filter-normalized or gradient directions."""
    directions, dims = opts.directions, int(opts.dims)
    dirs: list[dict[str, torch.Tensor]] = []
    curv = np.zeros(0)
    if directions == "eigen":
        if top is None or len(top.eigenvalues) < dims:
            top = reference_eigs(s, max(dims, 2), out)
        op = hessian(s)
        dirs = [op.unflatten(top.eigenvectors[:, i]) for i in range(dims)]
        curv = np.asarray(top.eigenvalues, dtype=np.float64)[:dims]
    span = float(opts.span) if opts.span is not None else _auto_span(top)
    if span <= 0:
        raise CLIError(f"--span must be positive, got {span}")
    land = loss_landscape(
        s.model,
        s.criterion,
        s.data.batches,
        dirs if dirs else directions,
        span=span,
        steps=opts.steps,
        dims=None if dirs else dims,
        params=s.params,
        seed=s.seed,
        slopes=True,
        progress=True,
        **_loss_fn(s),
    )
    if dirs:
        land = dataclasses.replace(land, kind="eigen", curvatures=curv)
    name = f"landscape_{directions}_{dims}d"
    out.save(name, land)
    losses = np.asarray(land.losses)
    say(
        f"\nLoss landscape along {directions} directions ({'×'.join(map(str, losses.shape))} "
        f"grid, span ±{span:.3g}): loss {land.origin_loss:.4g} at the parameters, "
        f"{losses.min():.4g} to {losses.max():.4g} on the grid, {land.seconds:.2f} s"
    )
    out.figure(
        name,
        name,
        f"Loss landscape along {_DIRECTIONS[directions]}",
        plots.plot_landscape(land),
        "The loss on a grid through the parameters (★); eigenvector coordinates are distances "
        "in parameter space, so the curvature along each axis at ★ is its eigenvalue."
        if dirs
        else "The loss on a grid through the parameters (★).",
    )
    if dirs and opts.curves:
        _landscape_curves(s, dirs, curv, span, opts.steps, out)
    return land


def _landscape_curves(
    s: Setup,
    dirs: list[dict[str, torch.Tensor]],
    curv: np.ndarray,
    span: float,
    steps: int,
    out: Outcome,
) -> None:
    """1-D curves along v1, v2 and a random unit direction, in one figure."""
    names = [n for n, _ in select_parameters(s.model, s.params)]
    (rnd,) = random_directions(s.model, 1, seed=s.seed, params=names, filter_normalize=False)
    steps1 = max(int(steps), 2) * 2 - 1

    def curve(direction: dict[str, torch.Tensor]) -> Any:
        return loss_landscape(
            s.model,
            s.criterion,
            s.data.batches,
            direction,
            span=span,
            steps=steps1,
            params=s.params,
            slopes=True,
            **_loss_fn(s),
        )

    curves: dict[str, Any] = {}
    for i, d in enumerate(dirs[:2]):
        curves[f"v{i + 1} (λ{i + 1} = {curv[i]:.3g})"] = dataclasses.replace(
            curve(d), kind="eigen", curvatures=curv[i : i + 1]
        )
    curves["random unit direction"] = curve(rnd)
    out.figure(
        "landscape_1d",
        "landscape_1d",
        "Loss along single directions",
        plots.plot_landscapes_1d(curves),
        "The loss along the top eigenvectors and along a random unit direction, each "
        "eigenvector with its quadratic model L0 + gα + λα²/2 (dashed): the sharpest "
        "direction rises fastest, while a random direction barely sees the curvature.",
    )


# =============================================================================== sets
def run_analyses(s: Setup, what: Sequence[str], opts: Options, out: Outcome) -> Outcome:
    """Run the analyses named in `what`, each once, the top eigenpairs first."""
    top = None
    if "eigs" in what or "landscape" in what or "sketch" in what:
        top = run_eigs(s, opts.eigs, opts.resume, out)
        if top.which != "LA" and ("landscape" in what or "sketch" in what):
            # sketches and eigen-direction landscapes compare with the top of the spectrum
            top = reference_eigs(s, opts.eigs.k, out, name="eigs_top")
    if "layers" in what:
        # one estimate serves both: the per-layer traces sum to the total
        tr = run_layers(s, opts.trace, out)
        if "trace" in what:
            out.save("trace", tr, write=False)
    elif "trace" in what:
        run_trace(s, opts.trace, opts.resume, out)
    if "density" in what:
        run_density(s, opts.density, opts.resume, out, top)
    if "hessian-vs-ggn" in what:
        run_hessian_vs_ggn(s, opts.density, out)
    if "sketch" in what:
        run_sketch(s, opts.sketch, out, top)
    if "landscape" in what:
        run_landscape(s, opts.landscape, out, top)
    if "blocks" in what:
        run_blocks(s, opts.blocks, out)
    if "eigs" not in what and out.result("eigs") is not None:
        # computed only to serve other analyses; keep it in the files but say so
        note("(top eigenvalues were computed for the sketch/landscape analyses)")
    return out
