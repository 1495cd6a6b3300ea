"""The `hessian-spectra` argument parser: every command, its options and an example.

The options are defined once per group (model and data, eigenvalues, trace,
density, sketch, landscape, interruptions) and shared by the commands that
take them; the ``experiment`` command comes from `hessian_spectra.experiments`.
"""

from __future__ import annotations

import argparse

from hessian_spectra import experiments
from hessian_spectra.cli.analyses import ANALYSES, SKETCH_KINDS
from hessian_spectra.cli.blocks import GROUPINGS as BLOCK_GROUPINGS
from hessian_spectra.cli.commands import (
    cmd_analyze,
    cmd_demo,
    cmd_density,
    cmd_eigs,
    cmd_landscape,
    cmd_sketch,
    cmd_trace,
)
from hessian_spectra.cli.errors import PROG
from hessian_spectra.cli.train import cmd_train
from hessian_spectra.problems import BUILTIN_MODELS


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks; show defaults that say something."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or "default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: {default})"


def _inputs(p: argparse.ArgumentParser, *, k: bool = True) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model",
        default="digits-cnn",
        help="a built-in model (" + ", ".join(BUILTIN_MODELS) + ") or package.module:factory "
        "(a function returning an nn.Module, a HuggingFace model included), e.g. --model "
        "mypkg.nets:build",
    )
    g.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a state_dict written by torch.save(model.state_dict(), FILE), e.g. --checkpoint "
        "runs/model.pt. Without it digits-cnn is trained here (about 5 s), other built-in "
        "models are analysed at their seeded initialization and a factory's model as it "
        "returns it",
    )
    g.add_argument(
        "--checkpoint-prefix",
        metavar="PREFIX",
        help="map a prefix of the checkpoint's keys: PREFIX strips it from the keys that start "
        "with it and drops the others (e.g. 'model.' of a Lightning checkpoint), OLD=NEW "
        "replaces it, e.g. --checkpoint-prefix model.",
    )
    g.add_argument(
        "--data",
        default="digits",
        help="digits, cifar10:PATH (the python-format CIFAR-10 batches in PATH), cifar10-test:PATH,"
        " or package.module:factory returning (inputs, targets), a dict batch of tensors (e.g. "
        "input_ids and labels for a HuggingFace model), a list of dict batches, a Dataset or a "
        "DataLoader; e.g. --data cifar10:~/data/cifar-10-batches-py",
    )
    g.add_argument(
        "--samples",
        type=int,
        metavar="N",
        help="use a fixed subset of N samples, the same every run, e.g. --samples 512",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="samples per batch of the Hessian's data pass (default: one batch), e.g. "
        "--batch-size 128",
    )
    g.add_argument(
        "--loss",
        metavar="LOSS",
        help="cross-entropy, mse, model (the model's own loss, model(**batch).loss) or "
        "package.module:function (a loss_fn(model, batch) returning the batch's mean loss); "
        "default: the model's own loss for dict batches, else cross-entropy",
    )
    g.add_argument(
        "--curvature",
        choices=("hessian", "ggn", "fisher"),
        default="hessian",
        help="the matrix to analyse: the loss Hessian, the GGN (generalized Gauss-Newton, "
        "positive semi-definite) or the empirical Fisher, e.g. --curvature ggn",
    )
    g.add_argument("--device", default="cpu", help="where to compute, e.g. --device cuda:0")
    g.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="precision of the model and the Hessian products, e.g. --dtype float64",
    )
    g.add_argument(
        "--params",
        metavar="REGEX",
        help="analyse only parameters whose name matches REGEX (re.search), e.g. "
        "--params 'layer3|fc' for the last stage and the head",
    )
    o = p.add_argument_group("run")
    o.add_argument("--seed", type=int, default=0, help="seed of every random start and probe")
    _threads(o)
    _max_memory(o)
    o.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the results (default: hessian-spectra-<command>), e.g. --out runs/a",
    )
    if k:
        o.add_argument("--k", type=int, default=10, help="how many top eigenvalues, e.g. --k 20")


