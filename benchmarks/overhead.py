"""Engine overhead: `kdlab run` of one supervised stage vs a hand-written PyTorch loop doing the
same work (same data tensors, model, batch order, optimizer, epochs, final val/test evaluation).

    python -m benchmarks.overhead --epochs 20 --repeats 9

Both sides start from loaded digits tensors' construction and end after the test evaluation; the
kdlab side also computes model statistics and writes the run directory (metrics, export). Prints
the median wall time of each and their ratio, with kdlab's default logging off and on
(``--logging-parts``: also with each logging plugin alone).

    python -m benchmarks.overhead --breakdown --epochs 20 --repeats 9

times the training epochs alone (no start-up, evaluation or export), logging off: the
hand-written loop's; kdlab's training loop (``kdlab.engine.loop._train``); and, as a control, a
plain loop over the model, optimizer and loader objects that kdlab built for the stage, in place
of kdlab's loop. The control separates what the loop's code costs per step (hook dispatch and
bookkeeping) from what differs in the objects it drives.
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

import kdlab.engine.loop
from kdlab.engine.runner import run
from kdlab.data.loader import TensorLoader
from kdlab.data.vision import DigitsConfig, load_digits_tensors
from kdlab.models.cnn import CompactCNN, CompactCNNConfig

RECIPE = """
name = "overhead"
device = "cpu"
[data]
dataset = "digits"
batch_size = {batch}
[plugins.progress]
enabled = {progress}
[plugins.tensorboard]
enabled = {tensorboard}
[plugins.checkpoint]
enabled = {checkpoint}
[stages.student]
epochs = {epochs}
eval_every = {epochs}
model = {{ arch = "cnn", channels = [{channels}] }}
optimizer = {{ name = "adam", lr = 0.01 }}
methods.supervised = {{}}
"""


def plain_epochs(model: torch.nn.Module, opt: torch.optim.Optimizer, train, first: int, epochs: int) -> None:
    """The hand-written training epochs."""
    for epoch in range(first, epochs):
        train.set_epoch(epoch)
        model.train()
        for b in train:
            loss = F.cross_entropy(model(b.inputs), b.targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def hand_written(epochs: int, batch: int, channels: tuple[int, ...], timings: dict | None = None) -> float:
    torch.manual_seed(0)
    (xtr, ytr), (xva, yva), (xte, yte) = load_digits_tensors(DigitsConfig())
    model = CompactCNN(CompactCNNConfig(channels=channels), 1, 8, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train = TensorLoader(xtr, ytr, batch, shuffle=True, seed=0)
    start = time.perf_counter()
    plain_epochs(model, opt, train, 0, epochs)
    if timings is not None:
        timings["train"] = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        accs = [(model(x).argmax(1) == y).float().mean().item() for x, y in ((xva, yva), (xte, yte))]
    return accs[1]


def kdlab_run(recipe: Path, out: str) -> float:
    return run(recipe, out=out).metrics["student"]["test/accuracy"]


LOGGING = ("progress", "tensorboard", "checkpoint")  # the default logging plugins


def write_recipe(path: Path, args, logging_on: tuple[str, ...]) -> Path:
    """The benchmark's recipe with only the logging plugins named in ``logging_on`` enabled."""
    flags = {name: str(name in logging_on).lower() for name in LOGGING}
    path.write_text(textwrap.dedent(RECIPE.format(batch=args.batch, epochs=args.epochs, channels=args.channels, **flags)))
    return path


