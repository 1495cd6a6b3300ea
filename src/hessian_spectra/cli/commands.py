"""The analysis commands: each turns its parsed options into explicit records and runs.

This is the one place that reads an `argparse.Namespace`; everything below it
(`setup`, `analyses`, `output`) takes typed arguments.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from hessian_spectra.cli.analyses import (
    ANALYSES,
    DensityOptions,
    EigsOptions,
    LandscapeOptions,
    Options,
    SketchOptions,
    TraceOptions,
    parse_what,
    reference_eigs,
    run_analyses,
    run_density,
    run_eigs,
    run_landscape,
    run_layers,
    run_sketch,
    run_trace,
)
from hessian_spectra.cli.blocks import BlocksOptions
from hessian_spectra.cli.memory import memory_check
from hessian_spectra.cli.output import Outcome, finish, say, write_report
from hessian_spectra.cli.setup import CURVATURES, DTYPES, Inputs, Resume, build_setup


# =============================================================================== options
def inputs_of(args: argparse.Namespace) -> Inputs:
    """The model-and-data options of a command that has them all."""
    return Inputs(
        model=args.model,
        checkpoint=args.checkpoint,
        data=args.data,
        samples=args.samples,
        batch_size=args.batch_size,
        loss=args.loss,
        device=args.device,
        dtype=args.dtype,
        params=args.params,
        seed=args.seed,
        out=args.out,
        max_memory=args.max_memory,
        curvature=args.curvature,
        checkpoint_prefix=args.checkpoint_prefix,
    )


def resume_of(args: argparse.Namespace) -> Resume:
    return Resume(save_every=args.save_every, resume=args.resume)


def eigs_of(args: argparse.Namespace, *, full: bool) -> EigsOptions:
    """``--k``, ``--tol``, ``--compare-power``; with `full` also the eigs command's options."""
    if not full:
        return EigsOptions(
            k=args.k,
            tol=args.tol,
            which=getattr(args, "which", "LA"),
            max_matvecs=args.max_matvecs,
            max_basis=args.max_basis,
            compare_power=args.compare_power,
        )
    return EigsOptions(
        k=args.k,
        tol=args.tol,
        which=args.which,
        method=args.method,
        block_size=args.block_size,
        max_matvecs=args.max_matvecs,
        max_basis=args.max_basis,
        verify=args.verify,
        compare_power=args.compare_power,
    )


def trace_of(args: argparse.Namespace, *, rtol: float | None = None) -> TraceOptions:
    return TraceOptions(method=args.trace_method, num_matvecs=args.num_matvecs, rtol=rtol)


def blocks_of(args: argparse.Namespace) -> BlocksOptions:
    """``--blocks`` and the budgets it shares with the trace, eigs and density options."""
    return BlocksOptions(
        grouping=args.blocks or "layers",
        k=min(args.k, 3),
        tol=args.tol,
        trace_method=args.trace_method,
        num_matvecs=args.num_matvecs,
        num_steps=args.num_steps,
        num_probes=args.num_probes,
    )


def density_of(args: argparse.Namespace) -> DensityOptions:
    return DensityOptions(num_steps=args.num_steps, num_probes=args.num_probes)


def sketch_of(args: argparse.Namespace) -> SketchOptions:
    return SketchOptions(size=args.size, kind=args.kind, power_steps=args.power_steps, k=args.k)


def _memory(
    what: Sequence[str], opts: Options, inputs: Inputs, *, reference: bool = True
) -> Callable[[int], None]:
    """The memory check of the analyses in `what`, run once the parameter count is known."""
    return memory_check(
        what, opts, DTYPES[inputs.dtype], inputs.device, inputs.max_memory, reference=reference
    )


