"""Epoch time of every method of the CIFAR-100 protocol on CIFAR-shaped data (issue #14).

    python -m benchmarks.cifar_methods --images 1024 --pair resnet32x4,resnet8x4

Writes a CIFAR-100 folder in the real file format (random 32x32 images, 100 classes) with
``--images`` training images, trains the teacher for one epoch (its accuracy is irrelevant: only
time is measured), then each method set of ``recipes/cifar100_protocol.toml`` for ``--epochs``
epochs from that teacher (batch 64, random crop + flip, the protocol's optimizer), and prints the
median training time per epoch of each method (from the epoch's start to its last optimizer step:
data, teacher and student forward, the losses, backward and step; evaluation excluded) and the
ratio to the student trained alone, measured in the same run. ``--device cuda`` on a GPU machine.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import tomli_w

from kdlab import hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run

ROOT = Path(__file__).resolve().parents[1]


def write_cifar100(folder: Path, images: int, seed: int = 0) -> None:
    """The python-pickle CIFAR-100 layout torchvision reads: train, test and meta."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for name, n in (("train", images), ("test", max(64, images // 10))):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                         "fine_labels": rng.integers(0, 100, n).tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)


class EpochTimer:
    """Training seconds of each epoch: its start to its last optimizer step."""

    default_enabled = True
    seconds: list[float] = []

    @hookimpl
    def kdlab_epoch_start(self, stage, epoch):
        self.start = self.last = time.perf_counter()

    @hookimpl
    def kdlab_step_end(self, stage, loss, terms):
        self.last = time.perf_counter()

    @hookimpl
    def kdlab_epoch_end(self, stage, epoch, metrics):
        EpochTimer.seconds.append(self.last - self.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per method (the median is printed)")
    parser.add_argument("--pair", default="resnet32x4,resnet8x4", help="teacher,student (one of the recipe's pairs)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    teacher_arch, student_arch = args.pair.split(",")
    recipe = tomllib.loads((ROOT / "recipes" / "cifar100_protocol.toml").read_text())
    pairs = [m["arch"] for m in recipe["sweep"]["zip"]["stages.student.model"]]
    taps = recipe["sweep"]["zip"]["stages.student.taps"][pairs.index(student_arch)]
    methods = recipe["sweep"]["grid"]["stages.student.methods"]
    catalogue = discover(extra={"epoch_timer": EpochTimer})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cifar100(tmp / "data" / "cifar-100-python", args.images)
        base = {**recipe, "device": args.device,
                "data": {**recipe["data"], "root": str(tmp / "data"), "verify": False, "val_size": 64,
                         "num_workers": 0},
                "plugins": {"progress": {"enabled": False}, "tensorboard": {"enabled": False},
                            "checkpoint": {"enabled": False}}}
        del base["sweep"]
        base["stages"] = {"teacher": {**recipe["stages"]["teacher"], "model": {"arch": teacher_arch}, "epochs": 1}}
        path = tmp / "teacher.toml"
        path.write_text(tomli_w.dumps(base))
        teacher = run(path, out=tmp / "runs", run_id="teacher", catalogue=catalogue).run_dir / "models" / "teacher.pt"
        rows = []
        for table in methods:
            base["stages"] = {"student": {"model": {"arch": student_arch}, "teachers": [str(teacher)], "taps": taps,
                                          "methods": table, "epochs": args.epochs}}
            path.write_text(tomli_w.dumps(base))
            EpochTimer.seconds = []
            run(path, out=tmp / "runs", catalogue=catalogue)
            label = " + ".join(m for m in table if m != "supervised") or "student alone"
            rows.append((label, statistics.median(EpochTimer.seconds)))
        alone = rows[0][1]
        print(f"{args.images} images, batch 64, {teacher_arch} -> {student_arch}, {args.device}; training seconds "
              f"per epoch, median of {args.epochs}")
        print("| method | s / epoch | vs student alone |\n|---|---|---|")
        for label, seconds in rows:
            print(f"| {label} | {seconds:.2f} | {seconds / alone:.2f} |")


if __name__ == "__main__":
    main()
