"""fp16_export: the float16 copy of a sequence (CTC) model is exported with its class names and
evaluates in float16."""

from __future__ import annotations

import copy
import textwrap

import torch

from kdlab import Batch
from kdlab.engine import checkpoint
from kdlab.engine.runner import run
from kdlab.infra.fp16_export import HalfModel
from kdlab.models.conformer_ctc import ConformerConfig, ConformerCTC
from tests.data.test_phonemes import INVENTORY, make_phoneme_corpus


def test_half_model_runs_a_sequence_model_in_float16():
    torch.manual_seed(0)
    model = ConformerCTC(ConformerConfig(dim=8, heads=2, ffn=8, subsample_channels=2, layers=1), 80, 6).eval()
    feats = torch.randn(2, 50, 80)
    batch = Batch(feats, torch.zeros(2, 3, dtype=torch.long), torch.arange(2), {"input_lengths": torch.tensor([50, 31])})
    with torch.no_grad():
        full, n_full = model.forward_batch(batch)
        half, n_half = HalfModel(copy.deepcopy(model)).forward_batch(batch)
    assert half.dtype == torch.float32 and torch.equal(n_full, n_half)
    assert torch.allclose(full, half, atol=0.05) and not torch.equal(full, half)  # fp16 arithmetic, close


def test_fp16_export_of_a_ctc_student(tmp_path, catalogue):
    manifest = make_phoneme_corpus(tmp_path / "c")
    recipe = tmp_path / "r.toml"
    recipe.write_text(textwrap.dedent(f"""
        device = "cpu"
        [data]
        dataset = "phonemes"
        manifest = "{manifest}"
        batch_size = 3
        [plugins.progress]
        enabled = false
        [stages.s]
        epochs = 1
        model = {{ arch = "conformer_ctc", dim = 8, heads = 2, ffn = 8, subsample_channels = 2, layers = 1 }}
        methods.ctc = {{}}
        methods.fp16_export = {{}}
        monitor = "val/per"
        monitor_mode = "min"
    """))
    result = run(recipe, out=tmp_path / "runs", catalogue=catalogue)
    m = result.metrics["s"]
    assert {"val/fp16_per", "test/fp16_per"} <= set(m) and m["bytes_fp16"] < m["bytes"]
    half = checkpoint.load_model_file(result.run_dir / "models" / "s.fp16.pt")
    assert half["classes"] == ["<blank>", *INVENTORY]
    assert all(t.dtype == torch.float16 for t in half["state_dict"].values() if t.is_floating_point())
