"""Streaming keyword detection on one CPU core: real-time factor and per-chunk latency of the
streaming CRNN, against the naive way to stream (run the offline model on the last second of
audio at every chunk), measured in the same run.

    python -m benchmarks.kws_stream --model runs/kws_compress/full/models/tiny_fp16.pt --seconds 60

RTF = processing time / audio duration (below 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdlab.speech.features import LogMel
from kdlab.speech.streaming import StreamingKWS, load_crnn, window_steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="an exported crnn (models/<stage>.pt)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--script", action="store_true", help="time the TorchScript export instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    crnn = load_crnn(args.model)
    features = LogMel(16000, crnn.n_mels)
    detector = StreamingKWS(crnn, features, window_steps(crnn, features, 1.0)).train(False)
    if args.script:
        detector = torch.jit.script(detector)
    audio = torch.randn(int(args.seconds * 16000)) * 0.1
    chunk = 16000 * args.chunk_ms // 1000
    with torch.inference_mode():
        state = detector.initial_state()
        lat = []
        for start in range(0, len(audio), chunk):
            t0 = time.perf_counter()
            _, state = detector(audio[start : start + chunk], state)
            lat.append(time.perf_counter() - t0)
        naive = []
        for end in range(16000, len(audio) + 1, chunk):
            t0 = time.perf_counter()
            crnn(features(audio[end - 16000 : end]).unsqueeze(0))
            naive.append(time.perf_counter() - t0)
    total, total_naive = sum(lat), sum(naive) * len(lat) / len(naive)
    lat_ms = sorted(x * 1e3 for x in lat)
    print(f"{args.model}: {sum(p.numel() for p in crnn.parameters())} parameters, {args.seconds:.0f} s of audio in "
          f"{args.chunk_ms} ms chunks, 1 thread, torch {torch.__version__}{' (TorchScript)' if args.script else ''}")
    print("| | streaming | naive (offline model on the last 1 s, every chunk) |")
    print("|---|---|---|")
    print(f"| real-time factor | {total / args.seconds:.4f} | {total_naive / args.seconds:.4f} |")
    print(f"| median chunk latency, ms | {statistics.median(lat_ms):.3f} | {statistics.median(naive) * 1e3:.3f} |")
    print(f"| p95 chunk latency, ms | {lat_ms[int(0.95 * len(lat_ms))]:.3f} | |")
    print(f"streaming / naive time: {total / total_naive:.3f}")


if __name__ == "__main__":
    main()
