"""What every benchmark script shares: the reference problems, the exact digits spectrum, JSON.

Scripts in this folder import it as ``from common import ...``; running
``python benchmarks/<script>.py`` from the repository root puts this folder on
``sys.path`` first, so that works without installing anything beyond the
package itself.

- ``digits_problem()``: the trained digits CNN (2,650 parameters) on all 1,797
  digits, with its HessianOperator (float64 by default).
- ``exact_digits_spectrum()``: the eigenvalues of its dense float64 Hessian,
  built once from HVPs on unit-vector blocks and cached in ``benchmarks/cache/``.
- ``resnet20_problem()``: the study's ResNet20 at a seeded initialization on a
  fixed random CIFAR-shaped batch.
- ``write_json(name, payload)``: ``benchmarks/results/<name>.json`` with the
  library provenance and the machine (CPU model, cores, torch threads, load).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hessian_spectra.operators.hessian import HessianOperator
from hessian_spectra.problems import BUILTIN_MODELS, build_model, load_data
from hessian_spectra.results import provenance

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / "cache"


# ------------------------------------------------------------------ machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Where a number was measured: CPU, cores, torch threads, load average, device."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)}"
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15min": load,
        "device": device,
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write `payload` to benchmarks/results/<name>.json with provenance and machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "provenance": provenance(), "machine": machine(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def median_seconds(
    fn: Callable[[], Any],
    repeats: int = 5,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Median seconds of `fn()` over `repeats` calls after `warmup` calls, and all times.

    `clock` is wall time by default; ``time.process_time`` gives this process's
    CPU seconds, which other jobs on a shared machine do not inflate.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return {"median": statistics.median(times), "times": times}


def pyhessian_available() -> bool:
    """Whether PyHessian (the `bench` extra) can be imported."""
    try:
        import pyhessian  # noqa: F401
    except Exception:
        return False
    return True


# ------------------------------------------------------------------ problems


def digits_problem(
    dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor], HessianOperator]:
    """The trained digits CNN on all 1,797 digits.

    Returns:
        (model in eval mode and `dtype`, criterion, (inputs, targets), operator).
    """
    model = _trained_digits_cnn(seed).to(dtype)
    (batch,) = load_data("digits", dtype=dtype).batches
    criterion = nn.CrossEntropyLoss()
    return model, criterion, batch, HessianOperator(model, criterion, batch)


def _trained_digits_cnn(seed: int) -> nn.Module:
    """The digits CNN trained by the registry's recipe (200 full-batch Adam steps)."""
    train = BUILTIN_MODELS["digits-cnn"].train
    assert train is not None
    return train(seed, 200)


def _fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().double().numpy().tobytes())
    return h.hexdigest()[:16]


def exact_digits_hessian(block: int = 128, seed: int = 0) -> np.ndarray:
    """The dense float64 Hessian (2,650 x 2,650) of the trained digits CNN on all digits.

    Built once from HVPs on blocks of unit vectors, checked symmetric, and
    cached in benchmarks/cache/ under a fingerprint of the trained weights (a
    different torch that trains to different weights rebuilds it).
    """
    model, _, _, op = digits_problem(torch.float64, seed=seed)
    path = CACHE / f"digits_hessian_seed{seed}_{_fingerprint(model)}.npy"
    if path.exists():
        return np.load(path)
    n = op.shape[0]
    H = np.empty((n, n))
    eye = torch.eye(n, dtype=torch.float64)
    for start in range(0, n, block):
        stop = min(start + block, n)
        H[:, start:stop] = op.matmat(eye[:, start:stop]).numpy()
    scale = float(np.abs(H).max())
    asym = float(np.abs(H - H.T).max())
    if asym > 1e-10 * scale:
        raise RuntimeError(
            f"the dense digits Hessian is not symmetric (max |H - H^T| = {asym:.3g}, "
            f"max |H| = {scale:.3g}); something is wrong with the HVPs"
        )
    H = (H + H.T) / 2
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, H)
    tmp.replace(path)
    return H


def exact_digits_spectrum(seed: int = 0) -> np.ndarray:
    """Eigenvalues (ascending, float64) of the dense digits Hessian; cached."""
    model = _trained_digits_cnn(seed)
    path = CACHE / f"digits_spectrum_seed{seed}_{_fingerprint(model)}.npy"
    if path.exists():
        return np.load(path)
    evals = np.linalg.eigvalsh(exact_digits_hessian(seed=seed))
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, evals)
    return evals


def resnet20_problem(
    dtype: torch.dtype = torch.float32, batch: int = 128, seed: int = 0
) -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor], HessianOperator]:
    """ResNet20 (seeded init, eval mode) on a fixed random CIFAR-shaped batch.

    Returns:
        (model, criterion, (inputs (batch, 3, 32, 32), targets (batch,)), operator).
    """
    model = build_model("resnet20", seed).eval().to(dtype)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 3, 32, 32), generator=gen).to(dtype)
    y = torch.randint(0, 10, (batch,), generator=gen)
    criterion = nn.CrossEntropyLoss()
    return model, criterion, (x, y), HessianOperator(model, criterion, (x, y))
