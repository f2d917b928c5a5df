"""The compute of the full CIFAR-100 protocol (recipes/cifar100_protocol.toml), for issue #31
item 5 when no GPU is lent: floating-point operations of one training step and one evaluation
batch of each teacher -> student pair, *counted* by torch.utils.flop_counter on the real models
at the protocol's batch (64 x 3 x 32 x 32), times the protocol's steps, epochs, splits and runs.

    python -m benchmarks.protocol_cost [--rates 10,25,50]

A step is the teacher's forward (no gradient) and the student's forward and backward (about 3x
its forward). Method overheads (connectors, CRD's banks, ReviewKD's fusion, FT's paraphraser
phase, ...) are not counted: they are small next to the networks for all but CRD's 16,384-
negative NCE, so the figure is a lower bound. GPU hours are the counted operations divided by an
*assumed* sustained rate (``--rates``, TFLOP/s): small CIFAR networks at batch 64 reach a small
share of a GPU's peak, and no GPU was available to measure it. Only torch and kdlab are needed.
"""

from __future__ import annotations

import argparse
import tomllib
import types
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from kdlab.models.cifar import TABLE

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "cifar100_protocol.toml"
TRAIN, VAL, TEST, BATCH = 45_000, 5_000, 10_000, 64


def _model(arch: str) -> torch.nn.Module:
    build, config = TABLE[arch]
    return build(config, types.SimpleNamespace(input_shape=(3, 32, 32), num_classes=100))


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def pair_cost(teacher_arch: str, student_arch: str) -> dict[str, int]:
    teacher, student = _model(teacher_arch).train(False), _model(student_arch).train()
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 100, (BATCH,))

    def kd_step():
        with torch.no_grad():
            teacher(x)
        torch.nn.functional.cross_entropy(student(x), y).backward()

    def teacher_step():
        torch.nn.functional.cross_entropy(_model(teacher_arch).train()(x), y).backward()

    with torch.no_grad():
        student_eval = _flops(lambda: student(x))
        teacher_eval = _flops(lambda: teacher(x))
    return {"kd_step": _flops(kd_step), "teacher_step": _flops(teacher_step), "student_eval": student_eval,
            "teacher_eval": teacher_eval}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="10,25,50", help="assumed sustained TFLOP/s, comma-separated")
    args = parser.parse_args()
    recipe = tomllib.loads(RECIPE.read_text())
    epochs = recipe["defaults"]["epochs"]
    sweep = recipe["sweep"]
    seeds = len(sweep["seeds"])
    methods = len(sweep["grid"]["stages.student.methods"])
    eval_batches = -(-VAL // BATCH) + (-(-TEST // BATCH) if recipe["defaults"].get("eval_test") else 0)
    steps = -(-TRAIN // BATCH)
    total = 0
    print(f"protocol: {epochs} epochs, {steps} steps of {BATCH} + {eval_batches} evaluation batches per epoch, "
          f"{methods} method rows x {seeds} seeds per pair\n")
    print("| teacher -> student | step (GFLOP) | student run (PFLOP) | teacher run (PFLOP) | pair, all runs (PFLOP) |")
    print("|---|---|---|---|---|")
    for t_model, s_model in zip(sweep["zip"]["stages.teacher.model"], sweep["zip"]["stages.student.model"]):
        c = pair_cost(t_model["arch"], s_model["arch"])
        student_run = epochs * (steps * c["kd_step"] + eval_batches * c["student_eval"])
        teacher_run = epochs * (steps * c["teacher_step"] + eval_batches * c["teacher_eval"])
        pair = methods * seeds * student_run + seeds * teacher_run
        total += pair
        print(f"| {t_model['arch']} -> {s_model['arch']} | {c['kd_step'] / 1e9:.1f} | {student_run / 1e15:.2f} | "
              f"{teacher_run / 1e15:.2f} | {pair / 1e15:.1f} |")
    print(f"\ntotal: {total / 1e18:.2f} EFLOP ({methods * seeds * 3} student runs, {seeds * 3} teacher runs)")
    for rate in (float(r) for r in args.rates.split(",")):
        print(f"at an assumed {rate:g} TFLOP/s sustained: {total / (rate * 1e12) / 3600:,.0f} GPU hours")


if __name__ == "__main__":
    main()
