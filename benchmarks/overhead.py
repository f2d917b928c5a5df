"""Engine overhead: `kdlab run` of one supervised stage vs a hand-written PyTorch loop doing the
same work (same data tensors, model, batch order, optimizer, epochs, final val/test evaluation).

    python -m benchmarks.overhead --epochs 20 --repeats 9

Both sides start from loaded digits tensors' construction and end after the test evaluation; the
kdlab side also computes model statistics and writes the run directory (metrics, export). Prints
the median wall time of each and their ratio, with kdlab's default logging off and on.
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
enabled = {logging}
[plugins.tensorboard]
enabled = {logging}
[plugins.checkpoint]
enabled = {logging}
[stages.student]
epochs = {epochs}
eval_every = {epochs}
model = {{ arch = "cnn", channels = [{channels}] }}
optimizer = {{ name = "adam", lr = 0.01 }}
methods.supervised = {{}}
"""


def hand_written(epochs: int, batch: int, channels: tuple[int, ...]) -> float:
    torch.manual_seed(0)
    (xtr, ytr), (xva, yva), (xte, yte) = load_digits_tensors(DigitsConfig())
    model = CompactCNN(CompactCNNConfig(channels=channels), 1, 8, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train = TensorLoader(xtr, ytr, batch, shuffle=True, seed=0)
    for epoch in range(epochs):
        train.set_epoch(epoch)
        model.train()
        for b in train:
            loss = F.cross_entropy(model(b.inputs), b.targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accs = [(model(x).argmax(1) == y).float().mean().item() for x, y in ((xva, yva), (xte, yte))]
    return accs[1]


def kdlab_run(recipe: Path, out: str) -> float:
    return run(recipe, out=out).metrics["student"]["test/accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", default="8, 16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings steadier)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    channels = tuple(int(c) for c in args.channels.split(","))
    times: dict[str, list[float]] = {"hand-written loop": [], "kdlab, logging off": [], "kdlab, default logging": []}
    accuracy = {}
    with tempfile.TemporaryDirectory() as tmp:
        recipes = {}
        for key, flag in (("kdlab, logging off", "false"), ("kdlab, default logging", "true")):
            recipes[key] = Path(tmp) / f"{flag}.toml"
            recipes[key].write_text(textwrap.dedent(RECIPE.format(batch=args.batch, logging=flag, epochs=args.epochs,
                                                                   channels=args.channels)))
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
    print(f"digits, cnn [{args.channels}], batch {args.batch}, {args.epochs} epochs, median of {args.repeats}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| loop | median s | ratio to hand-written | test accuracy |")
    print("|---|---|---|---|")
    for key, values in times.items():
        med = statistics.median(values)
        print(f"| {key} | {med:.3f} | {med / base:.3f} | {accuracy[key]:.4f} |")


if __name__ == "__main__":
    main()
