"""A damaged or unsafe weights file in an ``hf_dir`` (kdlab.models.hf_files) is one error naming
the file, for a causal LM teacher and for a wav2vec2 teacher; a pickle that would run code is
refused without running it; plain tensors in a ``.bin`` still load."""

from __future__ import annotations

import json
import os
import pickle

import attrs
import pytest
import torch

from kdlab.engine.errors import KdlabError
from kdlab.models import transformer_lm, wav2vec2_ctc


@attrs.frozen
class _Data:
    num_classes: int = 50
    input_shape: tuple = (16,)


class _RunsCode:
    """A pickle whose loading would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def _damage(directory, how, tmp_path):
    weights = directory / "model.safetensors"
    if how == "garbage":
        weights.write_bytes(os.urandom(4096))
    elif how == "truncated":  # a copy cut off: the header promises more than is there
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) - 100])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "pickle":
        weights.unlink()
        with open(directory / "pytorch_model.bin", "wb") as f:
            pickle.dump(_RunsCode(tmp_path / "ran"), f)
    return directory / ("pytorch_model.bin" if how == "pickle" else "model.safetensors")


def _gpt2(tmp_path):
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = tf.GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    model = tf.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "lm")
    return tmp_path / "lm", model


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "pickle"])
def test_a_damaged_or_unsafe_lm_weights_file_is_one_line_naming_it(how, tmp_path):
    directory, _ = _gpt2(tmp_path)
    bad = _damage(directory, how, tmp_path)
    with pytest.raises(KdlabError, match=rf"model hf_dir = '{directory}': cannot load {bad}: ") as info:
        transformer_lm.build(transformer_lm.TransformerLMConfig(hf_dir=str(directory)), _Data())
    assert "\n" not in str(info.value)
    if how == "pickle":
        assert "could run code" in str(info.value)
        assert not (tmp_path / "ran").exists()  # refused before anything in it ran


def test_plain_tensors_in_a_bin_file_load_as_before(tmp_path):
    directory, model = _gpt2(tmp_path)
    (directory / "model.safetensors").unlink()
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    loaded = transformer_lm.build(transformer_lm.TransformerLMConfig(hf_dir=str(directory)), _Data())
    tokens = torch.randint(0, 50, (1, 12))
    with torch.no_grad():
        assert torch.allclose(loaded.train(False)(tokens), model.train(False)(input_ids=tokens).logits, atol=1e-5)


@pytest.mark.parametrize("how", ["truncated", "pickle"])
def test_a_damaged_wav2vec2_weights_file_is_one_line_naming_it(how, tmp_path):
    tf = pytest.importorskip("transformers")
    config = tf.Wav2Vec2Config(
        vocab_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0)
    tf.Wav2Vec2ForCTC(config).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.json").write_text(json.dumps({"<pad>": 0, "a": 1, "b": 2, "|": 3}))
    bad = _damage(tmp_path / "hf", how, tmp_path)
    with pytest.raises(KdlabError, match=rf"model.hf_dir: cannot load {bad}: "):
        wav2vec2_ctc.wav2vec2_from_hf(str(tmp_path / "hf"), ("<blank>", "a", "b"))
    assert not (tmp_path / "ran").exists()
