"""CIFAR-shaped training throughput (issue #15): a hand-written PyTorch loop, kdlab's student
alone, KD with the teacher running, and KD from the augmentation-aware teacher cache.

    python -m benchmarks.cifar_throughput --images 2048 --epochs 3                    # CPU subset
    python -m benchmarks.cifar_throughput --device cuda --images 50000 --epochs 4 --amp --channels-last
    python -m benchmarks.cifar_throughput --images 2048 --epochs 3 --torchdistill-python /tmp/tdenv/bin/python

Writes CIFAR-100 in the real file format (random images; only time is measured), trains the
teacher one epoch, then times training epochs (median over epochs 2..E: the first pays for
warm-up) for every row, all with the same data, batch, random crop + flip, SGD and settings:

* hand-written: the best plain-PyTorch loop we can write with the same tricks (uint8 data on the
  device, per-sample crop and flip by one gather, fused SGD, bf16 autocast and channels-last when
  asked), student alone;
* kdlab, student alone; kdlab KD (logit KD, T = 4) with the teacher running every step;
* kdlab KD from the teacher cache with ``views`` fixed augmented views per image (the labelling
  pass is a one-off, printed separately and amortised over the protocol's 240 epochs);
* with ``--torchdistill-python``: the same KD job (teacher running) in torchdistill 1.1.5, which
  needs torch >= 2.12 and so runs in an environment of its own (see BENCHMARKS.md), driven
  through its DistillationBox the way its example script does, with the usual torchvision
  pipeline (CIFAR100 data set, RandomCrop(32, 4) + flip + normalise in a DataLoader with
  ``--td-workers`` workers). It has no bf16 or channels-last switch here, so compare it on fp32
  runs.

Images per second and the ratios asked for by the issue are printed: kdlab / hand-written
(target >= 0.97) and cached KD / student alone (target <= 1.15).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import tomli_w
import torch
import torch.nn.functional as F

from benchmarks.cifar_methods import write_cifar100
from kdlab import hookimpl
from kdlab.data.vision import TorchvisionConfig, build_vision
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from kdlab.models.cifar import table_builder


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class EpochTimer:
    """Seconds of each training epoch, from its start to its last optimizer step (synchronised
    with the GPU there, and only there); also the teacher cache's labelling time."""

    default_enabled = True
    seconds: list[float] = []
    device = "cpu"

    @hookimpl
    def kdlab_epoch_start(self, stage, epoch):
        _sync(EpochTimer.device)
        self.steps, self.total, self.start = 0, len(stage.data.train), time.perf_counter()

    @hookimpl
    def kdlab_step_end(self, stage, loss, terms):
        self.steps += 1
        if self.steps == self.total:
            _sync(EpochTimer.device)
            EpochTimer.seconds.append(time.perf_counter() - self.start)


