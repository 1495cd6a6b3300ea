"""The memory of the requested analyses, estimated and checked before any work.

As soon as the parameter count n is known (the model is built, its data not yet
read, nothing trained), the command estimates what each analysis it will run
allocates for its own vectors: the eigensolver's basis (`eigsh_memory`), the
trace's probes (`trace_memory`), the density's Lanczos bases
(`density_memory`), the sketches' test matrices and the landscape's directions
and grid. The analyses run one after another, so the largest need (plus the
top eigenvectors that later analyses keep) is compared with ``--max-memory``,
or with the memory available on the device; a run that would not fit is
refused with the number and the options that lower it. The model's own
activations during a product come on top and are not counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hessian_spectra.algorithms import (
    available_memory,
    density_memory,
    eigsh_memory,
    trace_memory,
)
from hessian_spectra.cli.analyses import Options
from hessian_spectra.cli.errors import CLIError
from hessian_spectra.cli.units import format_bytes, parse_memory


@dataclass(frozen=True)
class Need:
    """What one analysis allocates for its vectors, and the options that lower it."""

    analysis: str
    bytes: int
    lower: str


def _item(dtype: torch.dtype) -> int:
    return int(torch.empty((), dtype=dtype).element_size())


def _options_error(analysis: str, exc: ValueError) -> CLIError:
    return CLIError(f"the {analysis} options do not fit this model: {exc}")


def _eigs_bytes(n: int, k: int, dtype: torch.dtype, method: str, **kw: int | None) -> int:
    return eigsh_memory(n, k, method=method, dtype=dtype, **kw)  # type: ignore[arg-type]


def _largest_basis(
    n: int, k: int, dtype: torch.dtype, budget: int, max_matvecs: int | None
) -> int | None:
    """The largest --max-basis whose Lanczos run fits in `budget` bytes, or None."""
    lo, hi, best = k + 1, n, None
    while lo <= hi:
        mid = (lo + hi) // 2
        try:
            need = _eigs_bytes(n, k, dtype, "lanczos", max_basis=mid, max_matvecs=max_matvecs)
        except ValueError:  # below the smallest basis a restart needs
            lo = mid + 1
            continue
        if need <= budget:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def _eigs_need(
    label: str,
    n: int,
    k: int,
    dtype: torch.dtype,
    budget: int | None,
    method: str = "lanczos",
    **kw: int | None,
) -> Need:
    try:
        need = _eigs_bytes(n, k, dtype, method, **kw)
    except ValueError as exc:
        raise _options_error(label, exc) from exc
    lower = "ask for fewer eigenpairs with --k, or analyse fewer parameters with --params"
    if method == "lanczos" and budget is not None and need > budget:
        fit = _largest_basis(n, k, dtype, budget, kw.get("max_matvecs"))
        if fit is not None:
            lower += f", or cap the Lanczos basis with --max-basis (--max-basis {fit} fits)"
    elif method == "block":
        lower += ", or lower --block-size"
    return Need(label, need, lower)


def needs(
    what: Sequence[str],
    opts: Options,
    n: int,
    dtype: torch.dtype,
    budget: int | None,
    *,
    reference: bool = True,
) -> list[Need]:
    """The memory each analysis in `what` allocates on an operator of size n (`reference`:
    the top eigenpairs a sketch or an eigen-direction landscape computes to compare with)."""
    e, out = opts.eigs, []
    item = _item(dtype)
    top_k = None
    if "eigs" in what:
        top_k = e.k
        method = e.method or "lanczos"
        kw = {"max_matvecs": e.max_matvecs, "max_basis": e.max_basis}
        if method == "block":
            kw["block_size"] = e.block_size
        out.append(_eigs_need("eigs", n, e.k, dtype, budget, method, **kw))
        if e.compare_power:
            out.append(_eigs_need("eigs (power)", n, e.k, dtype, budget, "power"))
    elif reference and (
        "sketch" in what or ("landscape" in what and opts.landscape.directions == "eigen")
    ):
        top_k = min(e.k, opts.sketch.size) if "sketch" in what else max(opts.landscape.dims, 2)
        out.append(_eigs_need("reference eigs", n, top_k, dtype, budget))
    kept = (top_k or 0) * n * item  # the top eigenvectors stay while later analyses run
    t = opts.trace
    for name, blocks in (("trace", False), ("layers", True), ("blocks", True)):
        if name in what:
            try:
                need = trace_memory(
                    n,
                    method=t.method,  # type: ignore[arg-type]
                    num_matvecs=None if t.rtol is not None else t.num_matvecs,
                    rtol=t.rtol,
                    dtype=dtype,
                    blocks=blocks,
                )
            except ValueError as exc:
                raise _options_error(name, exc) from exc
            lower = "lower --num-matvecs, use --trace-method hutchinson (it keeps no probes), "
            out.append(Need(name, need + kept, lower + "or analyse fewer parameters with --params"))
    # hessian-vs-ggn: two densities in turn; blocks: one per block, each smaller than n
    if "density" in what or "hessian-vs-ggn" in what or "blocks" in what:
        d = opts.density
        need = density_memory(n, num_steps=d.num_steps, num_probes=d.num_probes, dtype=dtype)
        out.append(
            Need("density", need + kept, "lower --num-steps or --num-probes, or use --params")
        )
    if "sketch" in what:
        size = opts.sketch.size
        if size >= n:
            raise CLIError(f"--size {size} must be below the parameter count {n}")
        # test matrix, its product, the orthonormal basis and the eigenvectors (float64 algebra)
        need = 4 * n * size * 8 + n * size * item
        lower = "lower --size, or analyse fewer parameters with --params"
        out.append(Need("sketch", need + kept, lower))
    if "landscape" in what:
        la = opts.landscape
        grid = la.steps**la.dims * 8 * 4  # losses and slopes, float64
        need = (la.dims + 3) * n * item + grid  # directions, parameters and their copy
        out.append(Need("landscape", need + kept, "lower --steps, or use --params"))
    return out


def check_memory(
    what: Sequence[str],
    opts: Options,
    n: int,
    dtype: torch.dtype,
    device: str,
    max_memory: int | None,
    max_memory_text: str | None = None,
    *,
    reference: bool = True,
) -> None:
    """Refuse a run whose largest analysis would not fit; see the module docstring."""
    avail = max_memory if max_memory is not None else available_memory(device)
    found = needs(what, opts, n, dtype, avail, reference=reference)
    if avail is None or not found:
        return
    worst = max(found, key=lambda x: x.bytes)
    if worst.bytes <= avail:
        return
    limit = (
        f"--max-memory {max_memory_text or max_memory} ({format_bytes(avail)})"
        if max_memory is not None
        else f"the {format_bytes(avail)} available on {device}"
    )
    raise CLIError(
        f"{worst.analysis} would need about {format_bytes(worst.bytes)} for its vectors "
        f"(n = {n:,} parameters, {str(dtype).removeprefix('torch.')}), more than {limit}; "
        f"{worst.lower}" + ("; or raise --max-memory" if max_memory is not None else "")
    )


def memory_check(
    what: Sequence[str],
    opts: Options,
    dtype: torch.dtype,
    device: str,
    max_memory_text: str | None,
    *,
    reference: bool = True,
) -> Callable[[int], None]:
    """The check `build_setup` runs once the parameter count is known."""
    limit = parse_memory(max_memory_text) if max_memory_text is not None else None

    def check(n: int) -> None:
        check_memory(what, opts, n, dtype, device, limit, max_memory_text, reference=reference)

    return check
