"""conv_lm and transformer_lm: causality, the conv receptive field, the Hugging Face directory
round trip."""

from __future__ import annotations

import pytest
import torch

from kdlab.engine.errors import KdlabError
from kdlab.engine.types import DataBundle
from kdlab.models import conv_lm, transformer_lm


def _data(vocab: int = 50, seq_len: int = 24) -> DataBundle:
    return DataBundle(train=None, val=None, test=None, num_classes=vocab, input_shape=(seq_len,))


def _changed_positions(model, tokens: torch.Tensor, at: int) -> torch.Tensor:
    """Positions whose logits change when the token at ``at`` changes."""
    model.train(False)
    other = tokens.clone()
    other[0, at] = (other[0, at] + 1) % 50
    with torch.no_grad():
        diff = (model(tokens) - model(other)).abs().amax(-1)[0]
    return (diff > 1e-6).nonzero().flatten()


@pytest.mark.parametrize(("rf", "layers"), [(9, 4), (16, 4), (5, 2), (7, 3)])
def test_conv_lm_sees_exactly_its_receptive_field(rf, layers):
    assert 1 + sum(k - 1 for k in conv_lm.kernel_sizes(rf, layers)) == rf
    torch.manual_seed(0)
    model = conv_lm.build(conv_lm.ConvLMConfig(width=16, layers=layers, receptive_field=rf, dropout=0.0), _data())
    tokens = torch.randint(0, 50, (1, 24))
    changed = _changed_positions(model, tokens, 5)
    assert changed.tolist() == list(range(5, min(24, 5 + rf)))  # itself and the rf - 1 tokens after it


def test_conv_lm_receptive_field_below_layers_is_refused():
    with pytest.raises(ValueError, match="receptive_field must be >= layers \\+ 1"):
        conv_lm.ConvLMConfig(layers=4, receptive_field=4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_transformer_lm_is_causal_and_sees_the_whole_context(family):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformer_lm.build(transformer_lm.TransformerLMConfig(family=family, layers=2, width=16, heads=2), _data())
    tokens = torch.randint(0, 50, (1, 24))
    assert model(tokens).shape == (1, 24, 50)
    assert _changed_positions(model, tokens, 3).tolist() == list(range(3, 24))


def test_hf_directory_round_trip_resizes_and_cuts_the_vocabulary(tmp_path):
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = tf.LlamaForCausalLM(transformer_lm.hf_config(
        transformer_lm.TransformerLMConfig(layers=1, width=16, heads=2), vocab=50, context=32))
    hf.save_pretrained(tmp_path / "tiny")
    tokens = torch.randint(0, 50, (2, 24))
    with torch.no_grad():
        expected = hf(input_ids=tokens).logits
        same = transformer_lm.build(transformer_lm.TransformerLMConfig(hf_dir=str(tmp_path / "tiny")), _data(50))
        assert torch.allclose(same.train(False)(tokens), expected, atol=1e-5)
        # a data vocabulary with added special tokens: the embeddings grow, old logits unchanged
        grown = transformer_lm.build(transformer_lm.TransformerLMConfig(hf_dir=str(tmp_path / "tiny")), _data(54))
        assert grown.train(False)(tokens).shape[-1] == 54
        # a padded model vocabulary: the logits are cut to the data's
        cut = transformer_lm.build(transformer_lm.TransformerLMConfig(hf_dir=str(tmp_path / "tiny")), _data(40))
        assert torch.allclose(cut.train(False)(tokens % 40), hf(input_ids=tokens % 40).logits[..., :40], atol=1e-5)
    with pytest.raises(KdlabError, match="fewer than data.seq_len = 64"):
        transformer_lm.build(transformer_lm.TransformerLMConfig(hf_dir=str(tmp_path / "tiny")), _data(50, 64))
    with pytest.raises(KdlabError, match=r"model hf_dir = .*missing.: cannot load .*missing"):
        transformer_lm.build(transformer_lm.TransformerLMConfig(hf_dir=str(tmp_path / "missing")), _data())


def test_a_hugging_face_directory_is_a_teacher_through_a_stage_of_zero_epochs(tmp_path, catalogue):
    """A causal LM saved by ``save_pretrained`` with its tokenizer.json: the data uses its
    tokeniser, a zero-epoch stage imports it (evaluated, exported), a student distils from it."""
    tf = pytest.importorskip("transformers")
    from kdlab.data import text
    from kdlab.engine import checkpoint
    from kdlab.engine.runner import run
    from tests.data.test_text import make_dialogues

    corpus = make_dialogues(tmp_path / "corpus")
    tok = text.train_bpe([t["text"] for d in text.read_dialogues(corpus / "train.jsonl") for t in d["turns"]], 320)
    hf_dir = tmp_path / "hf"
    torch.manual_seed(0)
    hf = tf.LlamaForCausalLM(transformer_lm.hf_config(transformer_lm.TransformerLMConfig(layers=1, width=16, heads=2),
                                                      vocab=tok.get_vocab_size(with_added_tokens=True), context=64))
    hf.save_pretrained(hf_dir)
    tok.save(str(hf_dir / "tokenizer.json"))
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
name = "hf"
device = "cpu"
[data]
dataset = "text"
dir = "{corpus}"
tokenizer = "{hf_dir}"
seq_len = 64
batch_size = 16
[plugins.progress]
enabled = false
[plugins.lm_metrics]
dialogues = 2
candidates = 2
max_new_tokens = 2
[stages.teacher]
model = {{ arch = "transformer_lm", hf_dir = "{hf_dir}" }}
epochs = 0
methods.lm = {{}}
[stages.student]
model = {{ arch = "conv_lm", width = 16, layers = 2, receptive_field = 5 }}
epochs = 1
teachers = ["teacher"]
methods.lm = {{}}
methods.token_kd = {{}}
""")
    result = run(recipe, out=tmp_path / "runs", catalogue=catalogue)
    exported = checkpoint.load_model_file(result.run_dir / "models" / "teacher.pt")["state_dict"]
    assert all(torch.equal(exported[f"hf.{k}"], v) for k, v in hf.state_dict().items())
    assert result.metrics["teacher"]["test/perplexity"] > 1 and result.metrics["student"]["test/perplexity"] > 1


@pytest.mark.parametrize("family", ["conv", "llama", "gpt2"])
def test_a_language_model_without_its_head_gives_hidden_states_whose_logits_are_its_own(family):
    torch.manual_seed(0)
    if family == "conv":
        model = conv_lm.build(conv_lm.ConvLMConfig(width=16, layers=2, receptive_field=5, dropout=0.0), _data())
    else:
        pytest.importorskip("transformers")
        model = transformer_lm.build(transformer_lm.TransformerLMConfig(family=family, layers=1, width=16, heads=2),
                                     _data())
    model.train(False)
    assert model.splits_head
    tokens = torch.randint(0, 50, (2, 24))
    split = model(tokens, head=False)
    assert split.hidden.shape == (2, 24, 16) and split.weight.shape == (50, 16)
    torch.testing.assert_close(split.logits(), model(tokens), rtol=1e-5, atol=1e-5)
    split.logits().sum().backward()  # the head's weight is in the graph
    assert model.hf.get_output_embeddings().weight.grad is not None if family != "conv" else model.head.weight.grad is not None
