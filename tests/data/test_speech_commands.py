"""The Speech Commands loader on a tiny folder in the real layout, written here."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from kdlab import KdlabError
from kdlab.data.speech_commands import SpeechCommandsConfig, build as build_speech_commands
from tests.conftest import rank_shares

WORDS = {"sheila": 6, "yes": 6, "marvin": 6}


def make_speech_commands(root, rate=16000, words=WORDS, seed=0):
    """``root/<word>/<spk>_nohash_<n>.wav`` (tones of a word-specific pitch, some shorter than
    1 s), split lists, and one background-noise file."""
    rng = np.random.default_rng(seed)
    val, test = [], []
    for w, (word, count) in enumerate(words.items()):
        (root / word).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            n = rate if i % 2 == 0 else rate // 2
            t = np.arange(n) / rate
            wave = 0.3 * np.sin(2 * np.pi * (300 + 400 * w) * t) + 0.01 * rng.standard_normal(n)
            name = f"{word}/spk{i % 3}_nohash_{i}.wav"
            soundfile.write(root / name, wave.astype(np.float32), rate, subtype="PCM_16")
            (val if i % 3 == 1 else test if i % 3 == 2 else []).append(name)
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "_background_noise_").mkdir(exist_ok=True)
    soundfile.write(root / "_background_noise_" / "white_noise.wav",
                    (0.1 * rng.standard_normal(3 * rate)).astype(np.float32), rate, subtype="PCM_16")
    return root


def build(root, **settings):
    config = SpeechCommandsConfig(root=str(root), **{"batch_size": 4, "eval_batch_size": 5, **settings})
    return build_speech_commands(config, seed=0)


def test_splits_labels_and_features(tmp_path):
    data = build(make_speech_commands(tmp_path / "sc"))
    assert data.num_classes == 2 and data.input_shape == (40, 98)
    assert (data.train.num_samples, data.val.num_samples, data.test.num_samples) == (6, 6, 6)
    test = list(data.test)
    x = torch.cat([b.inputs for b in test])
    y = torch.cat([b.targets for b in test])
    assert x.shape == (6, 40, 98) and torch.isfinite(x).all()
    assert y.tolist().count(1) == 2  # two "sheila" clips in the test list, the rest negative
    assert data.augmented
    # zero-padded half-second clips: the second half of their frames is near the log floor
    paths = data.test.clips.paths
    short = [i for i, p in enumerate(paths) if int(p.split("_")[-1].split(".")[0]) % 2 == 1]
    assert x[short[0], :, -20:].max() < x[short[0], :, :20].max() - 5


def test_training_augmentation_is_a_function_of_seed_and_epoch(tmp_path):
    data = build(make_speech_commands(tmp_path / "sc"))
    first = [b.inputs for b in data.train]
    torch.manual_seed(0)
    data.train.set_epoch(0)
    again = [b.inputs for b in data.train]
    torch.manual_seed(0)
    data.train.set_epoch(0)
    again2 = [b.inputs for b in data.train]
    assert all(torch.equal(a, b) for a, b in zip(again, again2))
    data.train.set_epoch(1)
    assert not all(torch.equal(a, b.inputs) for a, b in zip(first, list(data.train)))
    clean = build(tmp_path / "sc", augment=False)
    assert not clean.augmented


@pytest.mark.parametrize("problem", ["rate", "long", "no_list", "keyword"])
def test_bad_inputs_are_clear_errors(tmp_path, problem):
    root = make_speech_commands(tmp_path / "sc")
    settings = {}
    if problem == "rate":
        soundfile.write(root / "yes" / "bad_nohash_0.wav", np.zeros(8000, np.float32), 8000)
        match = r"bad_nohash_0.wav: sample rate 8000 Hz, expected 16000 Hz"
    elif problem == "long":
        soundfile.write(root / "yes" / "long_nohash_0.wav", np.zeros(20000, np.float32), 16000)
        match = r"long_nohash_0.wav: 1.250 s long, longer than data.clip_seconds = 1.0"
    elif problem == "no_list":
        (root / "testing_list.txt").unlink()
        match = r"testing_list.txt is missing"
    else:
        settings = {"keyword": "house"}
        match = r"data.keyword: no folder 'house' .* words there: marvin, sheila, yes"
    with pytest.raises(KdlabError, match=match):
        build(root, **settings)


def test_a_split_list_that_is_not_utf8_names_the_file(tmp_path):
    from kdlab import KdlabError
    from kdlab.data.speech_commands import read_split_list

    (tmp_path / "testing_list.txt").write_bytes(b"yes/caf\xe9_nohash_0.wav\n")
    with pytest.raises(KdlabError, match=r"testing_list.txt:1: not UTF-8 text"):
        read_split_list(tmp_path, "testing_list.txt")


def test_worker_processes_and_two_ranks_make_the_batches_of_the_main_process(tmp_path):
    """Augmented training batches are a function of (seed, epoch, batch), drawn for the global
    batch: made in two worker processes they equal those made in the main process, and two ranks'
    shares put together equal the one-process batch (volume, noise and SpecAugment included)."""
    root = make_speech_commands(tmp_path / "sc", words={"sheila": 10, "yes": 10})
    main = build(root, batch_size=5)
    workers = build(root, batch_size=5, num_workers=2)
    for epoch in (0, 1):
        main.train.set_epoch(epoch)
        workers.train.set_epoch(epoch)
        mine, theirs = list(main.train), list(workers.train)
        assert len(mine) == len(theirs) > 1
        assert all(torch.equal(a.inputs, b.inputs) and torch.equal(a.index, b.index) for a, b in zip(mine, theirs))
    main.train.set_epoch(1)
    whole = list(main.train)
    shares = rank_shares(lambda: build(root, batch_size=5), epoch=1)
    assert len(whole[0].index) == 5 and len(shares[0][0].index) == 3  # uneven shares
    for one, a, b in zip(whole, *shares):
        assert torch.equal(torch.cat([a.inputs, b.inputs]), one.inputs)
