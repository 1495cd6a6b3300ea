"""The CIFAR ResNet of He et al. (2016), as used by PyHessian (Yao et al., 2020).

`resnet20()` at its defaults is the study's network: 3 stages of 3 basic
blocks, widths 16/32/64, bias-free 3x3 convolutions each followed by
BatchNorm, 1x1 convolution + BatchNorm projection shortcuts where the shape
changes, global average pooling and a linear classifier: 272,474 parameters.
The options reproduce the PyHessian paper's comparisons: depth (6n + 2),
base width, with or without BatchNorm, with or without residual connections.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (each with optional BatchNorm) and an optional shortcut."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, *, batch_norm: bool, residual: bool
    ) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1: nn.Module = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2: nn.Module = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.shortcut: nn.Module | None = None
        if residual and (stride != 1 or in_ch != out_ch):
            proj: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)]
            if batch_norm:
                proj.append(nn.BatchNorm2d(out_ch))
            self.shortcut = nn.Sequential(*proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return torch.relu(out)


class CifarResNet(nn.Module):
    """A CIFAR ResNet: stem, three stages of basic blocks, average pool, linear head."""

    def __init__(
        self,
        num_classes: int = 10,
        *,
        depth: int = 20,
        width: int = 16,
        batch_norm: bool = True,
        residual: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        if width < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError(
                "width, num_classes and in_channels must be positive, got "
                f"{width}, {num_classes} and {in_channels}"
            )
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1: nn.Module = nn.BatchNorm2d(width) if batch_norm else nn.Identity()
        stages = []
        in_ch = width
        for i, out_ch in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(
                    BasicBlock(in_ch, out_ch, stride, batch_norm=batch_norm, residual=residual)
                )
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def init_weights(model: nn.Module, seed: int | None = None) -> nn.Module:
    """He-normal convolutions (fan-out), unit/zero BatchNorm, uniform linear layers.

    Args:
        model: the model whose parameters are (re)initialized in place.
        seed: draws come from a `torch.Generator` seeded with it; None uses
            torch's global generator, like any freshly built module.

    Returns:
        The same model.
    """
    gen = None if seed is None else torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                w = torch.randn(m.weight.shape, generator=gen, dtype=torch.float64)
                m.weight.copy_(w * math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                w = torch.rand(m.weight.shape, generator=gen, dtype=torch.float64)
                m.weight.copy_((2 * w - 1) * bound)
                if m.bias is not None:
                    b = torch.rand(m.bias.shape, generator=gen, dtype=torch.float64)
                    m.bias.copy_((2 * b - 1) * bound)
    return model


def resnet20(
    num_classes: int = 10,
    *,
    depth: int = 20,
    width: int = 16,
    batch_norm: bool = True,
    residual: bool = True,
    seed: int | None = None,
    in_channels: int = 3,
) -> CifarResNet:
    """The CIFAR ResNet20 of the study (272,474 parameters at the defaults).

    Args:
        num_classes: outputs of the linear head.
        depth: 6n + 2 layers (20 gives 3 blocks per stage; 32, 44, 56 ... deeper).
        width: channels of the first stage (the others have 2x and 4x).
        batch_norm: BatchNorm after every convolution (False: plain convolutions).
        residual: residual connections (False: a plain deep CNN, no shortcuts).
        seed: seed of the initialization; None uses torch's global generator.
        in_channels: channels of the input images (3 for CIFAR, 1 for digits).

    Returns:
        The model in train mode; call `.eval()` before building a Hessian.
    """

    def build() -> CifarResNet:
        return CifarResNet(
            num_classes,
            depth=depth,
            width=width,
            batch_norm=batch_norm,
            residual=residual,
            in_channels=in_channels,
        )

    if seed is None:
        return init_weights(build())  # type: ignore[return-value]
    # the layer constructors draw their default init from the global generator;
    # fork it so that a seeded model leaves the caller's random state alone
    with torch.random.fork_rng(devices=[]):
        model = build()
    return init_weights(model, seed)  # type: ignore[return-value]
