"""Keyword spotting data in the Speech Commands layout (seed 001).

``root/<word>/<speaker>_nohash_<n>.wav`` clips (16 kHz mono, at most ``clip_seconds`` long;
shorter clips are zero-padded at the end, as in the real data set), ``validation_list.txt`` and
``testing_list.txt`` naming the clips of those splits (every other clip trains), and
``_background_noise_/*.wav`` long noise recordings for augmentation. The recipe names the
keyword; every other word is the negative class (label 0, keyword 1). ``kdlab data kws`` writes
a synthetic corpus in this layout.

Training augmentation, as in the reference setup: a random segment of a background-noise file
mixed in at a random gain, a random volume, then SpecAugment time and frequency masking on the
log-mel. Inputs are 40-band log-mel (400-sample window and FFT, 160 hop); validation and test
features are computed once.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import attrs
import numpy as np
import torch
from attrs import field
from attrs import validators as v

from kdlab.data.audio import read_audio
from kdlab.data.features import LogMel, spec_augment
from kdlab.data.fingerprint import files_digest
from kdlab.data.loader import WorkerBatches, batch_seed, batch_settings, epoch_seed
from kdlab.engine import limits
from kdlab.data.files import read_utf8
from kdlab.engine.errors import KdlabError
from kdlab.engine.types import Batch, DataBundle

NOISE_DIR = "_background_noise_"


@attrs.frozen(kw_only=True)
class SpeechCommandsConfig:
    # what kind of data this is: the plugins whose data_kinds meet it join a stage (kdlab.engine.plan)
    kinds: ClassVar[frozenset[str]] = frozenset({"audio", "classification", "keyword_spotting"})
    root: str
    keyword: str = "sheila"
    sample_rate: int = field(default=16000, validator=v.ge(1000))
    clip_seconds: float = field(default=1.0, validator=v.gt(0))
    n_mels: int = field(default=40, validator=v.ge(8))
    batch_size: int = field(default=128, validator=limits.batch_size)
    eval_batch_size: int = field(default=1024, validator=limits.batch_size)
    augment: bool = True
    noise_prob: float = field(default=0.8, validator=[v.ge(0), v.le(1)])  # chance a clip gets noise
    noise_gain: tuple[float, float] = (0.0, 0.3)  # noise amplitude, uniform in this range
    volume: tuple[float, float] = (0.5, 1.5)  # clip gain, uniform in this range

    freq_mask: int = field(default=8, validator=v.ge(0))  # widest frequency mask (bands)
    time_mask: int = field(default=15, validator=v.ge(0))  # widest time mask (frames)
    train_limit: int | None = field(default=None, validator=v.optional(v.ge(1)))  # quick runs
    # processes that compute augmented training features while the main process trains (0: the
    # main process does); the batches are the same either way
    num_workers: int = field(default=0, validator=v.ge(0))

    def augments_inputs(self, dataset: str) -> bool:
        """Whether the model inputs of the training split differ between epochs (random
        transforms): what the teacher cache needs to know before anything is built."""
        return self.augment


@attrs.frozen
class Clips:
    """One split: audio (N, samples) as int16, labels, and the clip paths."""

    audio: torch.Tensor
    labels: torch.Tensor
    paths: list[str]


def read_split_list(root: Path, name: str) -> set[str]:
    path = root / name
    if not path.is_file():
        raise KdlabError(f"data.root: {path} is missing (the Speech Commands layout lists the "
                         f"validation and test clips in validation_list.txt and testing_list.txt)")
    text = read_utf8(path, "data.root: ")
    return {line.strip() for line in text.splitlines() if line.strip()}


def load_speech_commands(config: SpeechCommandsConfig) -> tuple[dict[str, Clips], list[np.ndarray]]:
    """Splits of the corpus under ``config.root`` and its background-noise recordings."""
    root = Path(config.root)
    if not root.is_dir():
        raise KdlabError(f"data.root: {root} is not a directory (expected the Speech Commands layout; "
                         f"`kdlab data kws --out {root}` writes a synthetic corpus there)")
    val_list, test_list = read_split_list(root, "validation_list.txt"), read_split_list(root, "testing_list.txt")
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != NOISE_DIR and not p.name.startswith("."))
    if config.keyword not in words:
        raise KdlabError(f"data.keyword: no folder '{config.keyword}' under {root}; words there: "
                         f"{', '.join(words[:20])}{' ...' if len(words) > 20 else ''}")
    length = int(round(config.sample_rate * config.clip_seconds))
    split_of = {"val": val_list, "test": test_list}
    items: dict[str, list] = {"train": [], "val": [], "test": []}
    for word in words:
        for path in sorted((root / word).glob("*.wav")):
            rel = f"{word}/{path.name}"
            split = next((s for s, names in split_of.items() if rel in names), "train")
            items[split].append((rel, int(word == config.keyword)))
    listed = {rel for rel, _ in items["val"] + items["test"]}
    missing = sorted((val_list | test_list) - listed)
    if missing:
        raise KdlabError(f"data.root: {len(missing)} clips listed in validation_list.txt/testing_list.txt "
                         f"do not exist under {root}, e.g. {missing[0]}")
    if config.train_limit is not None and len(items["train"]) > config.train_limit:
        keep = np.random.default_rng(0).choice(len(items["train"]), config.train_limit, replace=False)
        items["train"] = [items["train"][i] for i in sorted(keep)]
    splits = {}
    for split, entries in items.items():
        audio = np.zeros((len(entries), length), np.int16)
        for i, (rel, _) in enumerate(entries):
            wave = read_audio(root / rel, config.sample_rate)
            if len(wave) > length:
                raise KdlabError(f"{root / rel}: {len(wave) / config.sample_rate:.3f} s long, longer than "
                                 f"data.clip_seconds = {config.clip_seconds}")
            audio[i, : len(wave)] = np.round(np.clip(wave, -1, 1) * 32767).astype(np.int16)
        splits[split] = Clips(torch.from_numpy(audio), torch.tensor([y for _, y in entries], dtype=torch.long),
                              [rel for rel, _ in entries])
    for split in ("train", "test"):
        if not (splits[split].labels == 1).any():
            raise KdlabError(f"data.keyword: the {split} split has no '{config.keyword}' clips under {root}")
    noise_dir = root / NOISE_DIR
    noises = [read_audio(p, config.sample_rate) for p in sorted(noise_dir.glob("*.wav"))] if noise_dir.is_dir() else []
    noises = [n for n in noises if len(n) >= length]
    return splits, noises


class KWSLoader(WorkerBatches):
    """Batches of log-mel features. Training batches are augmented on the fly from the stored
    audio with a generator seeded by (seed, epoch, batch), drawn for the whole global batch (a
    rank uses its share's rows), so that a resumed run, and N processes, see the same data as one
    process; with ``num_workers`` they are made in worker processes. Evaluation features are
    computed once."""

    def __init__(self, clips: Clips, config: SpeechCommandsConfig, features: LogMel, *, train: bool,
                 noises: list[np.ndarray], seed: int):
        self.clips, self.config, self.features, self.train, self.seed = clips, config, features, train, seed
        self.batch_size = config.batch_size if train else config.eval_batch_size
        self.noises = [torch.from_numpy(n) for n in noises]
        self.cached = None if train and config.augment else self._mel(clips.audio, None)
        self.num_workers = config.num_workers if self.cached is None else 0
        self._order: tuple[int, torch.Tensor] | None = None

    @property
    def num_samples(self) -> int:
        return len(self.clips.labels)

    def _mel(self, audio: torch.Tensor, g: torch.Generator | None, rows: tuple[int, int] | None = None) -> torch.Tensor:
        wave = audio.float() / 32767.0
        if g is not None:
            wave = self._augment_wave(wave, g, rows)
        chunks = [self.features(wave[i : i + 4096]) for i in range(0, len(wave), 4096)]
        mel = torch.cat(chunks) if chunks else torch.zeros(0, self.config.n_mels, self.features.frames(wave.shape[1]))
        if g is not None and (self.config.freq_mask or self.config.time_mask):
            mel = spec_augment(mel, self.config.freq_mask, self.config.time_mask, generator=g, rows=rows)
        return mel

    def _augment_wave(self, wave: torch.Tensor, g: torch.Generator, rows: tuple[int, int]) -> torch.Tensor:
        """Volume, then (with ``noise_prob``) a random stretch of a random noise file. Every draw
        is made for the global batch of ``rows[0]`` clips; this share is rows[1] onwards."""
        n, first = rows
        mine = slice(first, first + len(wave))
        length = wave.shape[1]
        lo, hi = self.config.volume
        wave = wave * (lo + (hi - lo) * torch.rand(n, 1, generator=g))[mine]
        if self.noises and len(wave):
            which = torch.randint(len(self.noises), (n,), generator=g)
            room = torch.tensor([len(self.noises[int(k)]) - length + 1 for k in which])
            starts = (torch.rand(n, generator=g) * room).long()
            noise = torch.stack([self.noises[int(k)][int(s) : int(s) + length] for k, s in zip(which[mine], starts[mine])])
            lo, hi = self.config.noise_gain
            gain = (lo + (hi - lo) * torch.rand(n, 1, generator=g)) * (torch.rand(n, 1, generator=g) < self.config.noise_prob)
            wave = wave + gain[mine] * noise
        return wave.clamp(-1, 1)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            n = self.num_samples
            order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch))) \
                if self.train else torch.arange(n)
            self._order = (epoch, order)
        return self._order[1]

    def make_batch(self, epoch: int, b: int) -> Batch:
        every = self._epoch_order(epoch)[b * self.batch_size : (b + 1) * self.batch_size]
        idx = self.my_part(every)
        if self.cached is not None:
            x = self.cached[idx]
        else:
            g = torch.Generator().manual_seed(batch_seed(self.seed, epoch, b))
            x = self._mel(self.clips.audio[idx], g, (len(every), self.my_first(len(every))))
        return Batch(x, self.clips.labels[idx], idx, shards=self.shares(len(every)))


def build(config: SpeechCommandsConfig, seed: int) -> DataBundle:
    splits, noises = load_speech_commands(config)
    features = LogMel(config.sample_rate, config.n_mels)
    make = lambda split, train: KWSLoader(splits[split], config, features, train=train, noises=noises, seed=seed)  # noqa: E731
    frames = features.frames(splits["train"].audio.shape[1])
    return DataBundle(
        train=make("train", True),
        val=make("val", False) if len(splits["val"].labels) else None,
        test=make("test", False),
        num_classes=2,
        input_shape=(config.n_mels, frames),
        augmented=config.augment,
        # the clips' contents, not only their paths: a clip rewritten in place is other data
        key={"dataset": "speech_commands", "root": str(Path(config.root).resolve()),
             "files": files_digest([Path(config.root)]), **batch_settings(config)},
    )


DATASET = (SpeechCommandsConfig, build)  # the `kdlab.datasets` entry point: config class, builder
