"""The architecture / data pairs of `experiment architectures`, each trained here from a seed.

Six pairs with data that ship with Python or scikit-learn (nothing is
downloaded): an MLP on breast-cancer, the digits CNN, a ResNet8 on digits
upsampled to 16x16, a character LSTM and a tiny GPT-2 on Python's own
source, and a small vision transformer on the digits. Each model has a few
thousand parameters, so its dense float64 Hessian gives an exact reference.

Every pair splits its data the same way for every seed (a fixed 80/20
split), trains on the 80% with Adam in float32 on one CPU thread (so a seed
gives the same weights on any machine thread count), and its Hessian is
taken in float64 over the training part (the ViT's over 512 and the ResNet's
over 128 of its samples, which keeps their dense references affordable).
The accuracy reached is recorded beside each run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessian_spectra.data import digits
from hessian_spectra.data.tabular import tabular
from hessian_spectra.data.text import char_vocab, encode, python_source, text_digest, windows
from hessian_spectra.models import digits_cnn
from hessian_spectra.models.zoo import char_lstm, mlp, resnet_digits, tiny_gpt2, tiny_vit

#: Characters in the language models' vocabulary (the rest share one id).
VOCAB = 32
#: Tokens per sequence of the language models.
CONTEXT = 32
#: Sequences in the language models' Hessian (and training set: held out after them).
LM_SEQUENCES = 64


@dataclass
class Problem:
    """A trained model, its Hessian's data and loss, and what training reached.

    Attributes:
        model: the trained model, float64, eval mode.
        data: one batch for the operator (the training split).
        criterion, loss_fn: exactly one is set (as `HessianOperator` takes them).
        metrics: train/held-out accuracy and loss.
        about: the architecture and data in words.
    """

    model: nn.Module
    data: Any
    criterion: Any
    loss_fn: Any
    metrics: dict[str, float]
    about: str


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed 80/20 split of n samples (the same for every seed)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * n)
    return perm[:cut], perm[cut:]


def _train(
    model: nn.Module,
    loss_of: Callable[[nn.Module, Any], torch.Tensor],
    batches: Callable[[int], Any],
    steps: int,
    lr: float,
    seed: int,
) -> nn.Module:
    """Adam for `steps` steps on `batches(step)`, float32, one thread, seeded."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    with _one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_of(model, batches(step)).backward()
            opt.step()
    return model.eval()


def _ce(model: nn.Module, batch: Any) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = model(x)
    return float((logits.argmax(-1) == y).float().mean()), float(F.cross_entropy(logits, y))


def _classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    seed: int,
    about: str,
    hessian_samples: int | None = None,
) -> Problem:
    """Train a classifier full-batch on the 80% split; its Hessian over (the first
    `hessian_samples` of) the same samples."""
    tr, te = _split(len(y))
    model = _train(model, _ce, lambda _: (x[tr], y[tr]), steps, lr, seed)
    acc, loss = _accuracy(model, x[tr], y[tr])
    test_acc, test_loss = _accuracy(model, x[te], y[te])
    metrics = {"train_accuracy": acc, "train_loss": loss, "test_accuracy": test_acc}
    metrics["test_loss"] = test_loss
    model = model.double()
    h = tr[:hessian_samples]
    if hessian_samples is not None:
        about += f"; Hessian over {len(h)} of the {len(tr)} training samples"
    data = (x[h].double(), y[h])
    return Problem(model, data, nn.CrossEntropyLoss(), None, metrics, about)


def mlp_cancer(seed: int) -> Problem:
    x, y = tabular("breast-cancer")
    return _classifier(
        mlp(30, 2, seed=seed), x, y, 300, 1e-2, seed, "MLP 30-32-32-2 (tanh), breast cancer"
    )


def digits_cnn_problem(seed: int) -> Problem:
    x, y = digits()
    return _classifier(digits_cnn(seed=seed), x, y, 200, 1e-2, seed, "digits CNN, 8x8 digits")