def breakdown(args, channels: tuple[int, ...], tmp: str) -> None:
    """Training epochs only, logging off: hand-written, kdlab's loop, and the plain loop over
    kdlab's objects (see the module docstring)."""
    recipe = write_recipe(Path(tmp) / "breakdown.toml", args, ())
    kdlab_loop = kdlab.engine.loop._train
    timings: dict[str, float] = {}

    def timed_kdlab(stage, train_teachers):
        start = time.perf_counter()
        kdlab_loop(stage, train_teachers)
        timings["train"] = time.perf_counter() - start

    def timed_plain(stage, train_teachers):
        start = time.perf_counter()
        plain_epochs(stage.student, stage.optimizer, stage.data.train, stage.epoch, stage.config.epochs)
        stage.epoch = stage.config.epochs
        timings["train"] = time.perf_counter() - start

    sides = {"hand-written loop": None, "kdlab's loop": timed_kdlab, "plain loop over kdlab's objects": timed_plain}
    times: dict[str, list[float]] = {key: [] for key in sides}
    hand_written(1, args.batch, channels)
    try:
        for _ in range(args.repeats + 1):  # the first round warms up and is not counted
            for key, loop in sides.items():
                if loop is None:
                    hand_written(args.epochs, args.batch, channels, timings)
                else:
                    kdlab.engine.loop._train = loop
                    kdlab_run(recipe, tmp)
                times[key].append(timings["train"])
    finally:
        kdlab.engine.loop._train = kdlab_loop
    steps = args.epochs * -(-len(load_digits_tensors(DigitsConfig())[0][0]) // args.batch)
    base = statistics.median(times["hand-written loop"][1:])
    print(f"training epochs only, logging off: digits, cnn [{args.channels}], batch {args.batch}, {args.epochs} "
          f"epochs ({steps} steps), median of {args.repeats}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| loop | median ms | ratio to hand-written | extra us per step |")
    print("|---|---|---|---|")
    for key, values in times.items():
        med = statistics.median(values[1:])
        print(f"| {key} | {med * 1e3:.1f} | {med / base:.3f} | {(med - base) / steps * 1e6:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", default="8, 16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings steadier)")
    parser.add_argument("--breakdown", action="store_true",
                        help="time the training epochs alone: hand-written, kdlab's loop, a plain loop over kdlab's objects")
    parser.add_argument("--logging-parts", action="store_true",
                        help="also time kdlab with each default logging plugin enabled alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    channels = tuple(int(c) for c in args.channels.split(","))
    if args.breakdown:
        with tempfile.TemporaryDirectory() as tmp:
            breakdown(args, channels, tmp)
        return
    variants = {"kdlab, logging off": (), "kdlab, default logging": LOGGING}
    if args.logging_parts:
        variants = {"kdlab, logging off": (), **{f"kdlab, {name} only": (name,) for name in LOGGING},
                    "kdlab, default logging": LOGGING}
    times: dict[str, list[float]] = {"hand-written loop": [], **{key: [] for key in variants}}
    accuracy = {}
    with tempfile.TemporaryDirectory() as tmp:
        recipes = {key: write_recipe(Path(tmp) / f"{i}.toml", args, on) for i, (key, on) in enumerate(variants.items())}
        hand_written(1, args.batch, channels)  # warm-up: imports, allocator, thread pool
        for _ in range(args.repeats):  # interleaved, so that drifts in machine load hit all sides alike
            for key in times:
                start = time.perf_counter()
                if key == "hand-written loop":
                    accuracy[key] = hand_written(args.epochs, args.batch, channels)
                else:
                    accuracy[key] = kdlab_run(recipes[key], tmp)
                times[key].append(time.perf_counter() - start)
    base = statistics.median(times["hand-written loop"])
    off = statistics.median(times["kdlab, logging off"])
    print(f"digits, cnn [{args.channels}], batch {args.batch}, {args.epochs} epochs, median of {args.repeats}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| loop | median s | ratio to hand-written | logging's cost, % of hand-written | test accuracy |")
    print("|---|---|---|---|---|")
    for key, values in times.items():
        med = statistics.median(values)
        cost = f"{(med - off) / base * 100:.1f}" if key != "hand-written loop" else ""
        print(f"| {key} | {med:.3f} | {med / base:.3f} | {cost} | {accuracy[key]:.4f} |")


if __name__ == "__main__":
    main()
