"""The models people analyse, measured: GPT-2, BERT, MobileNetV3-style, LSTM (tiny, CPU).

For each model (the tiny ones of ``tests/operators/test_hf_models.py``, built
here from configs, no download; the HuggingFace models are passed with no
loss, so the operator uses ``model(**batch).loss``):

- ``hvp_over_gradient``: the median time of one Hessian-vector product over the
  median time of one gradient (forward + backward) on the same data, and the
  same per column of an 8-column block (``block8_over_gradient``). The
  MobileNetV3-style network has an ``nn.Hardsigmoid`` (no double backward), so
  its products are ``hvp_mode="finite_difference"`` (four gradients per
  column); its twice-differentiable twin (the same gate written as a clamp)
  gives the double-backward cost beside it;
- top-10 eigenvalues, float64: the products each method spends and its
  largest relative eigenvalue error against a tight ARPACK reference
  (``scipy.sparse.linalg.eigsh`` with tol=1e-12 on the operator): Lanczos
  (``hs.eigsh``, tol=1e-6), PyHessian's deflated power iteration
  (``method="power"``, ``stop="relative_change"``, tol=1e-3, PyHessian's rule)
  and ARPACK at tol=1e-6 (for the finite-difference network also the error of
  its reference against the twin's double-backward one);
- bfloat16: the top-10 eigenvalues with ``product_dtype=torch.bfloat16`` (a
  float32 model's products under autocast) against float32 products, and the
  relative error of one product (when the operator has ``product_dtype``).

Run under ``nice`` with one thread: ``nice -n 10 python benchmarks/architectures.py
[--quick]``; results in ``benchmarks/results/architectures.json``.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse.linalg as sla
import torch
from common import median_seconds, write_json
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import hessian_spectra as hs
from hessian_spectra.operators.hessian import HessianOperator

# ----------------------------------------------------------------- models


def _text_ids() -> tuple[torch.Tensor, int]:
    text = inspect.getsource(json).lower()
    alphabet = "abcdefghijklmnopqrstuvwxyz "
    return torch.tensor([alphabet.index(c) if c in alphabet else 27 for c in text]), 28


def _lm_batches(ids: torch.Tensor, layout: list[tuple[int, int]], seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for size, length in layout:
        starts = torch.randint(0, len(ids) - length, (size,), generator=g).tolist()
        input_ids = torch.stack([ids[s : s + length] for s in starts])
        mask = torch.ones_like(input_ids)
        mask[0, -3:] = 0
        labels = input_ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return out


def gpt2() -> tuple[nn.Module, Any, dict]:
    import transformers  # optional extra: the [hf] extra

    ids, vocab = _text_ids()
    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=16, n_embd=16, n_layer=2, n_head=2, n_inner=16,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for batch in _lm_batches(ids, [(4, 16)] * 12, seed=1):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    return model.eval(), _lm_batches(ids, [(3, 12), (2, 9), (4, 7)], seed=2), {}


def bert() -> tuple[nn.Module, Any, dict]:
    import transformers  # optional extra: the [hf] extra

    ids, vocab = _text_ids()
    config = transformers.BertConfig(
        vocab_size=vocab + 1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16, type_vocab_size=1,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    g = torch.Generator().manual_seed(3)
    batches = _lm_batches(ids, [(3, 12), (2, 9), (4, 7)], seed=4)
    for batch in batches:
        masked = (torch.rand(batch["labels"].shape, generator=g) < 0.3) & (batch["labels"] >= 0)
        masked[:, 1] = True
        batch["labels"] = batch["input_ids"].masked_fill(~masked, -100)
        batch["input_ids"] = batch["input_ids"].masked_fill(masked, vocab)
    return model, batches, {}


class _ClampGate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x / 6 + 0.5, 0.0, 1.0)


class _SE(nn.Module):
    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.fc1, self.fc2, self.gate = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1), gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class _Block(nn.Module):
    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.depthwise = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        )
        self.se = _SE(gate)
        self.project = nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardswish(self.depthwise(F.hardswish(self.expand(x))))
        return x + self.project(self.se(y))


def mobilenet(gate: type[nn.Module] = nn.Hardsigmoid) -> tuple[nn.Module, Any, dict]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.Hardswish(),
        _Block(gate()), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 8), nn.Hardswish(),
        nn.Linear(8, 3),
    )  # fmt: skip
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 8, 8) * 2 + 0.5)
    g = torch.Generator().manual_seed(5)
    data = [(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))
            for n in (6, 3)]  # fmt: skip
    mode = "finite_difference" if gate is nn.Hardsigmoid else "double_backward"
    return model.eval(), data, {"criterion": nn.CrossEntropyLoss(), "hvp_mode": mode}


class _LSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.lstm, self.head = (
            nn.Embedding(12, 5),
            nn.LSTM(5, 6, batch_first=True),
            nn.Linear(6, 3),
        )

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens, lengths = inputs
        packed = pack_padded_sequence(
            self.emb(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        return self.head(self.lstm(packed)[1][0][-1])


def lstm() -> tuple[nn.Module, Any, dict]:
    g = torch.Generator().manual_seed(7)
    data = []
    for n, t in ((5, 7), (3, 4)):
        lengths = torch.randint(1, t + 1, (n,), generator=g)
        lengths[0] = t
        tokens = torch.randint(0, 12, (n, t), generator=g)
        data.append(((tokens, lengths), torch.randint(0, 3, (n,), generator=g)))
    return _LSTM().eval(), data, {"criterion": nn.CrossEntropyLoss()}


MODELS: dict[str, Callable[[], tuple[nn.Module, Any, dict]]] = {
    "gpt2": gpt2,
    "bert_mlm": bert,
    "mobilenet_v3_style": mobilenet,
    "mobilenet_v3_style_clamp_gate": lambda: mobilenet(_ClampGate),
    "lstm_packed": lstm,
}


# ----------------------------------------------------------------- measures


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median CPU seconds of `fn()` (no warm-up: the callers have made a first call)."""
    return median_seconds(fn, repeats, warmup=0, clock=time.process_time)["median"]


