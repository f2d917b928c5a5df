"""The phoneme-recognition loader on a tiny corpus in the manifest format, written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch

from kdlab import KdlabError
from kdlab.data.phonemes import PhonemesConfig, build as build_phonemes, ctc_min_frames
from kdlab.data.manifest import Utterance, write_manifest
from tests.conftest import rank_shares

INVENTORY = ["a", "b", "i", "k", "o"]


def make_phoneme_corpus(root, per_split=(6, 2, 2), rate=16000, seed=0):
    """WAV clips (noise bursts, 0.5-1.5 s, some at 22.05 kHz to exercise resampling) and a
    manifest with short phoneme strings over a 5-phoneme inventory."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in zip(("train", "val", "test"), per_split):
        for i in range(count):
            sr = rate if i % 3 else 22050
            wave = (0.1 * rng.standard_normal(int(sr * rng.uniform(0.5, 1.5)))).astype(np.float32)
            rel = f"clips/{split}_{i}.wav"
            (root / "clips").mkdir(parents=True, exist_ok=True)
            soundfile.write(root / rel, wave, sr, subtype="PCM_16")
            phones = tuple(rng.choice(INVENTORY, size=int(rng.integers(2, 8))))
            rows.append(Utterance(rel, phones, f"spk{i % 2}", len(wave) / sr, split))
    write_manifest(root / "manifest.jsonl", rows, INVENTORY)
    return root / "manifest.jsonl"


def build(manifest, **settings):
    config = PhonemesConfig(manifest=str(manifest), **{"batch_size": 4, "eval_batch_size": 3, **settings})
    return build_phonemes(config, seed=0)


def test_batches_features_targets_and_waves(tmp_path):
    data = build(make_phoneme_corpus(tmp_path / "c"))
    assert data.num_classes == 6 and data.classes == ("<blank>", *INVENTORY)
    assert (data.train.num_samples, data.val.num_samples, data.test.num_samples) == (6, 2, 2)
    batch = next(iter(data.test))
    lengths, wave_lengths = batch.extra["input_lengths"], batch.extra["wave_lengths"]
    assert batch.inputs.shape == (2, int(lengths.max()), 80)
    # 10 ms frames of 25 ms windows without padding; per-utterance normalisation
    assert lengths.tolist() == [1 + (n - 400) // 160 for n in wave_lengths.tolist()]
    first = batch.inputs[0, : lengths[0]]
    assert first.mean().abs() < 1e-2 and (first.std(0) - 1).abs().max() < 0.05
    assert batch.extra["wave"].shape == (2, int(wave_lengths.max()))
    # targets: ids 1..5 (0 is the blank), padded with -1
    assert ((batch.targets >= 1) | (batch.targets == -1)).all()
    assert set(batch.targets[batch.targets >= 0].tolist()) <= {1, 2, 3, 4, 5}


def test_features_are_cached_and_rebuilt_when_the_corpus_changes(tmp_path, caplog):
    manifest = make_phoneme_corpus(tmp_path / "c")
    first = build(manifest)
    caches = list((tmp_path / "c" / ".kdlab_features").glob("*.pt"))
    assert len(caches) == 1
    with caplog.at_level("INFO", logger="kdlab"):
        second = build(manifest)
    assert "features: read from" in caplog.text
    a, b = next(iter(first.test)), next(iter(second.test))
    assert torch.equal(a.inputs, b.inputs)
    lines = manifest.read_text(encoding="utf-8").splitlines()
    manifest.write_text("\n".join(lines[1:]) + "\n", encoding="utf-8")  # one utterance fewer
    assert build(manifest).train.num_samples == 5
    assert len(list((tmp_path / "c" / ".kdlab_features").glob("*.pt"))) == 2


def _corrupt(manifest, problem):
    lines = manifest.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[2])
    if problem == "unknown":
        row["phonemes"] = "a zz b"
    elif problem == "unreadable":
        (manifest.parent / row["audio"]).write_bytes(b"RIFF garbage")
    elif problem == "empty":
        soundfile.write(manifest.parent / row["audio"], np.zeros(0, np.float32), 16000)
    elif problem == "nan":  # a float WAV with one NaN sample
        wave = np.full(16000, 0.1, np.float32)
        wave[100] = np.nan
        soundfile.write(manifest.parent / row["audio"], wave, 16000, subtype="FLOAT")
    elif problem == "truncated":  # a copy cut off half-way: the header still declares the whole clip
        clip = manifest.parent / row["audio"]
        clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    else:  # 0.5-1.5 s gives 25-75 frames of 20 ms; 200 phonemes cannot fit
        row["phonemes"] = " ".join(["a", "b"] * 100)
    lines[2] = json.dumps(row, ensure_ascii=False)
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(("problem", "match"), [
    ("unknown", r"manifest.jsonl:3: phonemes not in the inventory \(phonemes.txt\): zz"),
    ("unreadable", r"manifest.jsonl:3: clips/train_2.wav: unreadable, empty, truncated or non-finite audio"),
    ("empty", r"manifest.jsonl:3: clips/train_2.wav: unreadable, empty, truncated or non-finite audio"),
    ("long", r"manifest.jsonl:3: clips/train_2.wav: transcript needs 200 CTC frames, the audio has \d+"),
    ("truncated", r"manifest.jsonl:3: clips/train_2.wav: unreadable, empty, truncated or non-finite audio .*truncated: the header"),
    ("nan", r"manifest.jsonl:3: clips/train_2.wav: unreadable, empty, truncated or non-finite audio .*1 samples are NaN or infinite"),
])
def test_bad_entries_are_rejected_or_skipped_with_file_and_line(tmp_path, problem, match, caplog):
    manifest = make_phoneme_corpus(tmp_path / "c")
    _corrupt(manifest, problem)
    with pytest.raises(KdlabError, match=match):
        build(manifest)
    with caplog.at_level("WARNING", logger="kdlab"):
        data = build(manifest, on_bad="skip")
    assert data.train.num_samples == 5  # the bad one left out, and said so
    assert "skipped" in caplog.text and "manifest.jsonl:3" in caplog.text


