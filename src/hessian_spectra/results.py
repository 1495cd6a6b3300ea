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
from typing import Any, TypeVar

import numpy as np
import torch

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


def _encode(value: Any, arrays: dict[str, np.ndarray], key: str) -> Any:
    """Turn a field value into JSON; arrays of ndim >= 2 are moved to `arrays`."""
    if isinstance(value, torch.Tensor):
        arr = value.detach().cpu().numpy()
        if arr.ndim >= 2:
            arrays[key] = arr
            return {"__npz__": key, "torch": True}
        return {"__array__": arr.tolist(), "dtype": str(arr.dtype), "torch": True}
    if isinstance(value, np.ndarray):
        if value.ndim >= 2:
            arrays[key] = value
            return {"__npz__": key, "torch": False}
        return {"__array__": value.tolist(), "dtype": str(value.dtype), "torch": False}
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


def _decode(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if "__npz__" in value:
            arr = np.asarray(arrays[value["__npz__"]])
            return torch.from_numpy(arr.copy()) if value.get("torch") else arr
        if "__array__" in value:
            arr = np.asarray(value["__array__"], dtype=value["dtype"])
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
        out: dict[str, Any] = {"type": type(self).__name__, "provenance": provenance()}
        for f in dataclasses.fields(self):
            out[f.name] = _encode(getattr(self, f.name), store, f.name)
        return out

    def to_json(self, path: str | Path) -> Path:
        """Write the record to `path` (JSON) and its large arrays to `path` with .npz."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        data = self.to_dict(arrays)
        npz = path.with_suffix(".npz")
        if arrays:
            np.savez(npz, **arrays)  # type: ignore[arg-type]
            data["arrays_file"] = npz.name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
        tmp.replace(path)
        return path

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
    """Read any result written by `Result.to_json`."""
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
            from the recurrence, or true residuals when `verified`).
        converged: (k,) whether each pair met the tolerance.
        error_estimates: (k,) residual**2 / gap, an estimate (not a bound) of
            each eigenvalue's error.
        precision_limited: (k,) pairs that stopped on the operator's precision floor.
        orthogonality_loss: max |Q^T Q - I| of the basis at the end.
        verified: whether `residuals` were recomputed with true products.
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


@dataclass(frozen=True, kw_only=True)
class TraceResult(Result):
    """A trace estimate with its standard error.

    Attributes:
        estimate: the trace estimate.
        stderr: its standard error (XTrace's own estimate under-reports).
        block_estimates: per-block traces, summing to `estimate`, when `blocks` given.
        block_stderrs: the standard error of each block's trace.
        method: "hutchinson", "hutch++" or "xtrace".
    """

    estimate: float
    stderr: float
    block_estimates: Mapping[str, float] | None = None
    block_stderrs: Mapping[str, float] | None = None
    method: str = "xtrace"


@dataclass(frozen=True, kw_only=True)
class SketchResult(Result):
    """A Hessian sketch and what it says about the spectrum.

    Attributes:
        matrix: (d, d) the sketch matrix (S^T H S for "rademacher", Q^T H Q otherwise).
        eigenvalues: (d,) descending.
        eigenvectors: (n, d) Ritz vectors, where the kind yields them, else None.
        trace: the sketch's trace estimate.
        kind: "rademacher", "rangefinder" or "nystrom".
        shift: the shift added before a Nystrom sketch of an indefinite operator (0 if none).
    """

    matrix: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor | None
    trace: float
    kind: str = "rademacher"
    shift: float = 0.0