def _threads(g: argparse._ActionsContainer) -> None:
    g.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads torch may use (torch.set_num_threads), e.g. --threads 2 on a shared "
        "machine (default: torch's, one per core)",
    )


def _max_memory(g: argparse._ActionsContainer) -> None:
    g.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="refuse, before any work, analyses whose vectors (Lanczos bases, probes, "
        "sketches) would take more than SIZE, e.g. --max-memory 8GB (default: the memory "
        "available on the device)",
    )


def _resume_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("interruptions")
    g.add_argument(
        "--save-every",
        type=int,
        default=10,
        metavar="N",
        help="save the run's state to OUT/<analysis>.ckpt every N iterations (Lanczos steps, "
        "trace probe blocks, density steps); 0 saves nothing",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the runs saved in the output folder (after Ctrl-C or a crash); the "
        "result is identical to an uninterrupted run",
    )


def _eig_options(p: argparse.ArgumentParser, *, full: bool) -> None:
    g = p.add_argument_group("eigenvalues")
    g.add_argument(
        "--tol", type=float, default=1e-4, help="relative residual tolerance, e.g. --tol 1e-6"
    )
    g.add_argument(
        "--max-matvecs",
        type=int,
        metavar="N",
        help="stop after N HVPs, e.g. 500 (default: eigsh's budget, at least 1000); a run "
        "that stops before its pairs converge says so",
    )
    g.add_argument(
        "--max-basis",
        type=int,
        metavar="M",
        help="keep at most M Lanczos vectors (thick restarts); lowers the memory of a large "
        "--k at the cost of more HVPs, e.g. --max-basis 3000",
    )
    if full:
        g.add_argument(
            "--which",
            choices=("LA", "SA", "LM", "BE"),
            default="LA",
            help="LA largest, SA smallest (negative curvature), LM largest magnitude, BE both ends",
        )
        g.add_argument(
            "--method",
            choices=("lanczos", "block", "power", "rqi"),
            default="lanczos",
            help="eigensolver: lanczos, block (block Lanczos), power (PyHessian's power "
            "iteration), rqi (sketch + Rayleigh quotient iteration)",
        )
        g.add_argument("--block-size", type=int, default=8, help="block size of --method block")
        g.add_argument(
            "--verify",
            action="store_true",
            help="recompute the residuals with k extra HVPs",
        )
    g.add_argument(
        "--compare-power",
        action="store_true",
        help="also run PyHessian-style power iteration (its stopping rule) for comparison",
    )


def _trace_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("trace")
    g.add_argument(
        "--trace-method",
        choices=("xtrace", "hutch++", "hutchinson"),
        default="xtrace",
        help="trace estimator",
    )
    g.add_argument("--num-matvecs", type=int, default=60, help="HVP budget of the trace, e.g. 120")


def _density_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("density")
    g.add_argument("--num-steps", type=int, default=80, help="Lanczos steps per probe")
    g.add_argument("--num-probes", type=int, default=2, help="random probes (spread = error bar)")


def _sketch_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sketch")
    g.add_argument("--size", type=int, default=50, help="sketch size d, e.g. --size 100")
    g.add_argument(
        "--kind",
        choices=(*SKETCH_KINDS, "all"),
        default="all",
        help="rademacher (the study's SᵀHS), rangefinder, nystrom, or all three",
    )
    g.add_argument(
        "--power-steps",
        type=int,
        help="extra range passes of rangefinder and nystrom (default: 0 for rangefinder, 1 "
        "for nystrom, whose one-pass eigenvalues are far too low on a spread spectrum)",
    )


def _landscape_options(p: argparse.ArgumentParser, *, full: bool) -> None:
    g = p.add_argument_group("landscape")
    if full:
        g.add_argument(
            "--directions",
            choices=("eigen", "random", "gradient"),
            default="eigen",
            help="top Hessian eigenvectors, random filter-normalized (Li et al. 2018), gradient",
        )
        g.add_argument("--dims", type=int, choices=(1, 2), default=2, help="a line or a plane")
    g.add_argument(
        "--span",
        type=float,
        help="grid from -SPAN to SPAN along each direction (default: where the loss along "
        "the top eigenvector rises by about 1), e.g. --span 0.5",
    )
    g.add_argument("--steps", type=int, default=25, help="grid points per direction")


