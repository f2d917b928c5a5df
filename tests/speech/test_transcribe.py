"""kdlab transcribe (kdlab.speech.transcribe) on long audio: a ten-minute clip is transcribed in
one pass (more frames than the Conformer's precomputed position table holds)."""

from __future__ import annotations

import numpy as np
import soundfile
import torch

from kdlab.cli import main
from kdlab.engine import checkpoint
from kdlab.models.conformer_ctc import ConformerCTC, ConformerConfig


def test_a_ten_minute_clip_is_transcribed(tmp_path, capsys):
    torch.manual_seed(0)
    config = {"dim": 16, "layers": 1, "heads": 2, "ffn": 32, "subsample_channels": 4}
    model = ConformerCTC(ConformerConfig(**config), 80, 4)
    with torch.no_grad():  # a head that prefers "a" everywhere: the transcript is a single "a"
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))
    checkpoint.export_model(tmp_path / "m.pt", model=model, arch="conformer_ctc", config=config, num_classes=4,
                            input_shape=(98, 80), classes=("<blank>", "a", "b", "c"))
    minutes = 10
    wave = 0.1 * np.random.default_rng(0).standard_normal(16000 * 60 * minutes).astype(np.float32)
    soundfile.write(tmp_path / "long.wav", wave, 16000)
    assert 60 * minutes * 50 > len(model.positions.pe)  # 20 ms outputs: more than the table's rows
    assert main(["transcribe", str(tmp_path / "m.pt"), str(tmp_path / "long.wav")]) == 0
    assert capsys.readouterr().out.strip().split("\t") == [str(tmp_path / "long.wav"), "a"]
