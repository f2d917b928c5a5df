"""Streaming keyword detection on one CPU core: real-time factor and per-chunk latency of the
streaming CRNN (both modes), against the naive way to stream (the offline model on the last
second of audio at every chunk), measured in the same run.

    python -m benchmarks.kws_stream --model runs/kws_compress/full/models/tiny_small_attention.pt --seconds 60

RTF = processing time / audio duration (below 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdlab.data.features import LogMel
from kdlab.speech.streaming import StreamingKWS, load_crnn, window_steps


def _time(step, pieces) -> list[float]:
    lat = []
    for piece in pieces:
        t0 = time.perf_counter()
        step(piece)
        lat.append(time.perf_counter() - t0)
    return lat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="an exported crnn (models/<stage>.pt)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--script", action="store_true", help="time the TorchScript exports")
    args = parser.parse_args()
    torch.set_num_threads(1)
    crnn = load_crnn(args.model)
    features = LogMel(16000, crnn.n_mels)
    audio = torch.randn(int(args.seconds * 16000)) * 0.1
    chunk = 16000 * args.chunk_ms // 1000
    chunks = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
    results = {}
    with torch.inference_mode():
        for mode in ("window", "carry"):
            det = StreamingKWS(crnn, features, window_steps(crnn, features, 1.0), mode=mode).train(False)
            if args.script:
                det = torch.jit.script(det)
            box = [det.initial_state()]

            def step(piece, det=det, box=box):
                _, box[0] = det(piece, box[0])

            results[f"streaming, {mode} mode"] = _time(step, chunks)
        windows = [audio[end - 16000 : end] for end in range(16000, len(audio) + 1, chunk)]
        naive = _time(lambda w: crnn(features(w).unsqueeze(0)), windows)
        results["naive: offline model on the last 1 s"] = naive * (len(chunks) // len(naive)) + naive[: len(chunks) % len(naive)]
    base = sum(results["naive: offline model on the last 1 s"])
    print(f"{args.model}: {sum(p.numel() for p in crnn.parameters())} parameters, {args.seconds:.0f} s of audio in "
          f"{args.chunk_ms} ms chunks, 1 thread, torch {torch.__version__}{' (TorchScript)' if args.script else ''}")
    print("| | real-time factor | median chunk ms | p95 chunk ms | time / naive |")
    print("|---|---|---|---|---|")
    for key, lat in results.items():
        ms = sorted(x * 1e3 for x in lat)
        print(f"| {key} | {sum(lat) / args.seconds:.4f} | {statistics.median(ms):.3f} | {ms[int(0.95 * len(ms))]:.3f} | "
              f"{sum(lat) / base:.3f} |")


if __name__ == "__main__":
    main()