def build_parser() -> argparse.ArgumentParser:
    """The `hessian-spectra` argument parser with every command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_Formatter,
        description="Spectra of neural-network Hessians from Hessian-vector products: top-k "
        "eigenpairs, trace with error bars, spectral density, sketches, loss landscapes.",
        epilog="examples:\n"
        f"  {PROG} demo\n"
        f"  {PROG} analyze --model resnet20 --checkpoint model.pt --data cifar10:~/cifar "
        "--samples 1000\n"
        f"  {PROG} eigs --k 20 --tol 1e-6\n"
        f"  {PROG} COMMAND --help",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"example:\n  {example}",
            formatter_class=_Formatter,
        )

    p = add(
        "demo",
        "train the digits CNN for a few seconds, run every analysis and write report.html",
        f"{PROG} demo --out demo-report",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: hessian-spectra-demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and every probe")
    p.add_argument("--k", type=int, default=10, help="top eigenvalues to compute")
    p.add_argument("--tol", type=float, default=1e-4, help="relative residual tolerance")
    p.add_argument("--samples", type=int, metavar="N", help="analyse a fixed subset of N digits")
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="precision of the analysis (float64 is about 3x slower on a CPU)",
    )
    p.add_argument("--train-steps", type=int, default=200, help="full-batch Adam steps")
    p.add_argument("--num-matvecs", type=int, default=60, help="HVP budget of the trace")
    p.add_argument("--num-steps", type=int, default=80, help="Lanczos steps of the density")
    p.add_argument("--num-probes", type=int, default=2, help="probes of the density")
    p.add_argument("--size", type=int, default=50, help="sketch size")
    p.add_argument("--steps", type=int, default=25, help="landscape grid points per direction")
    _threads(p)
    _max_memory(p)
    p.set_defaults(func=cmd_demo)

    p = add(
        "analyze",
        "run the analyses on your model and data and write report.html",
        f"{PROG} analyze --model resnet20 --checkpoint model.pt --data cifar10:~/cifar "
        "--samples 1000 --what eigs,trace,density",
    )
    _inputs(p)
    p.add_argument(
        "--what",
        default=",".join(ANALYSES),
        help="comma-separated analyses from " + ",".join(ANALYSES) + ", e.g. --what eigs,trace; "
        "also hessian-vs-ggn (the Hessian's and the GGN's densities in one figure) and blocks "
        "(per-block spectra, see --blocks)",
    )
    _eig_options(p, full=False)
    p.add_argument(
        "--which",
        choices=("LA", "SA", "LM", "BE"),
        default="LA",
        help="the eigenvalues of the eigs analysis: LA largest, SA smallest, LM largest "
        "magnitude, BE both ends (half the --k from each)",
    )
    p.add_argument(
        "--blocks",
        choices=BLOCK_GROUPINGS,
        help="also per-block spectra (adds the blocks analysis): layers (one block per "
        "repeated layer, e.g. GPT-2's transformer.h.N, with embeddings and head), modules "
        "(embeddings, attention, mlp, norm, head) or parameters; each block's trace, top "
        "eigenvalues (at most 3) and density, and the Jensen-Shannon distances between the "
        "densities (Zhang et al. 2024)",
    )
    _trace_options(p)
    _density_options(p)
    _sketch_options(p)
    _landscape_options(p, full=False)
    _resume_options(p)
    p.set_defaults(func=cmd_analyze, train_steps=200)

    p = add("eigs", "top-k eigenpairs with residuals", f"{PROG} eigs --k 20 --which LA --tol 1e-6")
    _inputs(p)
    _eig_options(p, full=True)
    _resume_options(p)
    p.set_defaults(func=cmd_eigs, train_steps=200)

    p = add(
        "trace",
        "the Hessian trace with a standard error",
        f"{PROG} trace --trace-method xtrace --num-matvecs 120 --layers",
    )
    _inputs(p, k=False)
    _trace_options(p)
    p.add_argument("--rtol", type=float, help="stop when stderr <= rtol * |trace|, e.g. 0.01")
    p.add_argument("--layers", action="store_true", help="per-layer traces from the same probes")
    p.add_argument(
        "--blocks",
        choices=BLOCK_GROUPINGS,
        help="per-block traces from the same probes, by layers (one block per repeated layer, "
        "e.g. GPT-2's transformer.h.N, with embeddings and head) or modules (embeddings, "
        "attention, mlp, norm, head), e.g. --blocks modules",
    )
    _resume_options(p)
    p.set_defaults(func=cmd_trace, train_steps=200)

    p = add(
        "density",
        "the eigenvalue density by stochastic Lanczos quadrature",
        f"{PROG} density --num-steps 100 --num-probes 4",
    )
    _inputs(p, k=False)
    _density_options(p)
    _resume_options(p)
    p.set_defaults(func=cmd_density, train_steps=200)

    p = add(
        "sketch",
        "Hessian sketches (SᵀHS, range finder, Nyström) vs Lanczos",
        f"{PROG} sketch --size 100 --kind rangefinder --power-steps 1",
    )
    _inputs(p)
    _sketch_options(p)
    p.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="skip the Lanczos reference for the top-k",
    )
    p.set_defaults(func=cmd_sketch, train_steps=200)

    p = add(
        "landscape",
        "the loss on a line or plane through the parameters",
        f"{PROG} landscape --directions random --dims 2 --span 1 --steps 31",
    )
    _inputs(p, k=False)
    _landscape_options(p, full=True)
    p.set_defaults(func=cmd_landscape, train_steps=200, k=None)

    p = add(
        "train",
        "train a built-in model, optionally monitoring its spectrum every N epochs",
        f"{PROG} train --model resnet20 --data cifar10:~/cifar --epochs 160 --monitor-every 10",
    )
    p.add_argument(
        "--model",
        default="digits-cnn",
        help="digits-cnn (full-batch Adam) or a resnet (SGD, the study's recipe)",
    )
    p.add_argument("--data", help="digits (default for digits-cnn) or cifar10:PATH")
    p.add_argument("--checkpoint", metavar="FILE", help="start from this state_dict")
    p.add_argument("--samples", type=int, metavar="N", help="train on a fixed subset of N")
    p.add_argument("--epochs", type=int, help="epochs (default: 200 for digits, 160 for resnets)")
    p.add_argument(
        "--lr",
        type=float,
        help="learning rate (default: 0.01 Adam / 0.1 SGD / automatic for sketchy-sgd)",
    )
    p.add_argument("--batch-size", type=int, help="default: full batch (digits) / 128")
    p.add_argument(
        "--optimizer",
        choices=("sgd", "adam", "sketchy-sgd"),
        help="default: adam (digits) / sgd; sketchy-sgd preconditions with a Nystrom sketch of "
        "the Hessian refreshed once per epoch and sets its own step size (hs.optim.SketchySGD)",
    )
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, help="default: 0 (digits) / 5e-4")
    p.add_argument(
        "--decay",
        type=float,
        nargs="+",
        metavar="FRACTION",
        help="divide the lr by 10 at these fractions of the epochs (default for resnets: 0.5 0.75)",
    )
    p.add_argument(
        "--monitor-every",
        type=int,
        default=0,
        metavar="N",
        help="measure the spectrum every N epochs (0: never), e.g. 10",
    )
    p.add_argument(
        "--monitor-samples",
        type=int,
        default=512,
        help="fixed subset the monitored Hessian is taken on",
    )
    p.add_argument("--monitor-layers", action="store_true", help="also per-layer traces")
    p.add_argument(
        "--compare-cold",
        action="store_true",
        help="also run cold starts to measure the HVPs the warm starts save",
    )
    p.add_argument("--k", type=int, default=3, help="top eigenvalues to monitor")
    p.add_argument("--device", default="cpu", help="e.g. cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of init, shuffling and probes")
    p.add_argument("--out", metavar="DIR", help="output folder (default: hessian-spectra-train)")
    p.set_defaults(func=cmd_train)

    experiments.register(sub)
    return parser
