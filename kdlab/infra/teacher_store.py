"""A compact, sharded store of a language-model teacher's sparse targets (``teacher_cache = {
topk = k, dir = ..., compact = true }``): per token the k largest log-probabilities, their
token indices and the mass they leave out, streamed to memory-mapped shard files while the
teacher runs, read back row by row while a student trains.

Per token, ``row_bytes(k, vocab)`` bytes:

* the step ``s`` of the quantised log-probabilities (float32) and the largest one ``v_0``
  (float16); each of the k log-probabilities as one byte ``q = round((v_0 - v) / s)`` (the k
  span 255 steps: a per-token scale);
* the log of the tail mass (float16);
* the k indices bit-packed at ``ceil(log2 vocab)`` bits each.

At k = 64: 200 bytes for GPT-2's 50,257 tokens, 216 for vocabularies up to 262,144 (the
float32 top-k and int32 indices of the in-memory cache: 512). Decoding renormalises the k to the
stored kept mass, so the stored largest value's rounding cancels; the decoded top-k + tail is
within about 1e-4 nats (KL) of the exact one (tests/infra/test_teacher_store.py measures it).

Layout of a store directory: ``shard-00000.bin`` ... (``rows_per_shard`` sequences each, the last
shorter, raw bytes (rows, seq_len, row_bytes)), each with ``shard-00000.sha256``, and
``meta.json`` written last (the store is complete when it exists). A shard is written to a
temporary name and renamed once whole, so labelling that is killed resumes at the first missing
shard; a shard whose bytes do not match its checksum (checked the first time it is read) is an
error that names it. Hand-written: no library packs top-k distributions this way (numpy's
packbits does the bit-packing).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from kdlab.engine.errors import KdlabError, writing

FORMAT = 1
SHARD_BYTES = 64 << 20  # about this much per shard file


def index_bits(vocab: int) -> int:
    return max(1, math.ceil(math.log2(vocab)))


def row_bytes(k: int, vocab: int) -> int:
    """Bytes per token: 4 (step) + 2 (largest) + 2 (log tail) + k + the packed indices."""
    return 8 + k + math.ceil(k * index_bits(vocab) / 8)


def encode(values: torch.Tensor, index: torch.Tensor, vocab: int) -> np.ndarray:
    """(n, k) log-probabilities sorted largest first and their indices -> (n, row_bytes) uint8."""
    v = values.detach().float().cpu().numpy()
    n, k = v.shape
    top, low = v[:, 0], v[:, -1]
    step = np.maximum((top - low) / 255.0, 1e-12).astype(np.float32)
    q = np.clip(np.rint((top[:, None] - v) / step[:, None]), 0, 255).astype(np.uint8)
    kept = np.logaddexp.reduce(v.astype(np.float64), axis=1)
    log_tail = np.log(np.clip(-np.expm1(np.minimum(kept, 0.0)), 1e-30, None)).astype(np.float16)
    bits = index_bits(vocab)
    idx = index.detach().cpu().numpy().astype(np.uint32)
    packed = np.packbits(((idx[:, :, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8).reshape(n, -1),
                         axis=1, bitorder="little")
    head = np.concatenate([step.view(np.uint8).reshape(n, 4), top.astype(np.float16).view(np.uint8).reshape(n, 2),
                           log_tail.view(np.uint8).reshape(n, 2)], axis=1)
    return np.concatenate([head, q, packed], axis=1)


def decode(rows: np.ndarray, k: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, row_bytes) uint8 -> (values (n, k) float32, index (n, k) int64), the values
    renormalised so that the k hold the stored kept mass."""
    rows = np.ascontiguousarray(rows)
    n = rows.shape[0]
    step = rows[:, 0:4].copy().view(np.float32).reshape(n)
    top = rows[:, 4:6].copy().view(np.float16).reshape(n).astype(np.float32)
    log_tail = rows[:, 6:8].copy().view(np.float16).reshape(n).astype(np.float64)
    q = rows[:, 8: 8 + k].astype(np.float32)
    bits = index_bits(vocab)
    flat = np.unpackbits(rows[:, 8 + k:], axis=1, count=k * bits, bitorder="little").reshape(n, k, bits)
    index = (flat.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(-1)
    values = top[:, None] - q * step[:, None]
    kept = np.log(np.clip(-np.expm1(log_tail), 1e-30, None))  # log(1 - tail)
    values = values + (kept - np.logaddexp.reduce(values.astype(np.float64), axis=1))[:, None]
    return torch.from_numpy(values.astype(np.float32)), torch.from_numpy(index)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read every time (kdlab.data.fingerprint's memoised one trusts
    an unchanged stat, which a checksum against damage must not)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rows_per_shard(seq_len: int, k: int, vocab: int) -> int:
    return max(1, SHARD_BYTES // (seq_len * row_bytes(k, vocab)))


def label(target: Path, sequences: int, seq_len: int, k: int, vocab: int,
          topk_of: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], batch_size: int,
          shards: Iterator[int] | None = None, log: Callable[[str], None] = lambda _: None) -> None:
    """Write the store for ``sequences`` rows: ``topk_of(rows)`` gives the (rows, seq_len, k)
    log-probabilities and indices of the row indices ``rows`` (a 1-D tensor). Shards already
    written (with their checksums) are kept: a killed labelling resumes. ``shards``: which
    shards to write (the default all; processes of a distributed labelling take disjoint ones).
    Only one batch of encoded rows is held in memory at a time."""
    target.mkdir(parents=True, exist_ok=True)
    per, width = rows_per_shard(seq_len, k, vocab), row_bytes(k, vocab)
    count = math.ceil(sequences / per)
    for s in (range(count) if shards is None else shards):
        path = target / f"shard-{s:05d}.bin"
        if path.is_file() and (target / f"shard-{s:05d}.sha256").is_file():
            continue  # written whole before (a resumed labelling)
        first, last = s * per, min(sequences, (s + 1) * per)
        tmp = path.with_suffix(".bin.tmp")
        kept_sum, kept_min, started = 0.0, 1.0, time.perf_counter()
        with open(tmp, "wb") as f:
            for start in range(first, last, batch_size):
                rows = torch.arange(start, min(last, start + batch_size))
                values, index = topk_of(rows)
                kept = values.float().exp().sum(-1)
                kept_sum, kept_min = kept_sum + float(kept.sum()), min(kept_min, float(kept.min()))
                f.write(encode(values.reshape(-1, k), index.reshape(-1, k), vocab).tobytes())
            f.flush()
            os.fsync(f.fileno())
        (target / f"shard-{s:05d}.json").write_text(json.dumps({"kept_sum": kept_sum, "kept_min": kept_min,
                                                                 "seconds": time.perf_counter() - started}))
        if tmp.stat().st_size != (last - first) * seq_len * width:
            raise KdlabError(f"{tmp}: {tmp.stat().st_size} bytes written, expected {(last - first) * seq_len * width}")
        (target / f"shard-{s:05d}.sha256").write_text(file_sha256(tmp) + "\n")
        os.replace(tmp, path)
        log(f"shard {s + 1}/{count} ({last - first} sequences)")


def finish(target: Path, sequences: int, seq_len: int, k: int, vocab: int, extra: dict) -> None:
    """Write meta.json once every shard is there (the store is complete from then on)."""
    per = rows_per_shard(seq_len, k, vocab)
    count = math.ceil(sequences / per)
    missing = [s for s in range(count) if not (target / f"shard-{s:05d}.bin").is_file()]
    if missing:
        raise KdlabError(f"{target}: shards {missing[:5]} of {count} are missing; label again to complete the store")
    stats = [json.loads((target / f"shard-{s:05d}.json").read_text()) for s in range(count)]
    meta = {"format": FORMAT, "sequences": sequences, "seq_len": seq_len, "k": k, "vocab": vocab,
            "rows_per_shard": per, "row_bytes": row_bytes(k, vocab),
            "kept_mean": sum(x["kept_sum"] for x in stats) / max(1, sequences * seq_len),
            "kept_min": min(x["kept_min"] for x in stats),
            # the teacher's forward, top-k and encoding of every token, over the shards' wall time
            "label_tokens_per_s": sequences * seq_len / max(1e-9, sum(x["seconds"] for x in stats)), **extra}
    with writing(target / "meta.json"):
        (target / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


class CompactStore:
    """A complete store, read row by row through memory maps (nothing of it loaded whole)."""

    def __init__(self, target: Path):
        self.target = target
        try:
            self.meta = json.loads((target / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KdlabError(f"{target}/meta.json: unreadable ({exc}); delete the store directory to label again") from exc
        m = self.meta
        if m.get("format") != FORMAT:
            raise KdlabError(f"{target}: store format {m.get('format')}, this kdlab reads {FORMAT}; delete it to label again")
        self.k, self.vocab, self.seq_len, self.per = m["k"], m["vocab"], m["seq_len"], m["rows_per_shard"]
        self.width = m["row_bytes"]
        self.maps: dict[int, np.memmap] = {}

    def _shard(self, s: int) -> np.memmap:
        if s not in self.maps:
            path = self.target / f"shard-{s:05d}.bin"
            want = (self.target / f"shard-{s:05d}.sha256").read_text().strip()
            if file_sha256(path) != want:  # once per shard per stage
                raise KdlabError(f"{path}: does not match its checksum; delete the store directory to label again")
            rows = min(self.per, self.meta["sequences"] - s * self.per)
            self.maps[s] = np.memmap(path, dtype=np.uint8, mode="r", shape=(rows, self.seq_len, self.width))
        return self.maps[s]

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, index) of the sequences ``index``: (len, seq_len, k) each."""
        ids = index.cpu().numpy()
        raw = np.stack([self._shard(int(i) // self.per)[int(i) % self.per] for i in ids])
        values, idx = decode(raw.reshape(-1, self.width), self.k, self.vocab)
        shape = (len(ids), self.seq_len, self.k)
        return values.reshape(shape), idx.reshape(shape)
