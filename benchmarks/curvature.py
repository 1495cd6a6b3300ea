"""Cost of one product with the Hessian, the GGN and the Fisher, relative to one gradient.

Two models, each on one fixed batch, float32, eval mode, measured in one run:

- ResNet20 (the study's CIFAR network, 272,474 parameters), 32 random
  CIFAR-shaped images, cross-entropy over 10 classes;
- a tiny transformer language model (2 pre-norm blocks, width 32, 4 heads,
  vocabulary 50, 16 tokens, written out with matmul/softmax/LayerNorm so that
  torch.func batches it), 16 sequences, cross-entropy over every token.

For each: a plain gradient (forward + backward, the unit), and per column of
a product with b = 1 and b = 8 columns: `HessianOperator`, `GGNOperator`, the
empirical `FisherOperator` and the Monte-Carlo one with one draw per sample.
The operators are built with ``check_deterministic=False`` so that no first
product is taken twice. The Fisher's per-sample gradients are computed once
per batch whatever b, so its cost per column falls with b; the Hessian's and
the GGN's are b backward passes over one graph.

Timings are medians over ``--repeats`` rounds, each round running every
variant in turn; process CPU seconds are recorded beside wall seconds (the
steadier number on a shared machine). Run:
``python benchmarks/curvature.py [--repeats 3] [--threads 1] [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from common import resnet20_problem, write_json
from torch import nn

from hessian_spectra.operators import FisherOperator, GGNOperator, HessianOperator

BLOCKS = (1, 8)


class Block(nn.Module):
    """A pre-norm transformer block: causal self-attention and an MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        wide = 4 * width
        self.mlp = nn.Sequential(nn.Linear(width, wide), nn.GELU(), nn.Linear(wide, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(D, dim=-1)
        q, k, v = (t.reshape(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // self.heads)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        att = scores.masked_fill(mask, float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """Token ids (B, T) -> next-token logits (B, vocab, T), classes on dim 1 for cross-entropy."""

    def __init__(self, vocab: int = 50, width: int = 32, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(64, width))
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.norm(self.blocks(x))).transpose(1, 2)


def transformer_problem(batch: int = 16, seed: int = 0) -> tuple[nn.Module, tuple[Any, Any]]:
    torch.manual_seed(seed)
    model = TinyLM().eval()
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50, (batch, 17), generator=gen)
    return model, (tokens[:, :-1], tokens[:, 1:])


def variants(model: nn.Module, batch: tuple[Any, Any]) -> dict[str, tuple[int, Callable[[], Any]]]:
    """{name: (columns, call)}: the gradient, then each operator at each block size."""
    criterion = nn.CrossEntropyLoss()
    x, y = batch
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient() -> Any:
        return torch.autograd.grad(criterion(model(x), y), params)

    out: dict[str, tuple[int, Callable[[], Any]]] = {"gradient": (1, gradient)}
    ops = {
        "hessian": HessianOperator(model, criterion, batch, check_deterministic=False),
        "ggn": GGNOperator(model, criterion, batch, check_deterministic=False),
        "fisher_empirical": FisherOperator(model, criterion, batch, check_deterministic=False),
        "fisher_mc": FisherOperator(
            model, criterion, batch, kind="mc", seed=0, check_deterministic=False
        ),
    }
    n = ops["hessian"].shape[0]
    V = torch.randn((n, max(BLOCKS)), generator=torch.Generator().manual_seed(1))
    for name, op in ops.items():
        for b in BLOCKS:
            out[f"{name} b={b}"] = (b, lambda op=op, b=b: op.matmat(V[:, :b]))
    return out


def measure(calls: dict[str, tuple[int, Callable[[], Any]]], repeats: int) -> dict[str, Any]:
    """Median wall and CPU seconds per column, rounds interleaving the variants."""
    for _, call in calls.values():  # warm-up
        call()
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for name, (b, call) in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            wall[name].append((time.perf_counter() - t0) / b)
            cpu[name].append((time.process_time() - c0) / b)
    unit_wall = statistics.median(wall["gradient"])
    unit_cpu = statistics.median(cpu["gradient"])
    return {
        name: {
            "wall_per_column": statistics.median(wall[name]),
            "cpu_per_column": statistics.median(cpu[name]),
            "wall_vs_gradient": statistics.median(wall[name]) / unit_wall,
            "cpu_vs_gradient": statistics.median(cpu[name]) / unit_cpu,
        }
        for name in calls
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smaller batches, one repeat")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    results: dict[str, Any] = {}
    model, _, batch, _ = resnet20_problem(torch.float32, batch=8 if args.quick else 32, seed=0)
    results["resnet20"] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": int(batch[0].shape[0]),
        "timings": measure(variants(model, batch), repeats),
    }
    lm, lm_batch = transformer_problem(batch=4 if args.quick else 16)
    results["tiny_transformer"] = {
        "parameters": sum(p.numel() for p in lm.parameters()),
        "batch": int(lm_batch[0].shape[0]),
        "tokens": int(lm_batch[0].numel()),
        "timings": measure(variants(lm, lm_batch), repeats),
    }
    name = "curvature_quick" if args.quick else "curvature"
    path = write_json(name, {"repeats": repeats, "threads": args.threads, **results})
    print(f"wrote {path}")
    for model_name, rec in results.items():
        print(f"\n{model_name} ({rec['parameters']} parameters, batch {rec['batch']})")
        print(f"{'product':28s} {'CPU s/column':>12s} {'x gradient':>10s}")
        for key, t in rec["timings"].items():
            print(f"{key:28s} {t['cpu_per_column']:12.4f} {t['cpu_vs_gradient']:10.2f}")


if __name__ == "__main__":
    main()
