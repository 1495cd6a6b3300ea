"""CIFAR-10 from the standard python-format batches (Krizhevsky, 2009).

Reads the files of `cifar-10-python.tar.gz` once extracted: `data_batch_1` ...
`data_batch_5` and `test_batch`, pickled dicts holding b"data" (uint8, N x
3072, channel-major 32x32 images) and b"labels". Nothing is downloaded.

The files are pickles, and an ordinary unpickler runs whatever code a file
names. They are read with a restricted unpickler that builds only what the
standard files hold (dicts, lists, bytes, str, numbers and NumPy arrays) and
refuses anything else before it is created, so a crafted file runs nothing.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

try:  # NumPy 2 moved the array-reconstruction helpers to numpy._core
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]
except ImportError:  # NumPy 1
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[attr-defined,no-redef]

#: per-channel mean and standard deviation of the CIFAR-10 training images
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)


def _find_dir(root: Path) -> Path:
    """`root` itself, or its `cifar-10-batches-py` subfolder (the tarball's layout)."""
    sub = root / "cifar-10-batches-py"
    if not (root / "test_batch").exists() and sub.is_dir():
        return sub
    return root


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """What pickles of protocol 2 call to rebuild bytes (``_codecs.encode(text, "latin1")``)."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"bytes encoded as {encoding!r}, not latin1")
    return codecs.encode(text, "latin1")


#: the only globals a CIFAR-10 batch (of any NumPy version or pickle protocol) names
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class UnsafePickleError(pickle.UnpicklingError):
    """A batch file names something the standard CIFAR-10 files never hold."""


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that admits only the types of the standard CIFAR-10 python batches."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("a persistent object reference")


def _unpickle(path: Path) -> Any:
    """Read a batch file with the restricted unpickler; ValueError when it is not one."""
    try:
        with path.open("rb") as f:
            return _BatchUnpickler(f, encoding="bytes").load()
    except UnsafePickleError as exc:
        raise ValueError(
            f"{path} is not a standard CIFAR-10 python batch: it asks to load {exc}, which the "
            "standard files never hold (a crafted file can run code this way), so it was not "
            "read; extract cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html into the folder again"
        ) from None
    except Exception as exc:  # a damaged pickle raises many types
        raise ValueError(
            f"{path} is damaged or not a CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
            "extract cifar-10-python.tar.gz into the folder again"
        ) from exc


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    entry = _unpickle(path)
    if not isinstance(entry, dict) or b"data" not in entry:
        raise ValueError(
            f"{path} is not a CIFAR-10 python batch (expected a pickled dict with "
            "b'data' and b'labels'); extract cifar-10-python.tar.gz into the folder"
        )
    labels = entry.get(b"labels", entry.get(b"fine_labels"))
    if labels is None:
        raise ValueError(f"{path} has no b'labels' entry; is it a CIFAR-10 python batch?")
    data = np.asarray(entry[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' has shape {data.shape}, expected (N, 3072) uint8")
    labels_arr = np.asarray(labels, dtype=np.int64)
    if labels_arr.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {labels_arr.shape[0]} labels for {data.shape[0]} images; the file is damaged"
        )
    return data, labels_arr


def cifar10(root: str | Path, train: bool = True) -> TensorDataset:
    """CIFAR-10 as a normalized `TensorDataset` of (images, labels).

    Args:
        root: folder holding the python-format batches (or the
            `cifar-10-batches-py` folder's parent).
        train: the 50,000 training images (`data_batch_1..5`) or the 10,000
            test images (`test_batch`).

    Returns:
        A TensorDataset of float32 images (N, 3, 32, 32), scaled to [0, 1] and
        normalized with `CIFAR10_MEAN` / `CIFAR10_STD`, and int64 labels (N,).

    Raises:
        FileNotFoundError: naming the first missing batch file.
    """
    folder = _find_dir(Path(root))
    names = TRAIN_FILES if train else TEST_FILES
    xs, ys = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"CIFAR-10 batch file {path} is missing; download cifar-10-python.tar.gz "
                "from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into "
                f"{Path(root)}"
            )
        x, y = _read_batch(path)
        xs.append(x)
        ys.append(y)
    data = np.concatenate(xs).reshape(-1, 3, 32, 32)
    images = torch.from_numpy(data).to(torch.float32) / 255.0
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float32).view(1, 3, 1, 1)
    images = (images - mean) / std
    labels = torch.from_numpy(np.concatenate(ys))
    return TensorDataset(images, labels)