def test_ctc_min_frames_counts_blanks_between_repeats():
    assert ctc_min_frames([1, 2, 3]) == 3
    assert ctc_min_frames([1, 1, 2, 2, 2]) == 8


def test_a_cache_built_with_skip_is_not_used_by_a_run_that_errors_on_bad_entries(tmp_path):
    manifest = make_phoneme_corpus(tmp_path / "c")
    _corrupt(manifest, "unknown")
    assert build(manifest, on_bad="skip").train.num_samples == 5
    with pytest.raises(KdlabError, match="phonemes not in the inventory"):
        build(manifest)


def test_replacing_a_clip_rebuilds_its_features(tmp_path):
    manifest = make_phoneme_corpus(tmp_path / "c")
    first = build(manifest)
    row = json.loads(manifest.read_text(encoding="utf-8").splitlines()[-1])  # a test clip
    clip = manifest.parent / row["audio"]
    wave, rate = soundfile.read(clip, dtype="float32")
    soundfile.write(clip, np.ascontiguousarray(wave[::-1]), rate, subtype="PCM_16")  # same length, other audio
    again = build(manifest)
    a = torch.cat([b.inputs.flatten() for b in first.test])
    b = torch.cat([b.inputs.flatten() for b in again.test])
    assert not torch.equal(a, b)


def test_spec_augment_is_drawn_per_batch_for_the_global_batch_and_workers_make_the_same_batches(tmp_path):
    """SpecAugment's masks come from a generator seeded by (seed, epoch, batch), drawn for the
    whole global batch: the global generator plays no part, two ranks' shares put together are the
    one-process batch, and two worker processes make the batches the main process makes."""
    manifest = make_phoneme_corpus(tmp_path / "c", per_split=(10, 2, 2))
    main = build(manifest, batch_size=5)
    main.train.set_epoch(1)
    torch.manual_seed(0)
    whole = list(main.train)
    torch.manual_seed(1)
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(whole, main.train))
    clean = build(manifest, batch_size=5, augment=False)
    clean.train.set_epoch(1)
    assert not all(torch.equal(a.inputs, b.inputs) for a, b in zip(whole, clean.train))  # masked
    shares = rank_shares(lambda: build(manifest, batch_size=5), epoch=1)
    for one, a, b in zip(whole, *shares):
        assert torch.equal(torch.cat([a.inputs, b.inputs]), one.inputs)
    workers = build(manifest, batch_size=5, num_workers=2)
    workers.train.set_epoch(1)
    assert all(torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
               for a, b in zip(whole, workers.train))


def test_a_clip_replaced_with_the_same_size_and_mtime_rebuilds_its_features(tmp_path):
    """The feature cache was keyed by each clip's size and mtime: a clip rewritten and given its
    old mtime back was served its old features."""
    import os

    manifest = make_phoneme_corpus(tmp_path / "c")
    first = build(manifest)
    row = json.loads(manifest.read_text(encoding="utf-8").splitlines()[-1])
    clip = manifest.parent / row["audio"]
    stat = clip.stat()
    wave, rate = soundfile.read(clip, dtype="float32")
    soundfile.write(clip, np.ascontiguousarray(wave[::-1]), rate, subtype="PCM_16")
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert clip.stat().st_size == stat.st_size
    again = build(manifest)
    assert again.key != first.key
    assert not torch.equal(torch.cat([b.inputs.flatten() for b in first.test]),
                           torch.cat([b.inputs.flatten() for b in again.test]))


def test_an_edit_of_the_feature_code_rebuilds_the_features(tmp_path, monkeypatch):
    from kdlab.data import phonemes

    manifest = make_phoneme_corpus(tmp_path / "c")
    first = build(manifest)
    monkeypatch.setattr(phonemes, "feature_code_digest", lambda: "edited")
    assert build(manifest).key != first.key
    assert len(list((manifest.parent / ".kdlab_features").glob("*.pt"))) == 2
