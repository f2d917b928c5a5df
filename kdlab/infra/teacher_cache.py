"""Teacher-output cache: run the teachers once over each split, then answer
``kdlab_teacher_outputs`` from the stored outputs (logits and tapped features) by sample index.

With random training augmentation (``data.augment = true``) a sample's teacher input changes
every epoch, so a plain cache is refused. ``views = K`` makes it augmentation-aware, in the
spirit of FKD (Shen and Xing 2022) and ReLabel (Yun et al. 2021): K augmentation draws per
training sample are fixed once (a function of the recipe seed), the teachers label each of them
once, and every epoch shows each sample as one of its K views, picked at random, with the stored
outputs of exactly that view. The trade-off: the student sees K distinct views of a sample
instead of a fresh one every epoch (at CIFAR's pad-4 crop and flip there are 162). Only loaders
that can replay draws (``fix_views``: the in-memory image data sets) support it.

The cache key covers the data (data-set settings and split sizes), the split, the teachers'
weights (a SHA-256 of their exported files), the tapped modules, and the autocast settings, so a
stale cache is never used. Outputs live in memory; with ``dir`` set they are also written there
as .npy files (read back memory-mapped by later runs with the same key) under a directory named
by the key, written to a temporary name and renamed when complete. ``dtype = "float16"`` halves
the size. The size is estimated, logged, and checked against ``max_gb`` before anything is built.

Sequence teachers (CTC: per-frame outputs with lengths) are stored ragged: each utterance's valid
frames, concatenated, with offsets and lengths; lookups pad a batch back
together. ``topk = k`` stores only the k most probable classes per position (log-probabilities fp16,
indices int32): 6 bytes per kept class, 4V / 6k times smaller than float32 for V classes. A
lookup gives a :class:`kdlab.TopK` (the k values, their indices and the tail mass they leave
out), which the token methods compare as k tokens plus a tail bucket; a method that reads
``.logits`` gets it expanded, the tail spread evenly over the other classes (CTC: BENCHMARKS.md
measures the effect on PER). Built for the training split, the share of the teacher's mass the
top k keep is logged and is the stage metric ``teacher_cache/train_topk_mass`` (and ``_min``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import torch
from attrs import field
from attrs import validators as v

from kdlab import Batch, KdlabError, ModelOutput, Requirements, TopK, hookimpl
from kdlab.engine.errors import writing
from kdlab.engine.stage_store import code_digest
from kdlab.methods.amp import autocast_dtype
from kdlab.methods.vocab_chunks import topk_logprobs
from kdlab.infra import teacher_store
from kdlab.infra.teacher_store import file_sha256

log = logging.getLogger("kdlab")
NAME = "teacher_cache"
SIZE_KEYS = ("batch_size", "eval_batch_size", "num_workers")  # do not change per-sample outputs


@attrs.frozen(kw_only=True)
class TeacherCacheConfig:
    dir: str | None = None  # on-disk cache directory; None keeps the outputs in memory only
    dtype: Literal["float32", "float16"] = "float32"
    max_gb: float = field(default=4.0, validator=v.gt(0))
    topk: int | None = field(default=None, validator=v.optional(v.ge(1)))  # keep the k largest log-probabilities
    views: int | None = field(default=None, validator=v.optional(v.ge(1)))  # fixed augmented views per sample
    # a language model's top-k in the compact sharded store (kdlab.infra.teacher_store): needs
    # topk and dir; streamed to disk while the teacher runs, read row by row while training
    compact: bool = False


def cache_key(stage, split: str, teacher_hashes: list[str]) -> str:
    """A hash of everything the cached outputs depend on."""
    cfg = stage.config
    data_key = {k: val for k, val in stage.data.key.items() if k not in SIZE_KEYS}
    parts = {
        "format": 2,  # file names percent-encoded, int32 indices, manifest.json: a cache of the older layout is rebuilt
        "data": data_key,
        "split": split,
        "teachers": teacher_hashes,
        "taps": [cfg.taps.for_teacher(ref) for ref in cfg.teachers],
        # what the teachers actually ran in: the resolved autocast dtype, on which device type
        "amp": str(autocast_dtype(cfg.methods["amp"], stage.device)) if "amp" in cfg.methods else None,
        "device": stage.device.type,
        # the code that computes the outputs: the teachers' model classes and the data set's
        # loader (an edited model or loader under the same version makes a new cache)
        "code": code_digest([type(t) for t in stage.teachers] + _dataset_builder(stage)),
        "store": [getattr(cfg.methods.get(NAME), "dtype", None), getattr(cfg.methods.get(NAME), "topk", None)],
    }
    views = getattr(cfg.methods.get(NAME), "views", None)
    if views is not None and split == "train":  # the draws are a function of the recipe seed
        parts["views"] = [views, stage.recipe.seed]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _dataset_builder(stage) -> list:
    datasets = stage.catalogue.datasets
    name = stage.recipe.data.name
    return [datasets[name].build] if name in datasets and datasets[name].build is not None else []


class Store:
    """Per-split arrays indexed by sample position: ``logits[t]`` and ``features[t][alias]``;
    for sequence teachers ``offsets[t]``/``lengths[t]`` into ragged frame arrays."""

    def __init__(self, tensors: dict[str, torch.Tensor], views: int | None = None):
        self.tensors = tensors  # "t{k}/logits", "t{k}/<alias>"
        self.views = views  # rows are sample * views + view
        # a top-k teacher's class count, read once here: a lookup must not read a GPU tensor
        self.num_classes = {name.split("/")[0]: int(t.reshape(-1)[0]) for name, t in tensors.items()
                            if name.endswith("/classes")}

    def lookup(self, batch, n_teachers: int, aliases: list[list[str]], device) -> list[ModelOutput]:
        on = next(iter(self.tensors.values())).device
        idx = batch.index.to(on, non_blocking=True)
        if self.views is not None:
            idx = idx * self.views + batch.view.to(on, non_blocking=True)
        out = []
        for k in range(n_teachers):
            if f"t{k}/lengths" in self.tensors:
                out.append(self._sequence(k, idx, device))
                continue
            feats = {a: self.tensors[f"t{k}/{a}"][idx].to(device, torch.float32, non_blocking=True) for a in aliases[k]}
            if f"t{k}/topk_values" in self.tensors:  # sparse: expanded only for a method that reads logits
                top = TopK(self.tensors[f"t{k}/topk_values"][idx].to(device, non_blocking=True),
                           self.tensors[f"t{k}/topk_index"][idx].to(device, non_blocking=True), self.num_classes[f"t{k}"])
                out.append(ModelOutput(None, feats, topk=top))
            else:
                out.append(ModelOutput(self.tensors[f"t{k}/logits"][idx].to(device, torch.float32, non_blocking=True),
                                       feats))
        return out

    def _sequence(self, k: int, idx: torch.Tensor, device) -> ModelOutput:
        t = self.tensors
        lengths, offsets = t[f"t{k}/lengths"][idx], t[f"t{k}/offsets"][idx]
        spans = [slice(int(o), int(o) + int(n)) for o, n in zip(offsets, lengths)]
        if f"t{k}/topk_values" in t:
            frames = [TopK(t[f"t{k}/topk_values"][s], t[f"t{k}/topk_index"][s], self.num_classes[f"t{k}"]).dense()
                      for s in spans]
        else:
            frames = [t[f"t{k}/logits"][s].float() for s in spans]
        logits = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)
        return ModelOutput(logits.to(device, non_blocking=True), {}, lengths.to(device))


def _compact_sequences(per_index: dict[int, torch.Tensor], dtype: torch.dtype, topk: int | None, k: int) -> dict:
    """Valid frames of every utterance (logits; log-probabilities for top-k) -> ragged arrays,
    with ``lengths`` and ``offsets`` at the utterance's data-set index (what lookups use)."""
    n = 1 + max(per_index)
    if len(per_index) != n:
        raise KdlabError(f"{NAME}: the loader yielded {len(per_index)} of {n} utterances; cannot cache a partial split")
    per_sample = [per_index[i] for i in range(n)]
    lengths = torch.tensor([len(x) for x in per_sample])
    offsets = torch.zeros(n, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)[:-1]
    frames = torch.cat(per_sample)
    out = {f"t{k}/lengths": lengths, f"t{k}/offsets": offsets}
    if topk is not None:
        values, index = frames.topk(topk, dim=-1)
        out.update({f"t{k}/topk_values": values.half(), f"t{k}/topk_index": index.to(torch.int32),
                    f"t{k}/classes": torch.tensor([frames.shape[-1]])})
    else:
        out[f"t{k}/logits"] = frames.to(dtype)
    return out


