"""Speech loaders on worker processes: seconds per training epoch of a keyword-spotting student
with its augmented features (volume, background noise, log-mel, SpecAugment) computed in the
main process (``num_workers = 0``) or in N DataLoader worker processes while the main process
trains. The batches are the same either way (tests/data/test_speech_commands.py).

    python -m benchmarks.speech_loaders --root data/kws --epochs 1 3 --workers 0 2 --repeats 3

``--root``: a Speech Commands folder (``kdlab data kws --out data/kws`` writes a synthetic one).
Each setting runs for two epoch counts; the difference gives the seconds per epoch once running
(worker start-up and the evaluation features are the fixed part). 1 torch thread in the main
process; workers use one each (DataLoader's default).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import QUIET
from kdlab.engine.runner import run

RECIPE = """
name = "kws_loader_bench"
device = "cpu"
[data]
dataset = "speech_commands"
root = "{root}"
batch_size = 128
num_workers = {workers}
{quiet}[stages.student]
epochs = {epochs}
eval_every = {epochs}
model = {{ arch = "crnn", conv_channels = 4 }}
optimizer = {{ name = "adam", lr = 0.003 }}
methods.supervised = {{}}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--epochs", type=int, nargs=2, default=[1, 3], metavar=("SHORT", "LONG"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    short, long = args.epochs
    times: dict[tuple[int, int], list[float]] = {(w, e): [] for w in args.workers for e in (short, long)}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for w, e in times:
            paths[w, e] = Path(tmp) / f"{w}_{e}.toml"
            paths[w, e].write_text(RECIPE.format(root=Path(args.root).resolve(), workers=w, epochs=e, quiet=QUIET))
        run(paths[args.workers[0], short], out=tmp)  # warm-up: imports, page cache
        for _ in range(args.repeats):
            for key, path in paths.items():
                start = time.perf_counter()
                run(path, out=tmp)
                times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    epoch = {w: (med[w, long] - med[w, short]) / (long - short) for w in args.workers}
    base = epoch[args.workers[0]]
    print(f"keyword spotting, CRNN (conv 4), batch 128, {short} and {long} epochs, median of {args.repeats}, "
          f"torch {torch.__version__}")
    print(f"| num_workers | s ({short} ep) | s ({long} ep) | s per epoch | epoch time / num_workers = {args.workers[0]} |")
    print("|---|---|---|---|---|")
    for w in args.workers:
        print(f"| {w} | {med[w, short]:.2f} | {med[w, long]:.2f} | {epoch[w]:.2f} | {epoch[w] / base:.3f} |")


if __name__ == "__main__":
    main()