#: Training samples in the ResNet's Hessian: over all 1,437 its float64 product
#: costs 3.9 s on one CPU thread (PyTorch's float64 convolutions and the double
#: backward of stride-2 ones take slow im2col kernels), so a dense reference
#: would take 5.6 hours per seed there.
RESNET_HESSIAN_SAMPLES = 128


def resnet_digits_problem(seed: int) -> Problem:
    x, y = digits()
    x16 = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return _classifier(
        resnet_digits(seed=seed),
        x16,
        y,
        150,
        1e-2,
        seed,
        "ResNet8 (width 4, BatchNorm), digits 16x16",
        RESNET_HESSIAN_SAMPLES,
    )


def vit_digits(seed: int) -> Problem:
    x, y = digits()
    about = "ViT (2 layers, dim 16, 2x2 patches), digits"
    return _classifier(tiny_vit(seed=seed), x, y, 300, 3e-3, seed, about, 512)


@contextlib.contextmanager
def _math_attention() -> Iterator[None]:
    """Scaled-dot-product attention by its math kernel, which has a double backward."""
    with sdpa_kernel(SDPBackend.MATH):
        yield


def _text_sequences() -> tuple[torch.Tensor, torch.Tensor, str]:
    """(Hessian/training sequences, held-out sequences, digest of the text read)."""
    text = python_source()
    ids = encode(text, char_vocab(text, VOCAB))
    seqs = windows(ids, CONTEXT)
    return seqs[: 4 * LM_SEQUENCES], seqs[4 * LM_SEQUENCES : 5 * LM_SEQUENCES], text_digest(text)


def _lm_problem(
    model: nn.Module,
    logits_of: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    seed: int,
    about: str,
) -> Problem:
    """Train a next-character model; its Hessian over LM_SEQUENCES training sequences.

    The loss of a batch is the mean over its predicted tokens (every position
    but the last), and the batch weighs that many tokens.
    """
    train, held, digest = _text_sequences()

    def token_loss(m: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        with _math_attention():
            logits = logits_of(m, ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    gen = torch.Generator().manual_seed(seed)
    order = [torch.randperm(len(train), generator=gen) for _ in range(20)]

    def batch(step: int) -> torch.Tensor:
        perm = order[(step * 32 // len(train)) % len(order)]
        start = (step * 32) % len(train)
        return train[perm[start : start + 32]]

    model = _train(model, token_loss, batch, 400, 1e-2, seed)
    data = train[:LM_SEQUENCES]
    with torch.no_grad():
        metrics = {}
        for name, seqs in (("train", data), ("test", held)):
            logits = logits_of(model, seqs[:, :-1])
            metrics[f"{name}_accuracy"] = float((logits.argmax(-1) == seqs[:, 1:]).float().mean())
            metrics[f"{name}_loss"] = float(token_loss(model, seqs))
    model = model.double()

    def loss_fn(m: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        return token_loss(m, ids), ids.shape[0] * (ids.shape[1] - 1)

    return Problem(model, data, None, loss_fn, metrics, f"{about}; text {digest}")


def lstm_text(seed: int) -> Problem:
    return _lm_problem(
        char_lstm(VOCAB, seed=seed),
        lambda m, ids: m(ids),
        seed,
        "character LSTM (embed 16, hidden 24), Python source",
    )


def gpt2_text(seed: int) -> Problem:
    return _lm_problem(
        tiny_gpt2(VOCAB, CONTEXT, seed=seed),
        lambda m, ids: m(input_ids=ids).logits,
        seed,
        "GPT-2 (2 layers, dim 16, 2 heads), Python source",
    )


#: name -> builder of the trained problem from a seed.
ARCHITECTURES: dict[str, Callable[[int], Problem]] = {
    "mlp-cancer": mlp_cancer,
    "digits-cnn": digits_cnn_problem,
    "resnet8-digits": resnet_digits_problem,
    "lstm-text": lstm_text,
    "gpt2-text": gpt2_text,
    "vit-digits": vit_digits,
}
