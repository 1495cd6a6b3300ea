"""Data loaders: digits, and CIFAR-10 read from files written in the standard format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from hessian_spectra.data import CIFAR10_MEAN, CIFAR10_STD, cifar10, digits


def test_digits_shapes_and_scaling():
    x, y = digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert set(y.tolist()) == set(range(10))
    # pixels / 16: every value is a multiple of 1/16
    assert torch.equal(x * 16, (x * 16).round())


def write_batch(path, data: np.ndarray, labels: list[int]) -> None:
    """A CIFAR-10 python batch exactly as the official tarball stores it."""
    entry = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


@pytest.fixture
def cifar_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    arrays = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        n = 3 + i
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        write_batch(root / name, data, labels)
        arrays[name] = (data, labels)
    return tmp_path, arrays


def test_cifar10_reads_the_standard_format(cifar_dir):
    parent, arrays = cifar_dir
    train = cifar10(parent, train=True)  # finds the cifar-10-batches-py subfolder
    test = cifar10(parent / "cifar-10-batches-py", train=False)
    names = [f"data_batch_{k}" for k in range(1, 6)]
    assert len(train) == sum(arrays[n][0].shape[0] for n in names)
    assert len(test) == arrays["test_batch"][0].shape[0]

    x, y = train.tensors
    assert x.shape == (len(train), 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert y.tolist() == [lab for n in names for lab in arrays[n][1]]

    # channel-major rows: pixel (c, h, w) of image 0 is data[0, c*1024 + h*32 + w]
    raw = arrays["data_batch_1"][0][0]
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        expected = (raw[c * 1024 + h * 32 + w] / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
        assert x[0, c, h, w].item() == pytest.approx(expected, abs=1e-6)
    # the last image of the training set comes from data_batch_5
    raw5 = arrays["data_batch_5"][0][-1]
    assert x[-1, 2, 3, 4].item() == pytest.approx(
        (raw5[2 * 1024 + 3 * 32 + 4] / 255.0 - CIFAR10_MEAN[2]) / CIFAR10_STD[2], abs=1e-6
    )


def test_cifar10_names_the_missing_file(cifar_dir):
    parent, _ = cifar_dir
    (parent / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        cifar10(parent, train=True)
    assert len(cifar10(parent, train=False)) > 0
    with pytest.raises(FileNotFoundError, match="test_batch"):
        cifar10(parent / "nowhere", train=False)


def test_cifar10_rejects_a_foreign_pickle(tmp_path):
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({"data": [1, 2]}, f)
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        cifar10(tmp_path, train=False)


class _Payload:
    """What a crafted batch file hides: unpickling it would create `target`."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_refuses_a_crafted_pickle_and_runs_nothing(tmp_path, protocol):
    target = tmp_path / "pwned"
    entry = {
        b"data": np.zeros((2, 3072), dtype=np.uint8),
        b"labels": [0, 1],
        b"batch_label": _Payload(target),  # runs before any format check could
    }
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(entry, f, protocol=protocol)
    with pytest.raises(ValueError, match="not a standard CIFAR-10 python batch") as info:
        cifar10(tmp_path, train=False)
    assert not target.exists(), "the crafted file's payload ran"
    msg = str(info.value)
    assert "io.open" in msg or "builtins.open" in msg
    assert "was not read" in msg and "cifar-10-python.tar.gz" in msg


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_reads_every_pickle_protocol_of_the_standard_format(tmp_path, protocol):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    entry = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 1, 4, 1], b"data": data}
    entry[b"filenames"] = [b"a.png", b"b.png", b"c.png", b"d.png"]
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(entry, f, protocol=protocol)
    x, y = cifar10(tmp_path, train=False).tensors
    assert y.tolist() == [3, 1, 4, 1]
    expect = (data[1, 1024 + 2] / 255.0 - CIFAR10_MEAN[1]) / CIFAR10_STD[1]
    assert x[1, 1, 0, 2].item() == pytest.approx(expect, abs=1e-6)


def test_cifar10_damaged_file_says_so(tmp_path):
    (tmp_path / "test_batch").write_bytes(b"\x80\x02}q\x00(X")  # a pickle cut short
    with pytest.raises(ValueError, match="damaged or not a CIFAR-10 python batch"):
        cifar10(tmp_path, train=False)
