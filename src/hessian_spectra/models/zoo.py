"""Small networks of the architecture families people analyse, sized for exact references.

Each has a few thousand parameters, so its dense float64 Hessian can be
formed and diagonalized, and every seed gives the same weights
(`seeded`): an MLP for tabular data, a residual CNN with BatchNorm, a
character LSTM language model, a small vision transformer, and (with the
``hf`` extra) a tiny GPT-2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from hessian_spectra.models.resnet import resnet20

M = TypeVar("M", bound=nn.Module)


def seeded(build: Callable[[], M], seed: int) -> M:
    """`build()` with torch's global generator seeded, leaving the caller's state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


def mlp(
    in_features: int, num_classes: int, *, hidden: int = 32, depth: int = 2, seed: int = 0
) -> nn.Sequential:
    """Linear-tanh layers of width `hidden` (`depth` of them) and a linear head."""
    if depth < 1 or hidden < 1:
        raise ValueError(f"depth and hidden must be positive, got {depth} and {hidden}")

    def build() -> nn.Sequential:
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)

    return seeded(build, seed)


def resnet_digits(*, width: int = 4, depth: int = 8, seed: int = 0) -> nn.Module:
    """The CIFAR ResNet family for 1-channel images: ResNet8 of width 4 has 5,138 parameters."""
    return resnet20(10, depth=depth, width=width, seed=seed, in_channels=1)


class CharLSTM(nn.Module):
    """Embedding - LSTM - linear head: next-character logits for every position."""

    def __init__(self, vocab: int, *, embed: int = 16, hidden: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.head(out)


def char_lstm(vocab: int, *, embed: int = 16, hidden: int = 24, seed: int = 0) -> CharLSTM:
    """A `CharLSTM` with seeded initialization."""
    return seeded(lambda: CharLSTM(vocab, embed=embed, hidden=hidden), seed)


class TinyViT(nn.Module):
    """A vision transformer: patch embedding, class token, pre-norm encoder layers, linear head.

    Built from `nn.TransformerEncoderLayer` (scaled-dot-product attention), as
    most vision transformers in PyTorch are.
    """

    def __init__(
        self,
        image: int = 8,
        patch: int = 2,
        channels: int = 1,
        num_classes: int = 10,
        *,
        dim: int = 16,
        depth: int = 2,
        heads: int = 2,
        mlp_dim: int = 32,
    ) -> None:
        super().__init__()
        if image % patch:
            raise ValueError(f"patch {patch} must divide the image size {image}")
        self.patch = patch
        tokens = (image // patch) ** 2
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, tokens + 1, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, mlp_dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        b, c, h, w = x.shape
        patches = x.unfold(2, p, p).unfold(3, p, p)  # (b, c, h/p, w/p, p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, (h // p) * (w // p), c * p * p)
        z = torch.cat([self.cls.expand(b, -1, -1), self.embed(patches)], 1) + self.pos
        return self.head(self.norm(self.encoder(z))[:, 0])


def tiny_vit(*, seed: int = 0, **kwargs: Any) -> TinyViT:
    """A `TinyViT` for 8x8 digits with seeded initialization (4,922 parameters by default)."""
    return seeded(lambda: TinyViT(**kwargs), seed)


def tiny_gpt2(
    vocab: int, context: int, *, dim: int = 16, layers: int = 2, heads: int = 2, seed: int = 0
) -> nn.Module:
    """A GPT-2 (HuggingFace ``GPT2LMHeadModel``) of a few thousand parameters, no dropout.

    Needs the ``hf`` extra (``pip install hessian-spectra[hf]``).
    """
    try:  # optional extra: transformers is not a core requirement
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tiny_gpt2 needs HuggingFace transformers: pip install 'hessian-spectra[hf]'"
        ) from err
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=context,
        n_embd=dim,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return seeded(lambda: GPT2LMHeadModel(config), seed)
