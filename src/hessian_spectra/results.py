"""Frozen result records shared by every layer, with a JSON round trip.

Every algorithm returns one of these: the answer, the error information it has,
``num_matvecs``, wall ``seconds``, the ``seed`` it used and a ``history`` with
one record per iteration (matvecs so far, seconds so far, current estimates).
``to_json(path)`` writes the record and its provenance; arrays of two or more
dimensions (eigenvectors, sketch matrices) go to an ``.npz`` file beside the
JSON, never inline. ``load_result(path)`` (or ``Cls.from_json``) reads it back.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np
import torch

from hessian_spectra._atomic import atomic_open, write_text
from hessian_spectra._version import __version__

R = TypeVar("R", bound="Result")

_REGISTRY: dict[str, type[Result]] = {}


def provenance() -> dict[str, Any]:
    """Library, framework and platform versions, and the time of writing."""
    return {
        "library": "hessian-spectra",
        "version": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- orders
WHICH = ("LA", "SA", "LM", "BE")


def priority(values: np.ndarray, which: str) -> np.ndarray:
    """All indices of `values`, most wanted first under `which`.

    "BE" alternates the largest and the smallest remaining value, so its first k
    entries are the ceil(k/2) largest and the floor(k/2) smallest.
    """
    v = np.asarray(values, dtype=np.float64)
    if which == "LA":
        return np.argsort(-v, kind="stable")
    if which == "SA":
        return np.argsort(v, kind="stable")
    if which == "LM":
        return np.argsort(-np.abs(v), kind="stable")
    asc = np.argsort(v, kind="stable")
    out = np.empty(v.size, dtype=np.int64)
    lo, hi = 0, v.size - 1
    for pos in range(v.size):
        if pos % 2 == 0:
            out[pos] = asc[hi]
            hi -= 1
        else:
            out[pos] = asc[lo]
            lo += 1
    return out


def select(values: np.ndarray, which: str, k: int) -> np.ndarray:
    """Indices of the k wanted values, in the result order of `which`.

    "LA" descending, "SA" ascending, "LM" by descending magnitude, "BE" the
    ceil(k/2) largest descending then the floor(k/2) smallest ascending.
    """
    order = priority(values, which)[:k]
    if which != "BE":
        return order
    return np.concatenate([order[0::2], order[1::2]])


def result_order(values: np.ndarray, which: str) -> np.ndarray:
    """The permutation putting k already-wanted values in the result order of `which`."""
    v = np.asarray(values, dtype=np.float64)
    k = v.size
    if which != "BE":
        return select(v, which, k)
    desc = np.argsort(-v, kind="stable")
    top, bottom = desc[: math.ceil(k / 2)], desc[math.ceil(k / 2) :][::-1]
    return np.concatenate([top, bottom])


# --------------------------------------------------------------------------- plain JSON
def to_jsonable(value: Any) -> Any:
    """NumPy/torch scalars and arrays to plain JSON values (non-finite floats as strings)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write `data` as indented JSON (with the library's provenance added), atomically."""
    path = Path(path)
    payload = {"provenance": provenance(), **to_jsonable(dict(data))}
    return write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _encode(value: Any, arrays: dict[str, np.ndarray], key: str) -> Any:
    """Turn a field value into JSON; arrays of ndim >= 2 are moved to `arrays`."""
    if isinstance(value, torch.Tensor):
        arr = value.detach().cpu().numpy()
        if arr.ndim >= 2:
            arrays[key] = arr
            return {"__npz__": key, "torch": True}
        return _encode_1d(arr, torch=True)
    if isinstance(value, np.ndarray):
        if value.ndim >= 2:
            arrays[key] = value
            return {"__npz__": key, "torch": False}
        return _encode_1d(value, torch=False)
    if isinstance(value, np.generic):
        return _encode(value.item(), arrays, key)
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, Mapping):
        return {str(k): _encode(v, arrays, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays, f"{key}.{i}") for i, v in enumerate(value)]
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    return value


def _encode_1d(arr: np.ndarray, torch: bool) -> dict[str, Any]:
    """A 0-D/1-D array inline; non-finite floats (JSON has none) listed by index."""
    out: dict[str, Any] = {"__array__": arr.tolist(), "dtype": str(arr.dtype), "torch": torch}
    if arr.dtype.kind in "fc" and arr.ndim == 1 and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr))
        out["nonfinite"] = {str(int(i)): repr(float(arr[i])) for i in bad}
        out["__array__"] = [
            0.0 if i in set(bad.tolist()) else x for i, x in enumerate(arr.tolist())
        ]
    elif arr.dtype.kind in "fc" and arr.ndim == 0 and not np.isfinite(arr):
        out["__array__"] = 0.0
        out["nonfinite"] = {"": repr(float(arr))}
    return out


