"""Generation with and without the key-value cache (issue #30 item 4): kdlab's decoding loop
(kdlab/models/generation.py), which on-policy methods (``gkd``, ``seq_kd``) and the dialogue
metrics use.

    python -m benchmarks.generation_cache [--threads 1] [--repeats 3] [--new 96]

A Llama ``transformer_lm`` built from settings (4 layers, width 256: the size of the teacher of
benchmarks/trl_gkd.py; random weights, since speed does not depend on them), a 2,000-token
vocabulary, 16 right-padded prompts of 8 to 32 tokens, ``--new`` new tokens each (greedy; the end
token is never produced, so every row runs to the end). Both variants generate the same tokens
(checked here; tests/models/test_generation.py tests it). tokens/s: new tokens of all rows over
the wall time, interleaved ``--repeats`` times, median.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from kdlab.models import transformer_lm
from kdlab.models.generation import generate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    width = 32 + args.new
    model = transformer_lm.build(transformer_lm.TransformerLMConfig(layers=4, width=256, heads=4),
                                 SimpleNamespace(num_classes=2000, input_shape=(width,))).eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 2000, (args.batch, width), generator=g)
    lens = torch.randint(8, 33, (args.batch,), generator=g)
    times: dict[str, list[float]] = {"with cache": [], "without": []}
    outs = {}
    for _ in range(args.repeats):
        for name, cache in (("with cache", True), ("without", False)):
            start = time.perf_counter()
            outs[name] = generate(model, tokens, lens, max_new_tokens=args.new, end_id=-1, pad_id=0, use_cache=cache)
            times[name].append(time.perf_counter() - start)
    assert torch.equal(outs["with cache"], outs["without"]), "the cache changed the generated tokens"
    new = args.batch * args.new
    print(f"{args.batch} prompts of 8-32 tokens, {args.new} new tokens each, {args.threads} thread(s), "
          f"median of {args.repeats}; the same tokens with and without the cache")
    print("| decoding | new tokens/s | runs (s) | speed-up |")
    print("|---|---|---|---|")
    base = statistics.median(times["without"])
    for name in ("without", "with cache"):
        med = statistics.median(times[name])
        print(f"| {name} | {new / med:,.0f} | {' / '.join(f'{t:.2f}' for t in times[name])} | {base / med:.2f} |")


if __name__ == "__main__":
    main()
