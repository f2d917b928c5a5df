"""Real model families end to end (issue #30 item 1): tiny random Llama, Qwen2, Qwen3 and GPT-2
models written with ``save_pretrained`` at real vocabulary sizes, one distilled into another
through ``hf_dir``; the student exported by ``kdlab export`` as a transformers directory that
``AutoModelForCausalLM`` and ``AutoTokenizer`` read and that generates the tokens kdlab's own
loop generates; a model directory carrying another tokenizer (of the same size) refused."""

from __future__ import annotations

import json

import pytest
import torch

from kdlab.cli import main
from kdlab.data.word_corpus import generate

transformers = pytest.importorskip("transformers")

RECIPE = """
name = "families"
seed = 0
device = "cpu"
[data]
dataset = "text"
dir = "{root}"
tokenizer = "{root}/tokenizer.json"
seq_len = 16
batch_size = 4
eval_batch_size = 8
[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[defaults]
optimizer = {{ name = "adam", lr = 0.01 }}
[stages.teacher]
epochs = 0
model = {{ arch = "transformer_lm", hf_dir = "{teacher}" }}
methods.lm = {{}}
[stages.student]
epochs = 1
teachers = ["teacher"]
model = {{ arch = "transformer_lm", hf_dir = "{student}" }}
methods.lm = {{}}
methods.token_kd = {{}}
"""


def save_tiny(family: str, path, vocab: int, seed: int) -> None:
    """A random one-layer model of ``family`` (``save_pretrained``: a real model directory)."""
    common = dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False)
    config = {"llama": lambda: transformers.LlamaConfig(**common),
              "qwen2": lambda: transformers.Qwen2Config(**common),
              "qwen3": lambda: transformers.Qwen3Config(**common, head_dim=8),
              "gpt2": lambda: transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=16, n_layer=1,
                                                      n_head=2)}[family]()
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(str(path))
    assert json.loads((path / "config.json").read_text())["model_type"] == family


@pytest.mark.parametrize("teacher, student, vocab", [("qwen3", "gpt2", 50_257), ("qwen2", "llama", 151_936),
                                                     ("llama", "qwen3", 50_257)])
def test_a_family_distils_into_another_and_leaves_as_a_transformers_directory(tmp_path, capsys, teacher, student,
                                                                              vocab):
    from kdlab.data.text import END, PAD, load_tokenizer
    from kdlab.models.generation import generate as kdlab_generate
    from kdlab.engine.loop import rebuild_exported as load_exported

    root = generate(tmp_path / "corpus", vocab, {"train": 8 * 16 + 1, "val": 4 * 16 + 1, "test": 4 * 16 + 1})
    save_tiny(teacher, tmp_path / "teacher", vocab, 0)
    save_tiny(student, tmp_path / "student", vocab, 1)
    # the teacher carries the data's tokenizer: compared by content, equal
    (tmp_path / "teacher" / "tokenizer.json").write_text((root / "tokenizer.json").read_text())
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(root=root, teacher=tmp_path / "teacher", student=tmp_path / "student"))
    assert main(["run", str(recipe), "--out", str(tmp_path / "runs"), "--run-id", "r"]) == 0
    run_dir = tmp_path / "runs/families/r"
    before = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "student")).state_dict()
    kdlab_model = load_exported(run_dir / "models/student.pt")
    trained = kdlab_model.hf.state_dict()
    assert any(not torch.equal(before[k], trained[k]) for k in before)  # the student trained

    out = tmp_path / "exported"
    assert main(["export", str(run_dir / "models/student.pt"), "--out", str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    # transformers' AutoTokenizer gives a Qwen-typed directory its own Qwen2Tokenizer, which rebuilds a
    # BPE from the vocabulary (another pre-tokeniser; a word-level tokenizer encodes to nothing);
    # PreTrainedTokenizerFast reads the exported tokenizer.json as it is (the README says so)
    loader = transformers.PreTrainedTokenizerFast if student.startswith("qwen") else transformers.AutoTokenizer
    tok = loader.from_pretrained(str(out), local_files_only=True)
    assert hf.config.model_type == student and len(tok) == vocab
    data_tok = load_tokenizer(str(root / "tokenizer.json"))
    line = (root / "test.txt").read_text().split("\n")[0]
    assert tok(line)["input_ids"] == data_tok.encode(line).ids

    prompt = torch.tensor([data_tok.encode(line).ids[:6]])
    with torch.no_grad():
        torch.testing.assert_close(hf(prompt).logits, kdlab_model(prompt), rtol=1e-5, atol=1e-5)
        ours = kdlab_generate(kdlab_model, torch.cat([prompt, torch.zeros(1, 8, dtype=torch.long)], 1),
                              torch.tensor([6]), max_new_tokens=8, end_id=data_tok.token_to_id(END),
                              pad_id=data_tok.token_to_id(PAD))
        theirs = hf.generate(prompt, max_new_tokens=8)  # the exported generation settings: greedy
    n = theirs.shape[1]
    assert theirs[0].tolist() == ours[0, :n].tolist()
    assert n > 6


def test_a_model_directory_with_another_tokenizer_of_the_same_size_is_refused(tmp_path, capsys):
    root = generate(tmp_path / "corpus", 300, {"train": 8 * 16 + 1, "val": 4 * 16 + 1, "test": 4 * 16 + 1})
    save_tiny("llama", tmp_path / "teacher", 300, 0)
    save_tiny("llama", tmp_path / "student", 300, 1)
    spec = json.loads((root / "tokenizer.json").read_text())
    words = spec["model"]["vocab"]
    words["w10"], words["w11"] = words["w11"], words["w10"]  # two words swapped: the same size, other ids
    (tmp_path / "teacher" / "tokenizer.json").write_text(json.dumps(spec))
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(root=root, teacher=tmp_path / "teacher", student=tmp_path / "student"))
    # the teacher's own stage: it trains nothing, but a model's ids must mean the data's text
    assert main(["run", str(recipe), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "stages.teacher.model.hf_dir: its tokenizer" in err
    assert "300 and 300 tokens, 2 of the first missing or at other ids in the second" in err