def _decode(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if "__npz__" in value:
            arr = np.asarray(arrays[value["__npz__"]])
            return torch.from_numpy(arr.copy()) if value.get("torch") else arr
        if "__array__" in value:
            arr = np.array(value["__array__"], dtype=value["dtype"])
            for idx, text in value.get("nonfinite", {}).items():
                if idx == "":
                    arr = np.array(float(text), dtype=arr.dtype)
                else:
                    arr[int(idx)] = float(text)
            return torch.from_numpy(arr) if value.get("torch") else arr
        if "__float__" in value:
            return float(value["__float__"])
        return {k: _decode(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class Result:
    """Fields every result has.

    Attributes:
        num_matvecs: operator columns multiplied (a block of b counts b).
        seconds: wall-clock seconds the computation took.
        history: one record per iteration: ``matvecs``, ``seconds`` and the
            estimates of that moment.
        seed: the seed used (drawn and recorded when the caller gave none).
        settings: the call's settings and the operator's size, for provenance.
    """

    num_matvecs: int
    seconds: float
    history: Sequence[Mapping[str, Any]] = ()
    seed: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def to_dict(self, arrays: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """The record as JSON-ready data; 2-D+ arrays are put in `arrays`."""
        store: dict[str, np.ndarray] = {} if arrays is None else arrays
        out: dict[str, Any] = {
            "type": type(self).__name__,
            "module": type(self).__module__,
            "provenance": provenance(),
        }
        for f in dataclasses.fields(self):
            out[f.name] = _encode(getattr(self, f.name), store, f.name)
        return out

    def to_json(self, path: str | Path) -> Path:
        """Write the record to `path` (JSON) and its large arrays to `path` with .npz.

        Each file is written atomically (a kill leaves the previous file, never
        a torn one); the arrays first, so the JSON never names a missing file.
        """
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        data = self.to_dict(arrays)
        npz = path.with_suffix(".npz")
        if arrays:
            data["arrays_file"] = npz.name
        text = json.dumps(data, indent=2, allow_nan=False)  # fails before anything is written
        if arrays:
            with atomic_open(npz, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
        return write_text(path, text)

    @classmethod
    def from_json(cls: type[R], path: str | Path) -> R:
        """Read a record written by `to_json`."""
        result = load_result(path)
        if not isinstance(result, cls):
            raise TypeError(
                f"{path} holds a {type(result).__name__}, not a {cls.__name__}; "
                "use hessian_spectra.load_result to read any result"
            )
        return result


def load_result(path: str | Path) -> Result:
    """Read any result written by `Result.to_json`.

    Example:
        >>> import pathlib, tempfile, torch, hessian_spectra as hs
        >>> op = hs.DenseOperator(torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64)))
        >>> top = hs.eigsh(op, k=2, seed=0)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "top.json"
        >>> back = hs.load_result(top.to_json(path))
        >>> type(back).__name__, back.eigenvalues.tolist() == top.eigenvalues.tolist()
        ('EigshResult', True)
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        type_name = data["type"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a hessian-spectra result file: {exc}") from exc
    if type_name not in _REGISTRY:
        raise ValueError(f"{path} holds an unknown result type {type_name!r}")
    rcls = _REGISTRY[type_name]
    arrays: dict[str, np.ndarray] = {}
    if "arrays_file" in data:
        with np.load(path.with_name(data["arrays_file"])) as npz:
            arrays = {k: npz[k] for k in npz.files}
    names = {f.name for f in dataclasses.fields(rcls)}
    kwargs = {k: _decode(v, arrays) for k, v in data.items() if k in names}
    return rcls(**kwargs)


@dataclass(frozen=True, kw_only=True)
class EigshResult(Result):
    """Eigenpairs from `eigsh`.

    Attributes:
        eigenvalues: (k,) in the order of `which` ("LA" descending, "SA"
            ascending, "LM" by descending magnitude, "BE" largest then smallest).
        eigenvectors: (n, k) tensor, orthonormal columns, on the operator's device.
        residuals: (k,) absolute residual norms ``||H v - theta v||`` (estimates
            from the recurrence, or true residuals when `verified`), never below
            the rounding level.
        converged: (k,) whether each pair met the tolerance.
        error_estimates: (k,) min(residual, residual**2 / gap), gap to the
            nearest other Ritz value: an estimate (not a bound) of each
            eigenvalue's error.
        precision_limited: (k,) pairs limited by the operator's precision: their
            tolerance lay below the rounding level, or their residual did (it
            is then reported at that level, 10 eps max |theta|, as is any error
            estimate below it).
        orthogonality_loss: max |Q^T Q - I| of the basis at the end; beyond
            sqrt(eps) no pair is reported converged.
        verified: whether `residuals` were recomputed with true products.
        which: "LA", "SA", "LM" or "BE" ("input" for `refine`: the given order).
        method: "lanczos", "block", "power", "rqi" or "refine".
        restarts: thick restarts taken (Lanczos and block Lanczos).
        stop_reason: "converged", "max_matvecs", "callback" or "exhausted"
            (the Krylov space filled the whole space).
    """

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor
    residuals: np.ndarray
    converged: np.ndarray
    error_estimates: np.ndarray | None = None
    precision_limited: np.ndarray | None = None
    orthogonality_loss: float = 0.0
    verified: bool = False
    which: str = "LA"
    method: str = "lanczos"
    restarts: int = 0
    stop_reason: str = ""


@dataclass(frozen=True, kw_only=True)
class TraceResult(Result):
    """A trace estimate with its standard error.

    Attributes:
        estimate: the trace estimate.
        stderr: its standard error (XTrace's own estimate under-reports).
        samples: the per-probe values behind `stderr`: Hutchinson samples,
            Hutch++'s remainder samples, or XTrace's leave-one-out estimates.
        block_estimates: per-block traces, summing to `estimate` when the blocks
            partition the coordinates, when `blocks` given.
        block_stderrs: the standard error of each block's trace.
        block_sizes: the number of coordinates in each block (block_estimates /
            block_sizes is the mean curvature per parameter).
        method: "hutchinson", "hutch++" or "xtrace".
        converged: with `rtol`, whether the standard error met it (None for a
            fixed budget).
    """

    estimate: float
    stderr: float
    samples: np.ndarray | None = None
    block_estimates: Mapping[str, float] | None = None
    block_stderrs: Mapping[str, float] | None = None
    block_sizes: Mapping[str, int] | None = None
    method: str = "xtrace"
    converged: bool | None = None


@dataclass(frozen=True, kw_only=True)
class DiagonalResult(Result):
    """A diagonal estimate with a standard error per entry, from `diagonal`.

    Attributes:
        estimate: (n,) float64 tensor on the operator's device: the diagonal
            estimate (unbiased; ``op.unflatten(estimate)`` maps it to the
            parameters of a model operator).
        stderr: (n,) its standard errors: Hutchinson's sample standard
            deviation over sqrt(probes); XDiag's jackknife (cautious: it
            over-estimates rather than under-reports).
        block_estimates: per-block sums of the diagonal (block traces), when
            `blocks` were given.
        block_stderrs: the standard error of each block's sum.
        block_sizes: the number of entries in each block (block_estimates /
            block_sizes is the mean curvature per parameter).
        method: "hutchinson" or "xdiag".
        probes: random probes used (XDiag takes two products per probe).
    """

    estimate: torch.Tensor
    stderr: torch.Tensor
    block_estimates: Mapping[str, float] | None = None
    block_stderrs: Mapping[str, float] | None = None
    block_sizes: Mapping[str, int] | None = None
    method: str = "xdiag"
    probes: int = 0


@dataclass(frozen=True, kw_only=True)
class SketchResult(Result):
    """A Hessian sketch and what it says about the spectrum.

    Attributes:
        matrix: (d, d) the sketch matrix (S^T H S for "rademacher", Q^T H Q with
            Q the orthonormal test basis otherwise).
        eigenvalues: (d,) descending.
        eigenvectors: (n, d) unit vectors: Ritz vectors (rangefinder), the
            approximation's eigenvectors (nystrom), or H S U normalized
            (rademacher: one free power step on the lifted sketch eigenvectors).
        trace: "rademacher": an unbiased estimate of tr(H); otherwise the trace
            of the low-rank approximation.
        kind: "rademacher", "rangefinder" or "nystrom".
        shift: the shift added before a Nystrom sketch of an indefinite operator (0 if none).
        residuals: (d,) ``||H v - theta v||`` of the Ritz pairs (rangefinder), else None.
    """

    matrix: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor | None
    trace: float
    kind: str = "rademacher"
    shift: float = 0.0
    residuals: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True)
class DensityResult(Result):
    """A spectral density from stochastic Lanczos quadrature: one Gauss rule per probe.

    The density is that of the eigenvalue distribution (1/n) sum_k delta(lambda_k):
    `pdf` integrates to 1 and `cdf` is a fraction; `count_above` is a number
    of eigenvalues. Methods with ``per_probe=True`` return one row per probe,
    whose spread (std / sqrt(num_probes), see the ``*_stderr`` methods) is the
    probe-to-probe standard error.

    Attributes:
        nodes: (num_probes, m) quadrature nodes (Ritz values), ascending per probe.
            A probe whose Krylov space became invariant has fewer nodes; its row
            is padded with zero-weight copies of its largest node.
        weights: (num_probes, m) quadrature weights; each row sums to 1.
        residuals: (num_probes, m) Ritz residual norms ``beta_m |s_mj|`` (0 for
            a probe stopped at an invariant subspace: its nodes are exact).
        converged: (num_probes, m) nodes whose residual is below sqrt(eps)
            times the spectrum's scale: eigenvalues located, not a smear of many.
        num_nodes: (num_probes,) nodes per probe before padding.
        n: the operator's size.
    """

    nodes: np.ndarray
    weights: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    num_nodes: np.ndarray
    n: int

    #: A converged node counts as one eigenvalue unless n * weight reaches this
    #: (an atom of many equal eigenvalues); chi-squared(1) exceeds 10 with
    #: probability 0.0016, so a single eigenvalue is almost never mistaken.
    atom_count = 10.0

    @property
    def num_probes(self) -> int:
        return int(np.asarray(self.nodes).shape[0])

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.nodes, dtype=np.float64), np.asarray(self.weights, dtype=np.float64)

    def node_widths(self, grid: np.ndarray | None = None) -> np.ndarray:
        """(num_probes, m) default Gaussian widths: each node's local spacing.

        A Gauss rule resolves its measure at the spacing of its nodes, so each
        node is broadened by half the distance between its neighbours, capped
        at the spectrum's range / m (isolated outliers) and floored at two
        steps of `grid` (so that the grid resolves every bump) and at
        1e-6 of the range.
        """
        N, Wt = self._arrays()
        span = float(N.max() - N.min()) if N.size else 0.0
        if span <= 0:
            span = max(float(np.abs(N).max()) if N.size else 0.0, 1.0)
        m = int(np.max(self.num_nodes)) if np.size(self.num_nodes) else N.shape[1]
        floor = 1e-6 * span
        if grid is not None:
            g = np.unique(np.asarray(grid, dtype=np.float64).ravel())
            if g.size > 1:
                floor = max(floor, 2.0 * float(np.median(np.diff(g))))
        out = np.empty_like(N)
        for p in range(N.shape[0]):
            k = int(self.num_nodes[p])
            th = N[p, :k]
            if k > 1:
                gaps = np.diff(th)
                left = np.r_[gaps[0], gaps]
                right = np.r_[gaps, gaps[-1]]
                w = 0.5 * (left + right)
            else:
                w = np.full(k, span / max(m, 1))
            out[p, :k] = w
            out[p, k:] = w[-1] if k else span
        return np.clip(out, floor, max(span / max(m, 1), floor))

    def pdf(
        self, grid: np.ndarray | Any, sigma: float | None = None, *, per_probe: bool = False
    ) -> np.ndarray:
        """The density on `grid`: each node a Gaussian of its weight.

        Args:
            grid: points to evaluate at.
            sigma: one Gaussian width for every node; None uses `node_widths(grid)`
                (tied to the spacing of the nodes, the spectrum's range and the grid).
            per_probe: one row per probe instead of their mean.
        """
        x = np.asarray(grid, dtype=np.float64)
        flat = x.ravel()
        N, Wt = self._arrays()
        if sigma is None:
            S = self.node_widths(flat)
        else:
            if not sigma > 0:
                raise ValueError(f"sigma must be positive, got {sigma}")
            S = np.full_like(N, float(sigma))
        out = np.zeros((N.shape[0], flat.size))
        step = max(1, 2**22 // max(1, N.size))
        for lo in range(0, flat.size, step):
            xs = flat[lo : lo + step]
            z = (xs[None, None, :] - N[:, :, None]) / S[:, :, None]
            dens = np.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * S[:, :, None])
            out[:, lo : lo + step] = np.einsum("pm,pmk->pk", Wt, dens)
        if per_probe:
            return out.reshape((N.shape[0], *x.shape))
        return out.mean(0).reshape(x.shape)

    def cdf(self, x: float | np.ndarray | Any, *, per_probe: bool = False) -> Any:
        """The fraction of eigenvalues <= x: the Gauss rules' distribution function."""
        xa = np.asarray(x, dtype=np.float64)
        flat = xa.ravel()
        N, Wt = self._arrays()
        out = np.empty((N.shape[0], flat.size))
        for p in range(N.shape[0]):
            order = np.argsort(N[p], kind="stable")
            th, cw = N[p, order], np.cumsum(Wt[p, order])
            idx = np.searchsorted(th, flat, side="right")
            out[p] = np.where(idx > 0, cw[np.maximum(idx - 1, 0)], 0.0)
        if per_probe:
            return out.reshape((N.shape[0], *xa.shape))
        mean = out.mean(0)
        return float(mean[0]) if xa.ndim == 0 else mean.reshape(xa.shape)

    def cdf_stderr(self, x: float | np.ndarray | Any) -> Any:
        """The probe-to-probe standard error of `cdf(x)` (NaN for one probe)."""
        rows = np.asarray(self.cdf(x, per_probe=True)).reshape(self.num_probes, -1)
        err = _probe_stderr(rows)
        return float(err[0]) if np.ndim(x) == 0 else err.reshape(np.shape(x))

    def count_above(self, t: float, *, per_probe: bool = False) -> Any:
        """An estimated number of eigenvalues strictly above `t`.

        Converged nodes (located eigenvalues, such as outliers) count one each,
        since a Lanczos run finds each distinct eigenvalue once and its weight
        n * w (chi-squared(1) distributed for a single eigenvalue) would be far
        noisier; a converged node whose n * w reaches `atom_count` is an atom
        of many eigenvalues, and one below 1e-6 (a chance of 8e-4 for a real
        eigenvalue) a direction made of rounding errors: both count n * w.
        Unconverged nodes (the bulk) count n * w. The mean over probes (or one
        count per probe).
        """
        N, Wt = self._arrays()
        conv = np.asarray(self.converged, dtype=bool)
        nw = self.n * Wt
        each = np.where(conv & (nw < self.atom_count) & (nw >= 1e-6), 1.0, nw)
        counts = np.where(N > t, each, 0.0).sum(1)
        return counts if per_probe else float(counts.mean())

    def count_above_stderr(self, t: float) -> float:
        """The probe-to-probe standard error of `count_above(t)` (NaN for one probe)."""
        return float(_probe_stderr(np.asarray(self.count_above(t, per_probe=True))[:, None])[0])


def _probe_stderr(rows: np.ndarray) -> np.ndarray:
    """Std over the first axis (ddof=1) / sqrt(count); NaN with one row."""
    p = rows.shape[0]
    if p < 2:
        return np.full(rows.shape[1:], np.nan)
    return np.asarray(rows.std(axis=0, ddof=1) / np.sqrt(p))


@dataclass(frozen=True, kw_only=True)
class LandscapeResult(Result):
    """Loss values on a 1-D or 2-D grid through the parameters.

    Attributes:
        coordinates: one 1-D array of step sizes per direction (alpha, beta).
        losses: (steps,) for one direction; (steps_a, steps_b) for two, with
            ``losses[i, j]`` the loss at ``(coordinates[0][i], coordinates[1][j])``.
        origin_loss: the loss at the unperturbed parameters.
        kind: how the directions were made: "eigen", "random", "gradient" or "given".
        direction_norms: the Euclidean norm of each direction.
        curvatures: for "eigen" directions, the eigenvalues along them; else None.
        slopes: the directional derivatives ``g . d_i`` at the origin, where computed.
        num_evaluations: grid points times batches evaluated.
        param_names: the parameters the directions move.
    """

    coordinates: Sequence[np.ndarray]
    losses: np.ndarray
    origin_loss: float
    kind: str = "given"
    direction_norms: Sequence[float] = ()
    curvatures: np.ndarray | None = None
    slopes: np.ndarray | None = None
    num_evaluations: int = 0
    param_names: Sequence[str] = ()

    @property
    def ndim(self) -> int:
        """1 for a line, 2 for a plane."""
        return len(self.coordinates)


class MonitorKeys:
    """The keys of a `MonitorResult` record (one dict per update), as `SpectrumMonitor` writes them.

    The strings are part of the JSON format: never change one, add a new name instead.
    A record also holds whatever values the training loop passed (e.g. ``lr``).
    """

    #: the training step or epoch of the update
    STEP: Final = "step"
    #: the top-k eigenvalues, descending
    EIGENVALUES: Final = "eigenvalues"
    #: their residual norms ||H v - theta v||
    RESIDUALS: Final = "residuals"
    #: whether each pair met the tolerance
    CONVERGED: Final = "converged"
    #: HVPs of the eigensolver
    EIG_MATVECS: Final = "eig_matvecs"
    #: whether the eigensolver was warm-started from the previous eigenvectors
    WARM: Final = "warm"
    #: HVPs of the cold start the update replaced (None when not measured)
    COLD_MATVECS: Final = "cold_matvecs"
    #: the cold start's eigenvalues (with ``compare_cold``)
    COLD_EIGENVALUES: Final = "cold_eigenvalues"
    #: the trace estimate (with ``trace``)
    TRACE: Final = "trace"
    #: its standard error
    TRACE_STDERR: Final = "trace_stderr"
    #: HVPs of the trace estimator
    TRACE_MATVECS: Final = "trace_matvecs"
    #: per-layer traces ``{name: [estimate, stderr]}`` (with ``layers``)
    LAYER_TRACES: Final = "layer_traces"
    #: wall seconds of the update
    SECONDS: Final = "seconds"
    #: wall seconds since the monitor was made
    WALL: Final = "wall"
    #: top-k eigenvalues of the preconditioned Hessian P^-1/2 H P^-1/2 (with an adaptive optimizer)
    PRECONDITIONED_EIGENVALUES: Final = "preconditioned_eigenvalues"
    #: HVPs of that eigensolve
    PRECONDITIONED_MATVECS: Final = "preconditioned_matvecs"
    #: the optimizer's edge-of-stability threshold at the update (e.g. 2 / lr, 38 / lr)
    THRESHOLD: Final = "threshold"
    #: which sharpness it bounds: "raw" (SGD) or "preconditioned" (Adam, RMSprop)
    THRESHOLD_OF: Final = "threshold_of"
    #: how it was computed, e.g. "38 / lr"
    THRESHOLD_LABEL: Final = "threshold_label"
    #: the spectral density's nodes and weights (stochastic Lanczos quadrature, with ``density``)
    DENSITY_NODES: Final = "density_nodes"
    DENSITY_WEIGHTS: Final = "density_weights"
    #: HVPs of the density estimate
    DENSITY_MATVECS: Final = "density_matvecs"
    #: the number of parameters the Hessian is taken over (its size n)
    SIZE: Final = "size"


@dataclass(frozen=True, kw_only=True)
class MonitorResult(Result):
    """The time series a `SpectrumMonitor` kept.

    Attributes:
        records: one dict per update, with the keys named in `MonitorKeys`:
            ``step``, ``eigenvalues``, ``residuals``, ``converged``,
            ``eig_matvecs`` (HVPs of the eigensolver), ``warm`` (whether it was
            warm-started), ``cold_matvecs`` (HVPs of the cold start it replaced,
            when measured), ``trace`` and ``trace_stderr``, ``layer_traces``
            (``{name: [estimate, stderr]}``, when asked for), ``seconds``, the
            preconditioned eigenvalues and the optimizer's stability threshold
            (given an optimizer), the density's nodes and weights (when asked
            for), and whatever values the training loop passed.
        k: eigenvalues tracked.
        hvps_saved: HVPs saved by warm starts against measured cold starts
            (None when no cold start was measured).
    """

    records: Sequence[Mapping[str, Any]]
    k: int
    hvps_saved: int | None = None

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one recorded key, skipping updates that lack it."""
        steps, vals = [], []
        for r in self.records:
            if r.get(key) is not None:
                steps.append(r[MonitorKeys.STEP])
                vals.append(r[key])
        return np.asarray(steps), np.asarray(vals, dtype=np.float64)
