"""Phoneme recognition data from a manifest (:mod:`kdlab.data.manifest`): 80-dim log-mel
features for the student (torchaudio MelSpectrogram, 25 ms window, 10 ms hop, normalised per
utterance and band, SpecAugment on the training split) and the raw 16 kHz audio for a teacher
that reads waveforms (wav2vec2). Targets are phoneme ids (0 is the CTC blank, the inventory
follows), padded with -1.

Bad entries are reported with the manifest file and line: unreadable, empty, truncated or
non-finite (NaN / infinite) audio, phonemes outside the inventory, and transcripts that cannot fit the utterance's 20 ms output frames
(CTC needs at least one frame per label, two between repeated labels). ``on_bad = "error"``
(the default) stops with the first; ``"skip"`` logs every one and leaves them out. Nothing bad
is trained on silently.

Features are computed once and cached on disk (``cache_dir``, default ``.kdlab_features`` next to
the manifest), keyed by a hash of the manifest, the inventory and the feature settings, written
atomically; a changed corpus or setting builds a new cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import ClassVar, Literal

import attrs
import numpy as np
import torch
from attrs import field
from attrs import validators as v

from kdlab.data.audio import read_audio
from kdlab.data.features import LogMel, spec_augment, utterance_features
from kdlab.data.fingerprint import files_digest, modules_digest
from kdlab.data.loader import WorkerBatches, batch_seed, batch_settings, epoch_seed
from kdlab.data.manifest import Utterance, read_manifest
from kdlab.engine import checkpoint
from kdlab.engine import limits
from kdlab.engine.errors import KdlabError
from kdlab.engine.types import Batch, DataBundle

log = logging.getLogger("kdlab")
FRAME_SAMPLES = 320  # one 20 ms CTC output frame at 16 kHz (wav2vec2's stride; the student's 10 ms x 2)


@attrs.frozen(kw_only=True)
class PhonemesConfig:
    # what kind of data this is: the plugins whose data_kinds meet it join a stage (kdlab.engine.plan)
    kinds: ClassVar[frozenset[str]] = frozenset({"audio", "ctc"})
    manifest: str
    sample_rate: int = field(default=16000, validator=v.ge(8000))
    n_mels: int = field(default=80, validator=v.ge(8))
    batch_size: int = field(default=16, validator=limits.batch_size)
    eval_batch_size: int = field(default=32, validator=limits.batch_size)
    augment: bool = True  # SpecAugment on the student's training features
    freq_mask: int = field(default=15, validator=v.ge(0))
    time_mask: int = field(default=25, validator=v.ge(0))
    masks: int = field(default=2, validator=v.ge(0))

    on_bad: Literal["error", "skip"] = "error"
    cache_dir: str | None = None
    train_limit: int | None = field(default=None, validator=v.optional(v.ge(1)))
    # processes that pad and mask training batches while the main process trains (0: the main
    # process does); the batches are the same either way
    num_workers: int = field(default=0, validator=v.ge(0))

    def augments_inputs(self, dataset: str) -> bool:
        """Whether the model inputs of the training split differ between epochs (random
        transforms): what the teacher cache needs to know before anything is built."""
        return False  # SpecAugment changes only the student's features, not what a teacher reads


def ctc_min_frames(ids: list[int]) -> int:
    """Frames a CTC alignment of ``ids`` needs: one per label plus a blank between repeats."""
    return len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))


def feature_code_digest() -> str:
    """The code that computes and checks the cached features."""
    return modules_digest("kdlab.data.features", "kdlab.data.audio", "kdlab.data.phonemes", "dist:torchaudio",
                          "dist:soundfile", "dist:torch")


def _cache_key(manifest: Path, utterances: list[Utterance], inventory: list[str], config: PhonemesConfig) -> str:
    """The manifest, the settings that change the features or which utterances are kept, the
    contents of every clip (a clip replaced in place, even with the same size and modification
    time, gets a new key: :mod:`kdlab.data.fingerprint`) and the source of the feature code."""
    h = hashlib.sha256(manifest.read_bytes())
    h.update(json.dumps([inventory, config.sample_rate, config.n_mels, config.on_bad, "logmel-400-160-uttnorm",
                         feature_code_digest()]).encode())
    h.update(files_digest([manifest.parent / u.audio for u in utterances], root=manifest.parent).encode())
    return h.hexdigest()[:20]


def prepare(config: PhonemesConfig) -> dict:
    """Read, check and featurise the corpus: per split, audio (int16), features (fp16), ids."""
    manifest = Path(config.manifest)
    utterances, inventory = read_manifest(manifest)
    classes = ["<blank>", *inventory]
    index = {p: i + 1 for i, p in enumerate(inventory)}
    cache_dir = Path(config.cache_dir) if config.cache_dir else manifest.parent / ".kdlab_features"
    key = _cache_key(manifest, utterances, inventory, config)
    cache = cache_dir / f"{key}.pt"
    if cache.is_file():
        data = checkpoint.load(cache)
        log.info("features: read from %s", cache)
        return {**data, "classes": classes, "key": key}
    features = LogMel(config.sample_rate, config.n_mels)
    out = {s: {"audio": [], "features": [], "ids": [], "lines": []} for s in ("train", "val", "test")}
    bad = []
    for u in utterances:
        problem, item = _check(u, manifest, index, config, features)
        if problem:
            message = f"{manifest}:{u.line}: {problem}"
            if config.on_bad == "error":
                raise KdlabError(message + " (set data.on_bad = \"skip\" to leave such entries out)")
            bad.append(message)
            continue
        split = out[u.split]
        for k, val in item.items():
            split[k].append(val)
        split["lines"].append(u.line)
    for message in bad:
        log.warning("skipped %s", message)
    if bad:
        log.warning("skipped %d of %d utterances in %s", len(bad), len(utterances), manifest)
    if not out["train"]["ids"]:
        raise KdlabError(f"data.manifest: {manifest} has no usable training utterances")
    data = {"splits": out, "skipped": bad}
    checkpoint.save(data, cache)
    log.info("features: cached in %s", cache)
    return {**data, "classes": classes, "key": key}


def _check(u: Utterance, manifest: Path, index: dict, config: PhonemesConfig, features: LogMel):
    unknown = sorted({p for p in u.phonemes if p not in index})
    if unknown:
        return f"phonemes not in the inventory (phonemes.txt): {' '.join(unknown)}", None
    if not u.phonemes:
        return "empty transcript", None
    path = manifest.parent / u.audio
    try:
        # a cut-off clip no longer matches its transcript: a bad utterance (on_bad decides)
        wave = read_audio(path, config.sample_rate, resample_to_rate=True, truncated="error")
    except KdlabError as exc:
        return f"{u.audio}: unreadable, empty, truncated or non-finite audio ({exc})", None
    ids = [index[p] for p in u.phonemes]
    frames = len(wave) // FRAME_SAMPLES
    if ctc_min_frames(ids) > frames:
        return (f"{u.audio}: transcript needs {ctc_min_frames(ids)} CTC frames, the audio has {frames} "
                f"({len(wave) / config.sample_rate:.2f} s)"), None
    wave_t = torch.from_numpy(np.clip(wave, -1, 1))
    mel = utterance_features(wave_t, features)  # (frames, n_mels)
    return None, {"audio": (wave_t * 32767).round().to(torch.int16), "features": mel.half(),
                  "ids": torch.tensor(ids, dtype=torch.long)}


def _pad(seqs: list[torch.Tensor], value: float, length: int | None = None) -> torch.Tensor:
    """Right-pad to the longest of ``seqs``, or to ``length``: the global batch's longest, so
    that each rank's share of a batch is padded as one process pads the whole batch (padded
    frames pass through the student's convolutions and batch norm)."""
    out = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)
    if length is not None and out.shape[1] < length:
        out = torch.nn.functional.pad(out, (0, 0) * (out.ndim - 2) + (0, length - out.shape[1]), value=value)
    return out