def _operator(model: nn.Module, data: Any, options: dict, **more: Any) -> HessianOperator:
    options = dict(options)
    criterion = options.pop("criterion", None)
    return HessianOperator(model, criterion, data, check_deterministic=False, **options, **more)


def cost(model: nn.Module, data: Any, options: dict, repeats: int) -> dict[str, float]:
    op = _operator(model, data, options)

    def gradient() -> None:
        model.zero_grad()
        for batch in op.model_loss.batches():
            op.model_loss.loss(batch)[0].backward()

    v = torch.randn(op.shape[0], 8, generator=torch.Generator().manual_seed(0)).to(op.dtype)
    op.matvec(v[:, 0])  # warm up (and the symmetry check)
    t_grad = _median_time(gradient, repeats)
    t_hvp = _median_time(lambda: op.matvec(v[:, 0]), repeats)
    t_block = _median_time(lambda: op.matmat(v), max(1, repeats // 2)) / 8
    return {
        "n": op.shape[0],
        "gradient_cpu_s": t_grad,
        "hvp_over_gradient": t_hvp / t_grad,
        "block8_over_gradient": t_block / t_grad,
    }


def _arpack(op: HessianOperator, k: int, tol: float) -> tuple[np.ndarray, int]:
    count = [0]

    def matvec(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        t = torch.as_tensor(np.asarray(x).reshape(-1), dtype=op.dtype)
        return op.matvec(t).double().numpy()

    n = op.shape[0]
    lin = sla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    vals = sla.eigsh(lin, k=k, which="LA", tol=tol, v0=np.ones(n))[0]
    return np.sort(vals)[::-1], count[0]


def _float64_loss(model: nn.Module) -> None:
    """HuggingFace casts the logits to float32 in its losses: the same losses in float64."""
    name = type(model).__name__
    if name.endswith("LMHeadModel"):

        def causal(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, **_: Any) -> Any:
            labels = F.pad(labels, (0, 1), value=-100)[..., 1:]
            return F.cross_entropy(logits.reshape(-1, vocab_size), labels.reshape(-1))

        model.loss_function = causal
    elif name.endswith("ForMaskedLM"):

        def masked(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, **_: Any) -> Any:
            return F.cross_entropy(logits.reshape(-1, vocab_size), labels.reshape(-1))

        model.loss_function = masked


def top10(model: nn.Module, data: Any, options: dict, k: int, power_budget: int) -> dict:
    model64 = copy.deepcopy(model).double()
    _float64_loss(model64)
    op = _operator(model64, data, options)
    reference, ref_count = _arpack(op, k, 1e-12)

    def error(vals: Any) -> float:
        vals = np.sort(np.asarray(vals, dtype=np.float64))[::-1]
        return float(np.abs(vals - reference).max() / np.abs(reference).max())

    out: dict[str, Any] = {"reference": reference.tolist(), "arpack_tol1e-12_products": ref_count}
    before = op.num_matvecs
    lanczos = hs.eigsh(op, k=k, seed=0, tol=1e-6)
    out["lanczos"] = {"products": op.num_matvecs - before, "error": error(lanczos.eigenvalues)}
    before = op.num_matvecs
    power = hs.eigsh(
        op, k=k, seed=0, method="power", stop="relative_change", tol=1e-3, max_matvecs=power_budget
    )
    out["power_pyhessian_rule"] = {
        "products": op.num_matvecs - before,
        "error": error(power.eigenvalues),
        "converged": int(np.asarray(power.converged).sum()),
    }
    vals, count = _arpack(op, k, 1e-6)
    out["arpack_tol1e-6"] = {"products": count, "error": error(vals)}
    return out


def bfloat16(model: nn.Module, data: Any, options: dict, k: int) -> dict:
    if options.get("hvp_mode") == "finite_difference":
        return {"note": "not measured: finite differences in bfloat16 lose the derivative"}
    model32 = copy.deepcopy(model).float()
    op32 = _operator(model32, data, options)
    try:
        op16 = _operator(model32, data, options, product_dtype=torch.bfloat16)
    except TypeError as err:
        return {"note": f"product_dtype not available: {err}"}
    v = torch.randn(op32.shape[0], generator=torch.Generator().manual_seed(1))
    a, b = op32.matvec(v), op16.matvec(v)
    ref = hs.eigsh(op32, k=k, seed=0, tol=1e-5).eigenvalues
    low = hs.eigsh(op16, k=k, seed=0, tol=1e-2).eigenvalues
    ref, low = np.asarray(ref, dtype=np.float64), np.asarray(low, dtype=np.float64)
    return {
        "product_relative_error": float((a - b).norm() / a.norm()),
        "top_eigenvalue_relative_errors": (np.abs(low - ref) / np.abs(ref).max()).tolist(),
        "max_top_eigenvalue_error": float(np.abs(low - ref).max() / np.abs(ref).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, k=5")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    k = 5 if args.quick else 10
    repeats = 3 if args.quick else 7
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        model, data, options = MODELS[name]()
        entry: dict[str, Any] = {"cost": cost(model, data, options, repeats)}
        entry[f"top{k}"] = top10(model, data, options, k, power_budget=150 * k)
        entry["bfloat16"] = bfloat16(model, data, options, k)
        results[name] = entry
        print(name, json.dumps(entry["cost"]), flush=True)  # noqa: T201
    fd, exact = results.get("mobilenet_v3_style"), results.get("mobilenet_v3_style_clamp_gate")
    if fd is not None and exact is not None:  # finite differences against the exact twin
        a = np.asarray(fd[f"top{k}"]["reference"])
        b = np.asarray(exact[f"top{k}"]["reference"])
        fd[f"top{k}"]["error_vs_double_backward_twin"] = float(
            np.abs(a - b).max() / np.abs(b).max()
        )
    write_json(
        "architectures_quick" if args.quick else "architectures", {"k": k, "models": results}
    )


if __name__ == "__main__":
    main()
