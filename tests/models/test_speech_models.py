import json

import pytest
import torch

from kdlab import KdlabError
from kdlab.engine.recipe import CONVERTER
from kdlab.engine.types import DataBundle, ModelSpec
from kdlab.models import wav2vec2_ctc
from kdlab.models.conformer_ctc import ConformerCTC, ConformerConfig
from kdlab.models.wav2vec2_ctc import Wav2Vec2Config, Wav2Vec2CTC, wav2vec2_from_scratch
from kdlab.data.features import LogMel


def _data(classes=("<blank>", "a", "b", "i")):
    return DataBundle(train=None, val=None, test=None, num_classes=len(classes), input_shape=(100, 80), classes=classes)


@pytest.mark.parametrize("samples", [16000, 12345, 40000, 8000])
def test_teacher_and_student_frame_rates_match(samples):
    torch.manual_seed(0)
    teacher = Wav2Vec2CTC(wav2vec2_from_scratch(Wav2Vec2Config(conv_dim=8, dim=16, layers=1, heads=2, ffn=16), 5)).eval()
    student = ConformerCTC(ConformerConfig(dim=16, layers=1, heads=2, ffn=16, subsample_channels=4), 80, 5).eval()
    wave = torch.randn(2, samples)
    wave_lengths = torch.tensor([samples, samples - 3000])
    feats = LogMel(n_mels=80)(wave).transpose(1, 2)
    feat_lengths = torch.tensor([LogMel().frames(int(n)) for n in wave_lengths])
    with torch.no_grad():
        t_logits, t_len = teacher(wave, wave_lengths)
        s_logits, s_len = student(feats, feat_lengths)
    # both at 20 ms: equal lengths (the KD strategies still truncate to the shorter, see test_ctc)
    assert t_len.tolist() == s_len.tolist()
    assert t_logits.shape[1] == s_logits.shape[1]
    assert abs(int(t_len[0]) - samples / 320) <= 1.5


def test_teacher_output_does_not_depend_on_batch_padding():
    torch.manual_seed(0)
    teacher = Wav2Vec2CTC(wav2vec2_from_scratch(Wav2Vec2Config(conv_dim=8, dim=16, layers=1, heads=2, ffn=16), 5)).eval()
    wave = torch.randn(1, 9000)
    padded = torch.cat([wave, torch.zeros(1, 7000)], dim=1)
    with torch.no_grad():
        alone, n = teacher(wave, torch.tensor([9000]))
        batched, m = teacher(padded, torch.tensor([9000]))
    assert n.tolist() == m.tolist()
    assert torch.allclose(alone[0, : n[0]], batched[0, : n[0]], atol=1e-4)


@pytest.mark.parametrize("recipe", ["ru_phonemes_ctc_kd.toml", "ru_phonemes_ctc_kd_wav2vec2.toml"])
def test_the_phoneme_recipes_teachers_are_at_least_5x_the_student(recipe, catalogue):
    from pathlib import Path

    from kdlab.engine.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / recipe, catalogue)
    data = _data(tuple(["<blank>"] + [str(i) for i in range(48)]))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    build = lambda spec: catalogue.models[spec.arch].build(spec.config, data)  # noqa: E731
    teacher = build(recipe.stages["teacher"].model)
    student = build(recipe.stages["student_ctc"].model)
    assert count(teacher) >= 5 * count(student)


def test_hugging_face_teacher_with_vocabulary_mapping(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Wav2Vec2Config(
        vocab_size=6, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0, do_stable_layer_norm=False)
    torch.manual_seed(0)
    hf = transformers.Wav2Vec2ForCTC(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    vocab = {"<pad>": 0, "i": 1, "x": 2, "a": 3, "b": 4, "|": 5}
    (tmp_path / "hf" / "vocab.json").write_text(json.dumps(vocab))
    spec = ModelSpec(arch="wav2vec2_ctc", config=CONVERTER.structure({"hf_dir": str(tmp_path / "hf")}, Wav2Vec2Config))
    model = wav2vec2_ctc.build(spec.config, _data()).eval()
    wave = torch.randn(1, 16000)
    with torch.no_grad():
        ours, _ = model(wave)
        theirs = hf((wave - wave.mean()) / (wave.std(unbiased=False) + 1e-5)).logits
    # our classes (<blank>, a, b, i) are the model's rows (<pad>, a, b, i) = (0, 3, 4, 1)
    assert torch.allclose(ours, theirs[..., [0, 3, 4, 1]], atol=1e-4)
    with pytest.raises(KdlabError, match="lacks the corpus phonemes o"):
        wav2vec2_ctc.build(spec.config, _data(("<blank>", "a", "o")))


def test_conformer_takes_a_clip_longer_than_its_position_table():
    model = ConformerCTC(ConformerConfig(dim=8, heads=2, layers=1, ffn=8, subsample_channels=4), 16, 5).train(False)
    model.positions.pe = model.positions.pe[:50]  # as if 50 frames were the longest seen so far
    frames = torch.randn(1, 300, 16)  # 150 frames after subsampling
    with torch.no_grad():
        logits, lengths = model(frames, torch.tensor([300]))
    assert logits.shape[1] == 150 and torch.isfinite(logits).all()


@pytest.mark.parametrize("content", ["missing", "empty", "bad vocab"])
def test_a_bad_hf_dir_is_one_clear_error(tmp_path, content):
    pytest.importorskip("transformers")
    path = tmp_path / "hf"
    if content != "missing":
        path.mkdir()
    if content == "bad vocab":
        (path / "vocab.json").write_text("[1, 2]")
    elif content == "empty":
        (path / "vocab.json").write_text('{"a": 1}')
    with pytest.raises(KdlabError, match=r"model.hf_dir: "):
        wav2vec2_ctc.wav2vec2_from_hf(str(path), ("<blank>", "a"))
