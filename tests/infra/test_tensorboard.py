from __future__ import annotations

import math

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdlab.engine.runner import run
from kdlab.data.vision import DigitsConfig, load_digits_tensors


def test_every_loss_term_and_metric_is_logged(write_recipe, tmp_path, catalogue):
    text = open(write_recipe()).read().replace("[plugins.progress]", "[plugins.tensorboard]\nlog_every = 1\n\n[plugins.progress]")
    result = run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)
    acc = EventAccumulator(str(result.run_dir / "tb" / "student"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/total", "loss/kd", "loss/ce", "lr", "val/accuracy", "val/loss"} <= tags
    steps = [e.step for e in acc.Scalars("loss/kd")]
    (xtr, _), _, _ = load_digits_tensors(DigitsConfig())
    assert steps == list(range(1, 2 * math.ceil(len(xtr) / 64) + 1))  # every step of 2 epochs
    assert "recipe/text_summary" in acc.Tags()["tensors"]
    hp = EventAccumulator(str(result.run_dir / "tb" / "student"))
    hp.Reload()
    assert any("final/test/accuracy" in t for t in hp.Tags()["scalars"])
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = hp.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams["seed"].number_value == 0 and info.hparams["data.batch_size"].number_value == 64
    assert info.hparams["methods.logit_kd.temperature"].number_value == 4.0