def hand_written(data_root: Path, args, arch: str) -> list[float]:
    """Student alone in plain PyTorch; seconds per epoch."""
    device = torch.device(args.device)
    data = build_vision("cifar100", TorchvisionConfig(root=str(data_root), verify=False, val_size=64), seed=0)
    x, y = data.train.x.to(device), data.train.y.to(device)
    mean = torch.tensor((0.5071, 0.4865, 0.4409), device=device).view(1, 3, 1, 1)
    std = torch.tensor((0.2673, 0.2564, 0.2762), device=device).view(1, 3, 1, 1)
    torch.manual_seed(0)
    model = table_builder(arch)(None, data).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4,
                          **({"fused": True} if device.type == "cuda" else {}))
    n, (h, w), pad = len(x), x.shape[2:], 4
    rows0, cols0 = torch.arange(h, device=device), torch.arange(w, device=device)
    seconds = []
    for epoch in range(args.epochs):
        _sync(args.device)
        start = time.perf_counter()
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(n, generator=g)
        for i in range(0, n, args.batch):
            idx = order[i : i + args.batch]
            b = len(idx)
            top, left = torch.randint(0, 2 * pad + 1, (2, b, 1), generator=g).to(device, non_blocking=True)
            flip = torch.randint(0, 2, (b, 1), generator=g).to(device, non_blocking=True).bool()
            idx = idx.to(device, non_blocking=True)
            cols = torch.where(flip, w - 1 - cols0, cols0) + left
            img = F.pad(x[idx], (pad,) * 4)[torch.arange(b, device=device)[:, None, None, None],
                                            torch.arange(3, device=device)[None, :, None, None],
                                            (top + rows0)[:, None, :, None], cols[:, None, None, :]]
            inputs = (img.float() / 255 - mean) / std
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = F.cross_entropy(model(inputs), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(args.device)
        seconds.append(time.perf_counter() - start)
    return seconds


def torchdistill_side(args) -> None:
    """Runs in the torchdistill environment: seconds of each KD training epoch."""
    from types import SimpleNamespace

    import torchvision
    import torchdistill.core.interfaces.forward_proc  # noqa: F401 - registers the forward functions
    from torch.utils.data import RandomSampler, SequentialSampler, Subset
    from torchdistill.core.distillation import get_distillation_box
    from torchvision import transforms as T

    class Cifar100(torchvision.datasets.CIFAR100):
        # no checksums: these are the files this benchmark just wrote in its own temporary folder
        # (random images), not the published ones; never do this for files from elsewhere
        train_list, test_list = [["train", None]], [["test", None]]
        meta = {**torchvision.datasets.CIFAR100.meta, "md5": None}

    device = torch.device(args.device)
    norm = T.Normalize((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    train = Cifar100(args.data, train=True, transform=T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm]))
    train = Subset(train, range(len(train) - 64))  # as many images as kdlab trains on (64 held out)
    val = Cifar100(args.data, train=False, transform=T.Compose([T.ToTensor(), norm]))
    teacher_arch, student_arch = args.pair.split(",")
    shape = SimpleNamespace(input_shape=(3, 32, 32), num_classes=100)
    teacher = table_builder(teacher_arch)(None, shape)
    teacher.load_state_dict(torch.load(args.teacher, weights_only=True)["state_dict"])
    torch.manual_seed(0)
    student = table_builder(student_arch)(None, shape)
    # torchdistill's alpha weights the hard-label term: 0.1 CE + 0.9 T^2 KL, kdlab's logit_kd at alpha 0.9
    kd = {"key": "KDLoss", "kwargs": {"student_module_path": ".", "student_module_io": "output",
                                      "teacher_module_path": ".", "teacher_module_io": "output",
                                      "temperature": 4.0, "alpha": 0.1, "reduction": "batchmean"}}
    loader = {"num_workers": args.td_workers, "pin_memory": device.type == "cuda"}
    config = {
        "num_epochs": args.epochs,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": args.batch, **loader}},
        "val_data_loader": {"dataset_id": "val", "sampler": {"class_or_func": SequentialSampler, "kwargs": {}},
                            "kwargs": {"batch_size": 1024, **loader}},
        "teacher": {"sequential": [], "requires_grad": False, "frozen_modules": [], "forward_proc": "forward_batch_only"},
        "student": {"sequential": [], "requires_grad": True, "frozen_modules": [], "forward_proc": "forward_batch_only"},
        "optimizer": {"key": "SGD", "kwargs": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"criterion": kd, "weight": 1.0}}}},
    }
    box = get_distillation_box(teacher.to(device), student.to(device), {"train": train, "val": val}, config,
                               device, None, False, 1)
    seconds = []
    for epoch in range(args.epochs):
        _sync(args.device)
        start = time.perf_counter()
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
        _sync(args.device)
        seconds.append(time.perf_counter() - start)
        box.post_epoch_process()
    print(json.dumps({"seconds": seconds, "torch": torch.__version__}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pair", default="resnet32x4,resnet8x4", help="teacher,student")
    parser.add_argument("--views", type=int, default=8, help="augmented views per image in the cache")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--torchdistill-python", help="python of an environment with torchdistill 1.1.5")
    parser.add_argument("--td-workers", type=int, default=0, help="DataLoader workers on the torchdistill side")
    parser.add_argument("--side", choices=["torchdistill"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "torchdistill":
        torchdistill_side(args)
        return
    logging.basicConfig(level=logging.WARNING)
    teacher_arch, student_arch = args.pair.split(",")
    EpochTimer.device = args.device
    catalogue = discover(extra={"epoch_timer": EpochTimer})
    speed = {**({"amp": {"dtype": "bf16"}} if args.amp else {}), **({"channels_last": {}} if args.channels_last else {})}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cifar100(tmp / "data" / "cifar-100-python", args.images)
        base = {"name": "throughput", "seed": 0, "device": args.device,
                "data": {"dataset": "cifar100", "root": str(tmp / "data"), "verify": False, "val_size": 64,
                         "batch_size": args.batch, "eval_batch_size": 1024},
                "defaults": {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}}}
        path = tmp / "recipe.toml"

        def kdlab(stage: dict) -> list[float]:
            path.write_text(tomli_w.dumps({**base, "stages": {"s": stage}}))
            EpochTimer.seconds = []
            start = time.perf_counter()
            run(path, out=tmp / "runs", catalogue=catalogue)
            kdlab.wall = time.perf_counter() - start
            return EpochTimer.seconds

        kdlab({"model": {"arch": teacher_arch}, "epochs": 1, "methods": {"supervised": {}, **speed}})
        teacher = str(next((tmp / "runs" / "throughput").iterdir()) / "models" / "s.pt")
        student = {"model": {"arch": student_arch}, "epochs": args.epochs, "eval_every": args.epochs}
        kd = {"logit_kd": {"temperature": 4.0, "alpha": 0.9}, **speed}  # logit_kd includes the CE term
        rows = {"hand-written loop, student alone": hand_written(tmp / "data", args, student_arch)}
        rows["kdlab, student alone"] = kdlab({**student, "methods": {"supervised": {}, **speed}})
        # setup, the first epoch, evaluation, export (the cache labels its views in the first epoch)
        alone_rest = kdlab.wall - sum(rows["kdlab, student alone"][1:])
        rows["kdlab, KD, teacher running"] = kdlab({**student, "teachers": [teacher], "methods": kd})
        cached = kdlab({**student, "teachers": [teacher],
                        "methods": {**kd, "teacher_cache": {"views": args.views, "dtype": "float16"}}})
        # the labelling pass: what the cached run spends outside its epochs beyond the student alone
        labelling = kdlab.wall - sum(cached[1:]) - alone_rest
        rows[f"kdlab, KD, cache of {args.views} views"] = cached
        if args.torchdistill_python:
            root = Path(__file__).resolve().parents[1]
            out = subprocess.run(
                [args.torchdistill_python, "-m", "benchmarks.cifar_throughput", "--side", "torchdistill",
                 "--data", str(tmp / "data"), "--teacher", teacher, "--epochs", str(args.epochs),
                 "--batch", str(args.batch), "--pair", args.pair, "--device", args.device,
                 "--td-workers", str(args.td_workers)],
                capture_output=True, text=True, cwd=root, env={"PYTHONPATH": str(root), "PATH": ""})
            if out.returncode != 0:
                raise SystemExit(f"the torchdistill side failed:\n{out.stderr[-3000:]}")
            td = json.loads(out.stdout.strip().splitlines()[-1])
            rows[f"torchdistill 1.1.5 (torch {td['torch']}), KD, teacher running"] = td["seconds"]

    med = {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in rows.items()}
    n = args.images - 64
    print(f"{args.device}, {n} training images, batch {args.batch}, {teacher_arch} -> {student_arch}, "
          f"amp={args.amp}, channels_last={args.channels_last}; median seconds per epoch over epochs 2..{args.epochs}")
    print("| loop | s / epoch | images / s |\n|---|---|---|")
    for k, s in med.items():
        print(f"| {k} | {s:.3f} | {n / s:,.0f} |")
    hand, alone = med["hand-written loop, student alone"], med["kdlab, student alone"]
    print(f"kdlab / hand-written throughput: {hand / alone:.3f} (target >= 0.97)")
    live = med["kdlab, KD, teacher running"]
    print(f"KD with the teacher running / student alone: {live / alone:.2f}")
    for k, s in med.items():
        if k.startswith("torchdistill"):
            print(f"torchdistill / kdlab, KD with the teacher running, time per epoch: {s / live:.2f}")
    cache = med[f"kdlab, KD, cache of {args.views} views"]
    print(f"KD from the cache / student alone: {cache / alone:.2f} (target <= 1.15); labelling pass "
          f"{labelling:.1f} s once = {labelling / 240 / alone:.3f} epochs "
          "amortised over 240 epochs")


if __name__ == "__main__":
    main()