class PhonemeLoader(WorkerBatches):
    """Length-bucketed batches: each epoch's order is a seeded permutation, cut into groups of 20
    batches sorted by length (less padding), whose batches are then shuffled. SpecAugment is drawn
    from a generator seeded by (seed, epoch, batch) for the whole global batch, so a resumed run
    and N processes mask as one process does; with ``num_workers`` batches are padded and masked
    in worker processes."""

    def __init__(self, split: dict, config: PhonemesConfig, *, train: bool, seed: int):
        self.split, self.config, self.train, self.seed = split, config, train, seed
        self.batch_size = config.batch_size if train else config.eval_batch_size
        self.lengths = torch.tensor([len(f) for f in split["features"]])
        self.num_workers = config.num_workers if train else 0
        self._epoch_batches: tuple[int, list[torch.Tensor]] | None = None

    @property
    def num_samples(self) -> int:
        return len(self.lengths)

    def batches(self, epoch: int | None = None) -> list[torch.Tensor]:
        epoch = self.epoch if epoch is None else epoch
        if self._epoch_batches is not None and self._epoch_batches[0] == epoch:
            return self._epoch_batches[1]
        n, bs = self.num_samples, self.batch_size
        if not self.train:
            order = torch.argsort(self.lengths, stable=True)
            batches = [order[i : i + bs] for i in range(0, n, bs)]
        else:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(n, generator=g)
            groups = [order[i : i + 20 * bs] for i in range(0, n, 20 * bs)]
            batches = []
            for group in groups:
                group = group[torch.argsort(self.lengths[group], stable=True)]
                batches += [group[i : i + bs] for i in range(0, len(group), bs)]
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        self._epoch_batches = (epoch, batches)
        return batches

    def num_batches(self, epoch: int) -> int:
        return len(self.batches(epoch))

    def make_batch(self, epoch: int, b: int) -> Batch:
        s = self.split
        idx = self.batches(epoch)[b]
        every = idx.tolist()  # the global batch, before this rank's share is cut
        frames, samples = int(self.lengths[idx].max()), max(len(s["audio"][i]) for i in every)
        labels = max(len(s["ids"][i]) for i in every)
        idx = self.my_part(idx)
        ids = idx.tolist()
        feats = _pad([s["features"][i].float() for i in ids], 0.0, frames)
        if self.train and self.config.augment and self.config.masks:
            g = torch.Generator().manual_seed(batch_seed(self.seed, epoch, b))
            feats = spec_augment(feats.transpose(1, 2), self.config.freq_mask, self.config.time_mask,
                                 self.config.masks, generator=g, rows=(len(every), self.my_first(len(every)))).transpose(1, 2)
        waves = [s["audio"][i] for i in ids]
        return Batch(
            feats, _pad([s["ids"][i] for i in ids], -1, labels), idx,
            {"input_lengths": self.lengths[idx], "wave": _pad(waves, 0, samples).float() / 32767.0,
             "wave_lengths": torch.tensor([len(w) for w in waves])},
            shards=self.shares(len(every)),
        )


def build(config: PhonemesConfig, seed: int) -> DataBundle:
    data = prepare(config)
    splits = data["splits"]
    if config.train_limit is not None:
        splits = {**splits, "train": {k: val[: config.train_limit] for k, val in splits["train"].items()}}
    make = lambda name, train: PhonemeLoader(splits[name], config, train=train, seed=seed) if splits[name]["ids"] else None  # noqa: E731
    return DataBundle(
        train=make("train", True), val=make("val", False), test=make("test", False),
        num_classes=len(data["classes"]), input_shape=(100, config.n_mels), augmented=False,
        # augmented=False: SpecAugment changes only the student's features; a teacher reads the
        # clean audio, so its outputs per utterance are fixed (the teacher cache relies on this)
        key={"dataset": "phonemes", "manifest": str(Path(config.manifest).resolve()),
             "manifest_sha": data["key"],
             **{k: val for k, val in batch_settings(config).items() if k not in ("manifest", "cache_dir")}},
        classes=tuple(data["classes"]),
    )


DATASET = (PhonemesConfig, build)  # the `kdlab.datasets` entry point: config class, builder
