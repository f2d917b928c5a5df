"""The same KD job in kdlab and in torchdistill 1.1.5 (which needs torch >= 2.12, so it runs in an
environment of its own): wall time and test accuracy side by side.

    python3 -m venv /tmp/tdenv
    /tmp/tdenv/bin/pip install torch==2.14.1 torchvision==0.29.1 torchdistill==1.1.5 pluggy attrs cattrs scikit-learn tomli-w
    python -m benchmarks.torchdistill_digits --torchdistill-python /tmp/tdenv/bin/python --repeats 5

Job: digits (the kdlab split), a [32, 64] CNN teacher (trained once by kdlab, then loaded from
its exported file on both sides), the [4, 8] CNN student, batch 32,
Adam lr 0.01, 20 epochs, Hinton KD with T = 4 and equal weights on CE and KD (torchdistill's
KDLoss with alpha = 0.5 is the same loss), 1 torch thread, logging and checkpoints off on both
sides. Each side is timed inside its own process from building the data to the test accuracy;
the torchdistill side uses its DistillationBox with its own data loaders, hooks and loss modules,
driven by the epoch loop of its example script. The runs are interleaved; medians are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

EPOCHS, BATCH, LR, T, ALPHA = 20, 32, 0.01, 4.0, 0.5


def torchdistill_side(teacher_file: str, epochs: int) -> dict:
    """Runs in the torchdistill environment (torch >= 2.12)."""
    from torch.utils.data import RandomSampler, SequentialSampler, TensorDataset
    import torchdistill.core.interfaces.forward_proc  # noqa: F401 - registers the forward functions
    from torchdistill.core.distillation import get_distillation_box

    from kdlab.data.vision import DigitsConfig, load_digits_tensors
    from kdlab.models.cnn import CompactCNN, CompactCNNConfig

    torch.set_num_threads(1)
    start = time.perf_counter()
    (xtr, ytr), (xva, yva), (xte, yte) = load_digits_tensors(DigitsConfig())
    datasets = {"train": TensorDataset(xtr, ytr), "val": TensorDataset(xva, yva)}
    teacher = CompactCNN(CompactCNNConfig(channels=(32, 64)), 1, 8, 10)
    teacher.load_state_dict(torch.load(teacher_file, weights_only=True)["state_dict"])
    torch.manual_seed(0)
    student = CompactCNN(CompactCNNConfig(channels=(4, 8)), 1, 8, 10)
    kd = {"key": "KDLoss", "kwargs": {"student_module_path": ".", "student_module_io": "output",
                                      "teacher_module_path": ".", "teacher_module_io": "output",
                                      "temperature": T, "alpha": ALPHA, "reduction": "batchmean"}}
    config = {
        "num_epochs": epochs,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": BATCH, "num_workers": 0}},
        "val_data_loader": {"dataset_id": "val", "sampler": {"class_or_func": SequentialSampler, "kwargs": {}},
                            "kwargs": {"batch_size": 512, "num_workers": 0}},
        "teacher": {"sequential": [], "requires_grad": False, "frozen_modules": [], "forward_proc": "forward_batch_only"},
        "student": {"sequential": [], "requires_grad": True, "frozen_modules": [], "forward_proc": "forward_batch_only"},
        "optimizer": {"key": "Adam", "kwargs": {"lr": LR}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"criterion": kd, "weight": 1.0}}}},
    }
    box = get_distillation_box(teacher, student, datasets, config, torch.device("cpu"), None, False, 1)
    for epoch in range(epochs):
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
        box.post_epoch_process()
    box.student_model.train(False)
    with torch.no_grad():
        accuracy = (box.student_model(xte).argmax(1) == yte).float().mean().item()
    return {"seconds": time.perf_counter() - start, "accuracy": accuracy, "torch": torch.__version__}


TEACHER = """
name = "teacher"
device = "cpu"
[data]
dataset = "digits"
batch_size = 32
[stages.teacher]
epochs = 20
model = { arch = "cnn", channels = [32, 64] }
optimizer = { name = "adam", lr = 0.01 }
methods.supervised = {}
"""

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--torchdistill-python", help="python of the environment with torchdistill")
    parser.add_argument("--side", choices=["torchdistill"], help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.side == "torchdistill":
        print(json.dumps(torchdistill_side(args.teacher, args.epochs)))
        return

    from benchmarks.common import KD_RECIPE
    from kdlab.engine.runner import run

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        # a trained teacher, so that the students' accuracies mean something
        teacher_recipe = Path(tmp) / "teacher.toml"
        teacher_recipe.write_text(textwrap.dedent(TEACHER))
        teacher_file = run(teacher_recipe, out=tmp).run_dir / "models" / "teacher.pt"
        recipes = {}
        for key, cache in (("kdlab, no cache", ""), ("kdlab, teacher_cache", "methods.teacher_cache = {}")):
            recipes[key] = Path(tmp) / f"{len(recipes)}.toml"
            recipes[key].write_text(textwrap.dedent(KD_RECIPE.format(
                batch=BATCH, epochs=args.epochs, lr=LR, teacher=teacher_file, t=T, alpha=ALPHA, cache=cache)))

        def kdlab_side(path):
            start = time.perf_counter()
            acc = run(path, out=tmp).metrics["student"]["test/accuracy"]
            return {"seconds": time.perf_counter() - start, "accuracy": acc, "torch": torch.__version__}

        def td_side():
            out = subprocess.run([args.torchdistill_python, "-m", "benchmarks.torchdistill_digits", "--side",
                                  "torchdistill", "--teacher", str(teacher_file), "--epochs", str(args.epochs)],
                                 capture_output=True, text=True, cwd=root, env={"PYTHONPATH": str(root), "PATH": ""},
                                 check=True)
            return json.loads(out.stdout.strip().splitlines()[-1])

        variants = {"torchdistill 1.1.5": td_side, **{k: (lambda p=p: kdlab_side(p)) for k, p in recipes.items()}}
        results = {k: [] for k in variants}
        for _ in range(args.repeats):
            for key, fn in variants.items():
                results[key].append(fn())
    base = statistics.median(r["seconds"] for r in results["torchdistill 1.1.5"])
    print(f"digits KD, student cnn [4, 8], teacher cnn [32, 64], batch {BATCH}, {args.epochs} epochs, "
          f"median of {args.repeats}, 1 thread")
    print("| run | torch | median s | ratio to torchdistill | test accuracy (median) |")
    print("|---|---|---|---|---|")
    for key, rs in results.items():
        med = statistics.median(r["seconds"] for r in rs)
        acc = statistics.median(r["accuracy"] for r in rs)
        print(f"| {key} | {rs[0]['torch']} | {med:.3f} | {med / base:.3f} | {acc:.4f} |")


if __name__ == "__main__":
    sys.exit(main())
