"""LoRA students through peft (issue #30 item 3): only the adapters train (the base frozen, the
teacher frozen), with the token methods and the compact store together; a resumed run ends with
the weights of an uninterrupted one; the export merged (a plain transformers model) or as the
adapter alone (peft), both giving kdlab's logits; without peft, the error names the extra."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

RECIPE = """
name = "lora"
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
epochs = 1
model = {{ arch = "conv_lm", width = 16, layers = 1, receptive_field = 2, dropout = 0.0 }}
methods.lm = {{}}
[stages.student]
epochs = 2
teachers = ["teacher"]
model = {{ arch = "transformer_lm", hf_dir = "{base}", lora = {{ r = 4, alpha = 8 }} }}
methods.lm = {{}}
methods.token_kd = {{}}
methods.teacher_cache = {{ topk = 8, compact = true, dir = "{cache}" }}
"""


def test_a_lora_student_trains_its_adapters_alone_resumes_exactly_and_exports_merged_or_as_an_adapter(tmp_path):
    from kdlab.cli import main
    from kdlab.data.word_corpus import generate
    from kdlab.engine.registry import discover
    from kdlab.engine.runner import run
    from kdlab.engine.loop import rebuild_exported as load_exported
    from tests.methods.test_lm_distillation import _CountSteps, _StopAfterFirstEpoch

    root = generate(tmp_path / "corpus", 300, {"train": 8 * 16 + 1, "val": 4 * 16 + 1, "test": 4 * 16 + 1})
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(str(tmp_path / "base"))
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")).state_dict()
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(root=root, base=tmp_path / "base", cache=tmp_path / "cache"))

    straight = run(recipe, out=tmp_path / "runs", run_id="straight", catalogue=discover())
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=tmp_path / "runs", run_id="resumed", catalogue=discover(extra={"_stop": _StopAfterFirstEpoch}))
    _CountSteps.steps = 0
    resumed = run(recipe, out=tmp_path / "runs", run_id="resumed", catalogue=discover(extra={"_count": _CountSteps}))
    assert _CountSteps.steps == 2  # the second epoch only
    a = torch.load(straight.run_dir / "models/student.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed.run_dir / "models/student.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    adapters = [k for k in a if "lora_" in k]
    assert adapters and any(float(a[k].abs().max()) > 0 for k in adapters if "lora_B" in k)  # B starts at zero
    for key, value in base.items():  # every base weight as it was: only the adapters trained
        assert torch.equal(a["hf." + key.replace(".weight", ".base_layer.weight")]
                           if "hf." + key not in a else a["hf." + key], value), key

    tokens = torch.randint(1, 300, (2, 10))
    with torch.no_grad():
        ours = load_exported(straight.run_dir / "models/student.pt")(tokens)
    assert main(["export", str(straight.run_dir / "models/student.pt"), "--out", str(tmp_path / "merged")]) == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert not any("lora" in k for k in merged.state_dict())
    assert main(["export", str(straight.run_dir / "models/student.pt"), "--out", str(tmp_path / "adapter"),
                 "--adapter"]) == 0
    with_adapter = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")), str(tmp_path / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(merged(tokens).logits, ours, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(with_adapter(input_ids=tokens).logits, ours, rtol=1e-4, atol=1e-5)


def test_without_peft_a_lora_model_names_the_extra(monkeypatch):
    import sys

    from kdlab import KdlabError
    from kdlab.models import transformer_lm

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(KdlabError, match=r"pip install 'kdlab\[lora\]'"):
        transformer_lm._with_lora(None, transformer_lm.LoraSettings())
