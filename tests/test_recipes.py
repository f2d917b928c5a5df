"""The shipped recipes: each runs a smoke step on small files in the real data format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdlab.engine.recipe import load_recipe
from kdlab.engine.runner import run
from tests.data.test_vision import make_cifar

ROOT = Path(__file__).resolve().parents[1]
# tiny data, one epoch, a couple of steps, the CPU, no AMP (bf16 ResNet-50 on a CPU is slow)
SMOKE = ["defaults.epochs=1", "device=\"cpu\"", "data.val_size=4", "data.batch_size=8", "data.eval_batch_size=8",
         "data.train_limit=16", "data.num_workers=0", "defaults.optimizer.lr=0.001", "defaults.methods.amp.enabled=false",
         "plugins.progress.enabled=false"]


@pytest.mark.parametrize(("recipe", "hundred"), [("cifar100_geometry.toml", True), ("cifar10_multiteacher.toml", False)])
def test_cifar_recipe_smoke(recipe, hundred, tmp_path, catalogue):
    make_cifar(tmp_path / "data", hundred=hundred)
    result = run(ROOT / "recipes" / recipe, overrides=[*SMOKE, f"data.root={tmp_path / 'data'}", "data.verify=false"],
                 out=tmp_path / "runs", catalogue=catalogue)
    assert list(result.metrics) == list(load_recipe(ROOT / "recipes" / recipe, catalogue).stages)  # every stage ran
    for stage, metrics in result.metrics.items():
        # 6 test images: an accuracy counted on them, and a finite loss
        assert metrics["test/accuracy"] * 6 == pytest.approx(round(metrics["test/accuracy"] * 6), abs=1e-5), stage
        assert math.isfinite(metrics["test/loss"]), stage
        history = (result.run_dir / "history" / f"{stage}.jsonl").read_text().splitlines()
        assert len(history) == 1 and (result.run_dir / "models" / f"{stage}.pt").is_file(), stage
    if hundred:
        assert {"test/geometry_preservation", "test/cka", "test/top5"} <= set(result.metrics["geometry"])


def test_kws_recipe_smoke(tmp_path, catalogue):
    from kdlab.engine import checkpoint
    from tests.data.test_speech_commands import make_speech_commands

    make_speech_commands(tmp_path / "sc")
    overrides = ["defaults.epochs=1", "device=\"cpu\"", f"data.root={tmp_path / 'sc'}", "data.batch_size=4",
                 "plugins.progress.enabled=false"]
    result = run(ROOT / "recipes" / "kws_compress.toml", overrides=overrides, out=tmp_path / "runs",
                 catalogue=catalogue)
    m = result.metrics
    assert list(m) == list(load_recipe(ROOT / "recipes" / "kws_compress.toml", catalogue).stages)
    for stage, metrics in m.items():
        assert math.isfinite(metrics["test/au_fa_fr"]) and (result.run_dir / "models" / f"{stage}.pt").is_file(), stage
        # compression ratios against the teacher, from the same run's counts
        assert metrics["macs_ratio"] == pytest.approx(m["teacher"]["macs"] / metrics["macs"]), stage
        assert metrics["bytes_ratio"] == pytest.approx(m["teacher"]["bytes"] / metrics["bytes"]), stage
    assert m["teacher"]["macs_ratio"] == 1.0
    fp16 = m["tiny_fp16"]
    assert fp16["bytes_fp16"] < 0.7 * fp16["bytes"]
    assert fp16["bytes_fp16_ratio"] > 19  # seed 001's fp16 memory ratio was 19.2x
    assert 0 <= fp16["test/fp16_au_fa_fr"] <= 1
    half = checkpoint.load_model_file(result.run_dir / "models" / "tiny_fp16.fp16.pt")
    assert all(t.dtype == torch.float16 for t in half["state_dict"].values() if t.is_floating_point())


@pytest.mark.parametrize("recipe, teacher_sizes", [
    ("ru_phonemes_ctc_kd.toml", ["stages.teacher.model.subsample_channels=2"]),  # Conformer teacher on log-mel
    ("ru_phonemes_ctc_kd_wav2vec2.toml", ["stages.teacher.model.conv_dim=8"]),  # wav2vec2 teacher on raw audio
])
def test_ru_phonemes_recipe_smoke(recipe, teacher_sizes, tmp_path, catalogue, capsys):
    from tests.data.test_phonemes import make_phoneme_corpus

    manifest = make_phoneme_corpus(tmp_path / "corpus")
    overrides = ["defaults.epochs=1", "device=\"cpu\"", f"data.manifest={manifest}", "data.batch_size=3",
                 "plugins.progress.enabled=false", "plugins.per.beam_size=2",
                 "stages.teacher.epochs=1", *teacher_sizes, "stages.teacher.model.dim=16",
                 "stages.teacher.model.layers=1", "stages.teacher.model.heads=2", "stages.teacher.model.ffn=16",
                 "defaults.model.dim=8", "defaults.model.heads=2", "defaults.model.ffn=8",
                 "defaults.model.subsample_channels=2", "defaults.model.layers=1"]
    result = run(ROOT / "recipes" / recipe, overrides=overrides, out=tmp_path / "runs",
                 catalogue=catalogue)
    m = result.metrics
    assert list(m) == ["teacher", "student_ctc", "student_posterior_kd", "student_blank_filtered_kd",
                       "student_blank_weighted_kd"]
    for stage, metrics in m.items():
        assert 0 <= metrics["test/per"] and 0 <= metrics["test/beam_per"] and "val/per" in metrics, stage
    # kdlab transcribe: phonemes of the corpus's inventory, from the student and from the teacher
    from kdlab.cli import main
    from tests.data.test_phonemes import INVENTORY

    wavs = sorted(str(p) for p in (tmp_path / "corpus" / "clips").glob("test_*.wav"))
    for stage in ("student_ctc", "teacher"):
        assert main(["transcribe", str(result.run_dir / "models" / f"{stage}.pt"), *wavs, "--beam", "2"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [ln.split("\t")[0] for ln in lines] == wavs
        assert all(set(ln.split("\t")[1].split()) <= set(INVENTORY) for ln in lines)
    assert main(["transcribe", str(result.run_dir / "models" / "student_ctc.pt"), str(tmp_path / "missing.wav")]) == 2
    assert "missing.wav: no such audio file" in capsys.readouterr().err
    import numpy as np
    import soundfile

    nan_wave = np.zeros(16000, np.float32)
    nan_wave[-1] = np.inf
    soundfile.write(tmp_path / "inf.wav", nan_wave, 16000, subtype="FLOAT")
    assert main(["transcribe", str(result.run_dir / "models" / "student_ctc.pt"), str(tmp_path / "inf.wav")]) == 2
    assert "inf.wav: 1 samples are NaN or infinite" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.toml")))
def test_every_shipped_recipe_and_its_study_tables_validate(recipe, catalogue):
    import tomllib

    from kdlab.engine.recipe import load_recipe
    from kdlab.studies import search, sweep

    path = ROOT / "recipes" / recipe
    load_recipe(path, catalogue)
    tables = tomllib.loads(path.read_text())
    if "sweep" in tables:
        assert sweep.plan(path, catalogue).runs
    if "search" in tables:
        assert search.plan(path, catalogue).config.params


def test_dialogue_recipe_smoke(tmp_path, catalogue, capsys):
    """recipes/dialogue_kd.toml on a small generated corpus: every stage trains two steps and
    reports the language-model and dialogue metrics; the table printed after the run has them."""
    pytest.importorskip("transformers")
    from kdlab.cli import main
    from tests.data.test_text import make_dialogues

    corpus = make_dialogues(tmp_path / "dialogues", n=40)
    overrides = ["defaults.epochs=1", "stages.teacher.epochs=1", "device=\"cpu\"", f"data.dir={corpus}",
                 "data.train_limit=16", "data.batch_size=8", "data.eval_batch_size=8", "plugins.lm_metrics.dialogues=3",
                 "plugins.progress.enabled=false"]
    argv = ["run", str(ROOT / "recipes" / "dialogue_kd.toml"), "--out", str(tmp_path / "runs")]
    for o in overrides:
        argv += ["--set", o]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| student_gkd |" in table and "test/memory_recall" in table and "macs_per_token" in table
    metrics = json.loads(next((tmp_path / "runs").rglob("metrics.json")).read_text())
    assert len(metrics) == 11
    for stage, m in metrics.items():
        assert m["test/perplexity"] > 1 and 0 <= m["test/hits@1"] <= 1 and 0 <= m["test/token_f1"] <= 1, stage
    # at least 4x fewer parameters in the transformer student; the conv student is smaller still
    assert metrics["teacher"]["params"] >= 4 * metrics["student_lm"]["params"]