# =============================================================================== commands
def cmd_demo(args: argparse.Namespace) -> int:
    """Train the digits CNN, run every analysis, write report.html."""
    t0 = time.perf_counter()
    inputs = Inputs(
        samples=args.samples,
        dtype=args.dtype,
        seed=args.seed,
        out=args.out,
        max_memory=args.max_memory,
    )
    opts = Options(
        eigs=EigsOptions(k=args.k, tol=args.tol, compare_power=True),
        trace=TraceOptions(num_matvecs=args.num_matvecs),
        density=density_of(args),
        sketch=SketchOptions(size=args.size, k=args.k),
        landscape=LandscapeOptions(steps=args.steps),
    )
    s = build_setup(
        inputs,
        command="demo",
        k=args.k,
        train_steps=args.train_steps,
        check=_memory(ANALYSES, opts, inputs),
    )
    out = run_analyses(s, ANALYSES, opts, Outcome(s.out))
    training = (s.train_note, s.train_seconds) if s.train_seconds else None
    path = write_report(
        out,
        title="Hessian spectrum of the digits CNN",
        subtitle="hessian-spectra demo: a 2,650-parameter CNN trained on scikit-learn's digits, "
        f"analysed on {s.data.num_samples:,} samples with Hessian-vector products only.",
        settings=s.settings,
        training=training,
    )
    finish(out, t0)
    say(f"Open the report: {path.resolve()}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Run the chosen analyses on the user's model and data, write report.html."""
    t0 = time.perf_counter()
    what = parse_what(args.what)
    if args.blocks is not None and "blocks" not in what:
        what.append("blocks")
    inputs = inputs_of(args)
    opts = Options(
        eigs=eigs_of(args, full=False),
        trace=trace_of(args),
        density=density_of(args),
        sketch=sketch_of(args),
        landscape=LandscapeOptions(span=args.span, steps=args.steps),
        resume=resume_of(args),
        blocks=blocks_of(args),
    )
    s = build_setup(
        inputs,
        command="analyze",
        k=args.k,
        train_steps=args.train_steps,
        check=_memory(what, opts, inputs),
    )
    out = run_analyses(s, what, opts, Outcome(s.out))
    training = (s.train_note, s.train_seconds) if s.train_seconds else None
    path = write_report(
        out,
        title=f"{CURVATURES[s.curvature].split(' (')[0]} spectrum of {s.model_name}",
        subtitle=f"{s.data.description}; {s.num_params:,} parameters analysed; analyses: "
        + ", ".join(what),
        settings=s.settings,
        training=training,
    )
    finish(out, t0)
    say(f"Open the report: {path.resolve()}")
    return 0


def cmd_eigs(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    inputs, opts = inputs_of(args), eigs_of(args, full=True)
    check = _memory(["eigs"], Options(eigs=opts), inputs)
    s = build_setup(inputs, command="eigs", k=args.k, train_steps=args.train_steps, check=check)
    out = Outcome(s.out)
    run_eigs(s, opts, resume_of(args), out)
    finish(out, t0)
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    inputs = inputs_of(args)
    split = bool(args.layers or args.blocks)
    opts = Options(trace=trace_of(args, rtol=None if split else args.rtol))
    check = _memory(["layers" if split else "trace"], opts, inputs)
    s = build_setup(inputs, command="trace", train_steps=args.train_steps, check=check)
    out = Outcome(s.out)
    if split:
        run_layers(s, trace_of(args), out, blocks=args.blocks)
    else:
        run_trace(s, trace_of(args, rtol=args.rtol), resume_of(args), out)
    finish(out, t0)
    return 0


def cmd_density(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    inputs = inputs_of(args)
    check = _memory(["density"], Options(density=density_of(args)), inputs)
    s = build_setup(inputs, command="density", train_steps=args.train_steps, check=check)
    out = Outcome(s.out)
    run_density(s, density_of(args), resume_of(args), out, None)
    finish(out, t0)
    return 0


def cmd_sketch(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    inputs = inputs_of(args)
    opts = Options(eigs=EigsOptions(k=args.k), sketch=sketch_of(args))
    check = _memory(["sketch"], opts, inputs, reference=args.compare)
    s = build_setup(inputs, command="sketch", k=args.k, train_steps=args.train_steps, check=check)
    out = Outcome(s.out)
    top = reference_eigs(s, min(args.k, args.size), out) if args.compare else None
    run_sketch(s, sketch_of(args), out, top)
    finish(out, t0)
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    inputs = inputs_of(args)
    opts = LandscapeOptions(
        directions=args.directions,
        dims=args.dims,
        span=args.span,
        steps=args.steps,
        curves=args.directions == "eigen",
    )
    check = _memory(["landscape"], Options(landscape=opts), inputs)
    s = build_setup(inputs, command="landscape", train_steps=args.train_steps, check=check)
    out = Outcome(s.out)
    run_landscape(s, opts, out, None)
    finish(out, t0)
    return 0