class TeacherCache:
    def __init__(self, config):
        self.config = config
        self.stores: dict[str, Store] = {}
        self.building = False
        self.teacher_hashes: list[str] | None = None  # hashed once per stage, not once per split
        self.kept: dict[str, tuple[float, float]] = {}  # split -> (mean, least) top-k mass, first teacher

    config_class = TeacherCacheConfig

    @staticmethod
    def requires(config, stage):
        problems = []
        if config.compact and (config.topk is None or config.dir is None):
            problems.append(("compact", "the compact store needs topk = k and dir = \"...\" (where it is written)"))
        if config.compact and (len(stage.teachers) != 1 or any(stage.teacher_taps)):
            problems.append(("compact", "the compact store holds one teacher's top-k and no tapped features"))
        if stage.augmented is True and config.views is None:
            problems.append(("views", "the training data is augmented (data.augment = true), so the teacher's "
                                      "outputs change every epoch; set views = 8 (say), or data.augment = false"))
        elif stage.augmented is False and config.views is not None:
            problems.append(("views", "the training data is not augmented (data.augment = false); remove views"))
        return Requirements(teachers=1, terms=(), problems=tuple(problems))

    @hookimpl
    def kdlab_stage_start(self, stage):
        self.kept = {}
        where = f"stages.{stage.name}.methods.{NAME}"
        if not stage.teachers:
            raise KdlabError(f"{where}: the stage has no teachers to cache")
        views = self.config.views
        if stage.data.augmented and views is None:
            raise KdlabError(
                f"{where}: the training inputs are randomly augmented, so the teacher's outputs change every "
                f"epoch; set views = 8 (say) to label 8 fixed augmented views of each sample, "
                "set data.augment = false, or remove the cache")
        if views is not None:
            if not stage.data.augmented:
                raise KdlabError(f"{where}.views: the training data is not augmented (data.augment = false); remove views")
            if not hasattr(stage.data.train, "fix_views"):
                raise KdlabError(f"{where}.views: data set '{stage.recipe.data.name}' cannot replay augmentation "
                                 "draws (only the in-memory image data sets can)")
            stage.data.train.fix_views(views)  # until the stage ends: the data is shared by the stages

    @hookimpl
    def kdlab_teacher_outputs(self, stage, batch):
        if self.building or stage.phase not in ("train", "val", "test"):
            return None  # let the teachers run (while building, or for the probe batch)
        split = stage.phase
        if split not in self.stores:
            self.stores[split] = self._load_or_build(stage, split)
        aliases = [list(stage.config.taps.for_teacher(ref)) for ref in stage.config.teachers]
        return self.stores[split].lookup(batch, len(stage.teachers), aliases, stage.device)

    def _load_or_build(self, stage, split: str) -> Store:
        cfg = self.config
        if self.teacher_hashes is None:
            self.teacher_hashes = [file_sha256(stage.resolve_model_ref(ref)) for ref in stage.config.teachers]
        if cfg.compact:
            return self._compact(stage, split)
        key = cache_key(stage, split, self.teacher_hashes)
        target = Path(cfg.dir) / key if cfg.dir else None
        views = cfg.views if split == "train" else None
        if target is not None and (target / "done").is_file():
            log.info("%s: reading %s outputs from %s", NAME, split, target)
            store = _read(target, stage, split, views)
        else:
            store = self._build(stage, split, cfg, target, views)
        values = store.tensors.get("t0/topk_values")
        if values is not None and values.dim() == 3:  # per-token top-k (sequence stores are ragged frames)
            kept = values.float().exp().sum(-1)
            self.kept[split] = (float(kept.mean()), float(kept.min()))
            log.info("%s: the top %d keep %.3f of the teacher's probability on average over the %s split "
                     "(least %.3f); the tail bucket holds the rest", NAME, cfg.topk, self.kept[split][0], split,
                     self.kept[split][1])
        if stage.device.type == "cuda" and not any(k.endswith("/lengths") for k in store.tensors):
            # on the GPU a lookup is then one gather there, not a gather on the host and a
            # copy from pageable memory that waits for the GPU every step (sequence stores,
            # looked up utterance by utterance, stay on the host)
            store = Store({k: t.to(stage.device) for k, t in store.tensors.items()}, store.views)
        return store

    def _compact(self, stage, split: str) -> Compact:
        """The split's compact store: read if complete, else labelled (resuming) and then read."""
        cfg, where = self.config, f"stages.{stage.name}.methods.{NAME}.compact"
        loader = getattr(stage.data, split)
        x = getattr(loader, "x", None)
        text = stage.data.extra.get("text")
        if x is None or text is None or x.dim() != 2:
            raise KdlabError(f"{where}: the compact store is for in-memory text data (token sequences); "
                             f"data set '{stage.recipe.data.name}' is not")
        tokenizer = text.tokenizer.to_str() if hasattr(text.tokenizer, "to_str") else str(text.tokenizer)
        key = hashlib.sha256(json.dumps({
            "format": teacher_store.FORMAT, "teachers": self.teacher_hashes, "k": cfg.topk, "split": split,
            "tokenizer": hashlib.sha256(tokenizer.encode()).hexdigest(),
            "corpus": hashlib.sha256(x.cpu().numpy().tobytes()).hexdigest(),  # the token ids themselves
            "code": code_digest([type(t) for t in stage.teachers]), "device": stage.device.type,
            "amp": str(autocast_dtype(stage.config.methods["amp"], stage.device)) if "amp" in stage.config.methods else None,
        }, sort_keys=True).encode()).hexdigest()[:20]
        target = Path(cfg.dir) / f"compact-{key}"
        if not (target / "meta.json").is_file():
            self._label(stage, split, x, target)
        store = teacher_store.CompactStore(target)
        self.kept[split] = (store.meta["kept_mean"], store.meta["kept_min"])
        log.info("%s: %s split read from the compact store %s (%d bytes a token)", NAME, split, target, store.width)
        return Compact(store)

    def _label(self, stage, split: str, x: torch.Tensor, target: Path) -> None:
        cfg = self.config
        vocab = stage.data.num_classes
        n, length = x.shape
        log.info("%s: labelling the %s split into %s: %d sequences, top %d, %d bytes a token", NAME, split, target,
                 n, cfg.topk, teacher_store.row_bytes(cfg.topk, vocab))

        def topk_of(rows):
            batch = Batch(x[rows.to(x.device)].to(stage.device), torch.zeros(len(rows), length, dtype=torch.long,
                                                                           device=stage.device), rows)
            out = stage.hook.kdlab_teacher_outputs(stage=stage, batch=batch)[0]
            return topk_logprobs(out, cfg.topk)

        self.building = True
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                # under --nproc every rank labels its own shards; rank 0 finishes the store
                count = math.ceil(n / teacher_store.rows_per_shard(length, cfg.topk, vocab))
                teacher_store.label(target, n, length, cfg.topk, vocab, topk_of,
                                    getattr(stage.recipe.data.config, "eval_batch_size", 64),
                                    shards=range(stage.rank, count, stage.world_size),
                                    log=lambda m: log.info("%s: %s split, %s", NAME, split, m))
        finally:
            self.building = False
        if stage.world_size > 1:
            torch.distributed.barrier()
        if stage.is_main:
            teacher_store.finish(target, n, length, cfg.topk, vocab, {"split": split})
        if stage.world_size > 1:
            torch.distributed.barrier()

    def _build(self, stage, split: str, cfg: TeacherCacheConfig, target: Path | None, views: int | None) -> Store:
        loader = getattr(stage.data, split)
        loader.set_epoch(0)
        # Under --nproc the training loader yields only this rank's share of each batch; the
        # cache must hold every sample (later epochs shuffle differently), so every rank builds
        # it from the whole split and rank 0 alone writes it.
        sharded = stage.world_size > 1 and split == "train"
        if sharded:
            loader.shard(0, 1)
        dtype = torch.float16 if cfg.dtype == "float16" else torch.float32
        tensors: dict[str, torch.Tensor] = {}
        classes: dict[str, torch.Tensor] = {}  # top-k teachers' class counts
        sequences: dict[int, dict[int, torch.Tensor]] = {}
        self.building = True
        try:
            # the pass over the split must not move the random stream the training loop uses
            # (a loader may draw augmentation for the student from it)
            batches = loader.view_batches(loader.batch_size) if views else loader
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                for batch in batches:
                    outs = stage.hook.kdlab_teacher_outputs(stage=stage, batch=batch.to(stage.device))
                    if outs[0].lengths is not None:
                        self._collect_sequences(stage, outs, batch, sequences, cfg, split, loader)
                        continue
                    items = {} if cfg.topk is not None else {f"t{k}/logits": o.logits for k, o in enumerate(outs)}
                    items.update({f"t{k}/{a}": f for k, o in enumerate(outs) for a, f in o.features.items()})
                    if cfg.topk is not None:
                        for k, o in enumerate(outs):
                            # from a language model's hidden states a chunk of positions at a time:
                            # never a batch's (tokens x vocabulary) logits
                            values, index = topk_logprobs(o, cfg.topk)
                            items[f"t{k}/topk_values"], items[f"t{k}/topk_index"] = values, index
                            classes[f"t{k}/classes"] = torch.tensor([o.logits_shape[-1]])
                    if not tensors:
                        n = (getattr(loader, "num_samples", None) or _split_size(loader)) * (views or 1)
                        gb = sum(math.prod(t.shape[1:]) for t in items.values()) * n * dtype.itemsize / 2**30
                        log.info("%s: %s split, %d samples, %.3f GB of teacher outputs", NAME, split, n, gb)
                        if gb > cfg.max_gb:
                            raise KdlabError(f"stages.{stage.name}.methods.{NAME}: the {split} cache would take "
                                             f"{gb:.2f} GB, over max_gb = {cfg.max_gb}")
                        tensors = {name: torch.zeros((n, *t.shape[1:]), dtype=_stored_dtype(name, dtype))
                                   for name, t in items.items()}
                        filled = torch.zeros(n, dtype=torch.bool)
                    idx = batch.index.cpu() if views is None else batch.index * views + batch.view
                    filled[idx] = True
                    for name, t in items.items():
                        tensors[name][idx] = t.detach().to("cpu", tensors[name].dtype)
            if tensors and not bool(filled.all()):  # a cache with zero rows would train on zero logits
                raise KdlabError(f"stages.{stage.name}.methods.{NAME}: the {split} loader yielded "
                                 f"{int(filled.sum())} of {len(filled)} samples; cannot cache a partial split")
        finally:
            self.building = False
            if sharded:
                loader.shard(stage.rank, stage.world_size)
        tensors.update(classes)  # one value per teacher, not one per row
        for k, per_index in sequences.items():
            tensors.update(_compact_sequences(per_index, dtype, cfg.topk, k))
        if target is not None and stage.is_main:
            _write(tensors, target)
        return Store(tensors, views)

    def _collect_sequences(self, stage, outs, batch, sequences, cfg, split, loader) -> None:
        if any(o.features for o in outs):
            raise KdlabError(f"stages.{stage.name}.methods.{NAME}: tapped features of sequence teachers "
                             "are not cached; remove the teacher taps or the cache")
        if not sequences:
            n = getattr(loader, "num_samples", None) or _split_size(loader)
            frames = float(outs[0].lengths.float().mean()) * n
            per_frame = (cfg.topk * 4 if cfg.topk else outs[0].logits.shape[-1] * (2 if cfg.dtype == "float16" else 4))
            gb = frames * per_frame * len(outs) / 2**30
            log.info("%s: %s split, %d utterances, about %.3f GB of teacher outputs", NAME, split, n, gb)
            if gb > cfg.max_gb:
                raise KdlabError(f"stages.{stage.name}.methods.{NAME}: the {split} cache would take "
                                 f"{gb:.2f} GB, over max_gb = {cfg.max_gb}")
        for k, o in enumerate(outs):
            # top-k needs log-probabilities; otherwise the logits are kept as they are, so that
            # the cached run computes exactly what the uncached one does
            frames = (torch.log_softmax(o.logits.float(), dim=-1) if cfg.topk else o.logits).cpu()
            store = sequences.setdefault(k, {})
            for j, i in enumerate(batch.index.tolist()):
                store[i] = frames[j, : int(o.lengths[j])]

    @hookimpl(tryfirst=True)  # before the writers read the metrics
    def kdlab_stage_summary(self, stage, metrics):
        # what a sparse target leaves out: the tail bucket's share is 1 - this
        for split, (mean, least) in self.kept.items():
            metrics[f"{NAME}/{split}_topk_mass"] = mean
            metrics[f"{NAME}/{split}_topk_mass_min"] = least

    @hookimpl
    def kdlab_stage_end(self, stage):
        self.stores.clear()  # (self.kept stays for the stage summary, which comes after)
        if self.config.views is not None:
            stage.data.train.fix_views(None)


