"""Logit KD with the teacher-output cache against hand-written loops doing the same job.

    python -m benchmarks.cache --epochs 20 --repeats 7

Digits, teacher CNN [32, 64] (an exported, randomly initialised one: timing does not depend on
what it learnt), student CNN [4, 8], batch 32, Adam, Hinton KD T = 4, alpha = 0.5. Variants, all
with logging off and 1 torch thread, interleaved, median wall time from data loading to the
final test accuracy:
  hand: student alone | hand: KD, teacher every step | hand: KD, teacher logits precomputed once
  kdlab: KD without cache | kdlab: KD with teacher_cache
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import KD_RECIPE
from kdlab.engine import checkpoint
from kdlab.engine.runner import run
from kdlab.data.loader import TensorLoader
from kdlab.data.vision import DigitsConfig, load_digits_tensors
from kdlab.methods.logit_kd import hinton_kd_loss
from kdlab.models.cnn import CompactCNN, CompactCNNConfig

def hand(epochs: int, mode: str, teacher_state: dict) -> float:
    torch.manual_seed(0)
    (xtr, ytr), _, (xte, yte) = load_digits_tensors(DigitsConfig())
    student = CompactCNN(CompactCNNConfig(channels=(4, 8)), 1, 8, 10)
    teacher = CompactCNN(CompactCNNConfig(channels=(32, 64)), 1, 8, 10)
    teacher.load_state_dict(teacher_state)
    teacher.eval()
    opt = torch.optim.Adam(student.parameters(), lr=0.01)
    train = TensorLoader(xtr, ytr, 32, shuffle=True, seed=0)
    if mode == "precomputed":
        with torch.no_grad():
            cached = teacher(xtr)
    for epoch in range(epochs):
        train.set_epoch(epoch)
        student.train()
        for b in train:
            logits = student(b.inputs)
            loss = F.cross_entropy(logits, b.targets)
            if mode != "alone":
                if mode == "precomputed":
                    t = cached[b.index]
                else:
                    with torch.no_grad():
                        t = teacher(b.inputs)
                loss = 0.5 * loss + 0.5 * hinton_kd_loss(logits, t, temperature=4.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    student.eval()
    with torch.no_grad():
        return (student(xte).argmax(1) == yte).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(1)
        teacher = CompactCNN(CompactCNNConfig(channels=(32, 64)), 1, 8, 10)
        teacher_file = Path(tmp) / "teacher.pt"
        checkpoint.export_model(teacher_file, model=teacher, arch="cnn", config={"channels": [32, 64]},
                                num_classes=10, input_shape=(1, 8, 8))
        recipes = {}
        for key, cache in (("kdlab: KD without cache", ""), ("kdlab: KD with teacher_cache", "methods.teacher_cache = {}")):
            recipes[key] = Path(tmp) / f"{len(recipes)}.toml"
            recipes[key].write_text(textwrap.dedent(KD_RECIPE.format(
                epochs=args.epochs, batch=32, lr=0.01, teacher=teacher_file, t=4.0, alpha=0.5, cache=cache)))
        variants = {
            "hand: student alone": lambda: hand(args.epochs, "alone", teacher.state_dict()),
            "hand: KD, teacher every step": lambda: hand(args.epochs, "every_step", teacher.state_dict()),
            "hand: KD, teacher logits precomputed": lambda: hand(args.epochs, "precomputed", teacher.state_dict()),
            **{k: (lambda p=p: run(p, out=tmp).metrics["student"]["test/accuracy"]) for k, p in recipes.items()},
        }
        hand(1, "alone", teacher.state_dict())  # warm-up
        times = {k: [] for k in variants}
        acc = {}
        for _ in range(args.repeats):
            for key, fn in variants.items():
                start = time.perf_counter()
                acc[key] = fn()
                times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    cached = med["kdlab: KD with teacher_cache"]
    print(f"digits, student cnn [4, 8], teacher cnn [32, 64], batch 32, {args.epochs} epochs, median of "
          f"{args.repeats}, {args.threads} thread(s), torch {torch.__version__}")
    print("| variant | median s | kdlab cached / this | test accuracy |")
    print("|---|---|---|---|")
    for key in variants:
        print(f"| {key} | {med[key]:.3f} | {cached / med[key]:.3f} | {acc[key]:.4f} |")


if __name__ == "__main__":
    main()
