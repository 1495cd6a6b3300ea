"""The Hessian's spectrum while the HuggingFace Trainer trains a tiny transformer, and its cost.

A two-layer GPT-2 (built from a config, nothing downloaded) learns sequences
from a fixed random Markov chain. ``SpectrumCallback`` from
``hessian_spectra.integrations.transformers`` measures on a fixed probe batch,
with the model's own loss (``model(**batch).loss``, weighted by label tokens),
the top-3 Hessian eigenvalues (warm-started), the trace and, since the Trainer
uses AdamW, the preconditioned sharpness with the threshold 38 / lr. With no
spacing given, the default budget ``max_overhead=0.05`` spaces the
measurements. The values go to ``trainer.state.log_history`` and, as the
Trainer reports to TensorBoard here, to its TensorBoard folder.

The script trains twice, with and without the callback, and prints the
overhead both ways. Needs the ``hf`` and ``tensorboard`` extras.

Run:
    python examples/hf_trainer_spectrum.py --steps 300      # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import transformers

from hessian_spectra.integrations.transformers import SpectrumCallback
from hessian_spectra.results import MonitorKeys as Key

VOCAB, LENGTH = 32, 16


def markov_sequences(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Sequences from one fixed random Markov chain (each token mostly follows from the last)."""
    g = torch.Generator().manual_seed(0)
    transition = torch.softmax(3.0 * torch.randn(VOCAB, VOCAB, generator=g), dim=1)
    g.manual_seed(seed)
    ids = torch.empty(n, LENGTH, dtype=torch.long)
    ids[:, 0] = torch.randint(0, VOCAB, (n,), generator=g)
    for j in range(1, LENGTH):
        ids[:, j] = torch.multinomial(transition[ids[:, j - 1]], 1, generator=g)[:, 0]
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def tiny_gpt2(seed: int) -> transformers.GPT2LMHeadModel:
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=LENGTH,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config)


def train(args: argparse.Namespace, callbacks: list, name: str) -> float:
    """Train once; the wall seconds of ``trainer.train``."""
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(args.out / name)
    targs = transformers.TrainingArguments(
        output_dir=str(args.out / f"{name}-trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=16,
        learning_rate=args.lr,
        logging_steps=20,
        report_to=["tensorboard"],
        save_strategy="no",
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=tiny_gpt2(args.seed),
        args=targs,
        train_dataset=markov_sequences(2048, seed=1),
        callbacks=callbacks,
    )
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--every-n-steps", type=int, default=None, help="default: the 5 %% budget")
    p.add_argument("--max-overhead", type=float, default=0.05)
    p.add_argument("--probe", type=int, default=64, help="sequences in the probe batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("hf-spectrum"))
    args = p.parse_args()

    examples = markov_sequences(args.probe, seed=2)
    probe = {k: torch.stack([e[k] for e in examples]) for k in examples[0]}  # one fixed batch
    cb = SpectrumCallback(
        probe, every_n_steps=args.every_n_steps, k=3, max_overhead=args.max_overhead
    )
    plain = train(args, [], "plain")
    watched = train(args, [cb], "watched")
    res = cb.result()
    res.to_json(args.out / "spectrum.json")
    recs = res.records
    warm = [r[Key.EIG_MATVECS] for r in recs if r[Key.WARM]]
    pre = recs[-1].get(Key.PRECONDITIONED_EIGENVALUES, [float("nan")])[0]
    print(  # noqa: T201
        f"{len(recs)} measurements at steps {[r[Key.STEP] for r in recs]}; "
        f"skipped {res.settings['skipped']} by the budget\n"
        f"top eigenvalue {recs[0][Key.EIGENVALUES][0]:.4g} -> {recs[-1][Key.EIGENVALUES][0]:.4g}; "
        f"preconditioned {pre:.4g} against {recs[-1][Key.THRESHOLD_LABEL]} = "
        f"{recs[-1][Key.THRESHOLD]:.4g}\n"
        f"HVPs per top-3 eigensolve: cold {recs[0][Key.EIG_MATVECS]}, warm "
        f"{min(warm, default=0)}-{max(warm, default=0)}\n"
        f"overhead: {res.settings['overhead']:.1%} by the callback's clock "
        f"({res.settings['seconds_measuring']:.1f} s of {res.settings['seconds_elapsed']:.1f} s); "
        f"wall time {watched:.1f} s with, {plain:.1f} s without ({watched / plain - 1:+.1%})"
    )


if __name__ == "__main__":
    main()
