"""Teacher-output cache: run the teachers once over each split, then answer
``kdlab_teacher_outputs`` from the stored outputs (logits and tapped features) by sample index.

Valid only when a sample's teacher input is the same every epoch: a data set with random
training augmentation (``data.augment = true`` on CIFAR) is refused with an error. The usual way
around — the teacher sees the clean image, the student the augmented one — needs a loader that
returns both views; until then, turn augmentation off for cached stages.

The cache key covers the data (data-set settings and split sizes), the split, the teachers'
weights (a SHA-256 of their exported files), the tapped modules, and the autocast settings, so a
stale cache is never used. Outputs live in memory; with ``dir`` set they are also written there
as .npy files (read back memory-mapped by later runs with the same key) under a directory named
by the key, written to a temporary name and renamed when complete. ``dtype = "float16"`` halves
the size. The size is estimated, logged, and checked against ``max_gb`` before anything is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import torch
from attrs import field
from attrs import validators as v

from kdlab import KdlabError, ModelOutput, hookimpl

log = logging.getLogger("kdlab")
NAME = "teacher_cache"
SIZE_KEYS = ("batch_size", "eval_batch_size", "num_workers")  # do not change per-sample outputs


@attrs.frozen(kw_only=True)
class TeacherCacheConfig:
    dir: str | None = None  # on-disk cache directory; None keeps the outputs in memory only
    dtype: Literal["float32", "float16"] = "float32"
    max_gb: float = field(default=4.0, validator=v.gt(0))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(stage, split: str, teacher_hashes: list[str]) -> str:
    """A hash of everything the cached outputs depend on."""
    cfg = stage.config
    data_key = {k: val for k, val in stage.data.key.items() if k not in SIZE_KEYS}
    parts = {
        "data": data_key,
        "split": split,
        "teachers": teacher_hashes,
        "taps": [cfg.taps.for_teacher(ref) for ref in cfg.teachers],
        "amp": repr(cfg.methods.get("amp")),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


class Store:
    """Per-split arrays indexed by sample position: ``logits[t]`` and ``features[t][alias]``."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors  # "t{k}/logits", "t{k}/<alias>"

    def lookup(self, index: torch.Tensor, n_teachers: int, aliases: list[list[str]], device) -> list[ModelOutput]:
        idx = index.cpu()
        out = []
        for k in range(n_teachers):
            logits = self.tensors[f"t{k}/logits"][idx].to(device, torch.float32, non_blocking=True)
            feats = {a: self.tensors[f"t{k}/{a}"][idx].to(device, torch.float32, non_blocking=True) for a in aliases[k]}
            out.append(ModelOutput(logits, feats))
        return out


class TeacherCache:
    def __init__(self):
        self.stores: dict[str, Store] = {}
        self.building = False
        self.teacher_hashes: list[str] | None = None  # hashed once per stage, not once per split

    @hookimpl
    def kdlab_config_class(self):
        return TeacherCacheConfig

    @hookimpl
    def kdlab_stage_start(self, stage):
        if not stage.teachers:
            raise KdlabError(f"stages.{stage.name}.methods.{NAME}: the stage has no teachers to cache")
        if stage.data.augmented:
            raise KdlabError(
                f"stages.{stage.name}.methods.{NAME}: the training inputs are randomly augmented, so the "
                "teacher's outputs change every epoch and cannot be cached; set data.augment = false for "
                f"this run or remove {NAME}")

    @hookimpl
    def kdlab_teacher_outputs(self, stage, batch):
        if self.building or stage.phase not in ("train", "val", "test"):
            return None  # let the teachers run (while building, or for the probe batch)
        split = stage.phase
        if split not in self.stores:
            self.stores[split] = self._load_or_build(stage, split)
        aliases = [list(stage.config.taps.for_teacher(ref)) for ref in stage.config.teachers]
        return self.stores[split].lookup(batch.index, len(stage.teachers), aliases, stage.device)

    def _load_or_build(self, stage, split: str) -> Store:
        cfg = stage.config_for(self)
        if self.teacher_hashes is None:
            self.teacher_hashes = [file_sha256(stage.resolve_model_ref(ref)) for ref in stage.config.teachers]
        key = cache_key(stage, split, self.teacher_hashes)
        target = Path(cfg.dir) / key if cfg.dir else None
        if target is not None and (target / "done").is_file():
            log.info("%s: reading %s outputs from %s", NAME, split, target)
            return Store({_decode(p.stem): torch.from_numpy(np.load(p, mmap_mode="c"))
                          for p in sorted(target.glob("*.npy"))})
        return self._build(stage, split, cfg, target)

    def _build(self, stage, split: str, cfg: TeacherCacheConfig, target: Path | None) -> Store:
        loader = getattr(stage.data, split)
        loader.set_epoch(0)
        dtype = torch.float16 if cfg.dtype == "float16" else torch.float32
        tensors: dict[str, torch.Tensor] = {}
        self.building = True
        try:
            with torch.no_grad():
                for batch in loader:
                    outs = stage.hook.kdlab_teacher_outputs(stage=stage, batch=batch.to(stage.device))
                    items = {f"t{k}/logits": o.logits for k, o in enumerate(outs)}
                    items.update({f"t{k}/{a}": f for k, o in enumerate(outs) for a, f in o.features.items()})
                    if not tensors:
                        n = getattr(loader, "num_samples", None) or _split_size(loader)
                        gb = sum(math.prod(t.shape[1:]) for t in items.values()) * n * dtype.itemsize / 2**30
                        log.info("%s: %s split, %d samples, %.3f GB of teacher outputs", NAME, split, n, gb)
                        if gb > cfg.max_gb:
                            raise KdlabError(f"stages.{stage.name}.methods.{NAME}: the {split} cache would take "
                                             f"{gb:.2f} GB, over max_gb = {cfg.max_gb}")
                        tensors = {name: torch.zeros((n, *t.shape[1:]), dtype=dtype) for name, t in items.items()}
                    idx = batch.index.cpu()
                    for name, t in items.items():
                        tensors[name][idx] = t.detach().to("cpu", dtype)
        finally:
            self.building = False
        if target is not None and stage.rank == 0:
            _write(tensors, target)
        return Store(tensors)

    @hookimpl
    def kdlab_stage_end(self, stage):
        self.stores.clear()


def _split_size(loader) -> int:
    """Number of samples in a split: one more than the largest index the loader yields."""
    return 1 + max(int(b.index.max()) for b in loader)


def _encode(name: str) -> str:
    return name.replace("/", "__")


def _decode(stem: str) -> str:
    return stem.replace("__", "/")


def _write(tensors: dict[str, torch.Tensor], target: Path) -> None:
    """Write to a temporary directory and rename it: a half-written cache is never read."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, t in tensors.items():
        np.save(tmp / f"{_encode(name)}.npy", t.numpy())
    (tmp / "done").write_text("complete\n")
    try:
        tmp.rename(target)
    except OSError:  # another run finished the same cache first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