class Compact:
    """A split's compact store, answering lookups like :class:`Store` (one teacher's top-k)."""

    def __init__(self, store):
        self.store, self.tensors = store, {}

    def lookup(self, batch, n_teachers: int, aliases: list[list[str]], device) -> list[ModelOutput]:
        values, index = self.store.rows(batch.index)
        return [ModelOutput(None, topk=TopK(values.to(device, non_blocking=True), index.to(device, non_blocking=True),
                                            self.store.vocab))]


def _stored_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """Top-k values in fp16 and class indices as int32; the rest in ``dtype``."""
    if name.endswith("/topk_values"):
        return torch.float16
    if name.endswith("/topk_index"):
        return torch.int32
    return dtype


def _split_size(loader) -> int:
    """Number of samples in a split: one more than the largest index the loader yields."""
    return 1 + max(int(b.index.max()) for b in loader)


def _read(target: Path, stage, split: str, views: int | None = None) -> Store:
    """A finished cache directory, checked against its manifest (each file's SHA-256, shape and
    dtype, written with it): a flipped bit, other data in place of the logits, another dtype or
    shape is one error line, never used. Then one row per sample."""
    rebuild = "delete the directory to rebuild it"
    try:
        manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
        tensors = {}
        for file, meta in manifest.items():
            path = target / file
            if Path(file).name != file or file_sha256(path) != meta["sha256"]:
                raise KdlabError(f"{path}: does not match its checksum in manifest.json; {rebuild}")
            array = np.load(path, mmap_mode="c", allow_pickle=False)
            if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"]:
                raise KdlabError(f"{path}: shape {list(array.shape)} / dtype {array.dtype}, the manifest says "
                                 f"{meta['shape']} / {meta['dtype']}; {rebuild}")
            tensors[meta["name"]] = torch.from_numpy(array)
    except (ValueError, OSError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise KdlabError(f"{target}: the cache is unreadable ({type(exc).__name__}: {exc}); {rebuild}") from exc
    n = getattr(getattr(stage.data, split), "num_samples", None)
    n = None if n is None else n * (views or 1)
    # one row per sample (and view): a classifier teacher's logits (or top-k values), a sequence teacher's lengths
    rows = [len(t) for name, t in tensors.items()
            if name.endswith("/lengths") or (name.endswith(("/logits", "/topk_values"))
                                              and name.rsplit("/", 1)[0] + "/lengths" not in tensors)]
    if not rows or (n is not None and any(r != n for r in rows)):
        raise KdlabError(f"{target}: the cache does not hold one row per {split} sample ({n}); "
                         "delete the directory to rebuild it")
    return Store(tensors, views)


def _encode(name: str) -> str:
    """A tensor's name as a file name, reversibly (tap aliases may hold "__" or "%")."""
    return urllib.parse.quote(name, safe="")


def _decode(stem: str) -> str:
    return urllib.parse.unquote(stem)


def _write(tensors: dict[str, torch.Tensor], target: Path) -> None:
    """Write to a temporary directory and rename it: a half-written cache is never read."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # a full disk: one error naming the file, and no half-written directory left behind
        with writing(tmp):
            tmp.mkdir(parents=True)
        manifest = {}
        for name, t in tensors.items():
            file = f"{_encode(name)}.npy"
            array = t.numpy()
            with writing(tmp / file):
                np.save(tmp / file, array)
            manifest[file] = {"name": name, "shape": list(array.shape), "dtype": str(array.dtype),
                              "sha256": file_sha256(tmp / file)}
        for file, text in (("manifest.json", json.dumps(manifest, indent=1)), ("done", "complete\n")):
            with writing(tmp / file):
                (tmp / file).write_text(text, encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(target)
    except OSError:  # another run finished the same cache first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
