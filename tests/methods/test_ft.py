"""Factor transfer's first phase: the plugin trains the paraphraser on the teacher's features
(its reconstruction error falls), then freezes it; the translator is left to the stage."""

from __future__ import annotations

import logging
import re
import types

import torch
from torch import nn

from kdlab import ModelOutput
from kdlab.methods.ft import FT, FTConfig, Paraphraser, translator


class _Batch:
    def __init__(self, x):
        self.x, self.index = x, torch.arange(len(x))

    def to(self, device):
        return self


class _Loader:
    def __init__(self, batches):
        self.batches, self.epochs = batches, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(self.batches)


def test_the_paraphraser_is_trained_on_the_teachers_features_then_frozen(caplog):
    torch.manual_seed(0)
    maps = [torch.randn(8, 6, 4, 4).relu() for _ in range(4)]
    loader = _Loader([_Batch(m) for m in maps])
    paraphraser = Paraphraser(6, 0.5).requires_grad_(False)
    trans = translator(3, 6, 0.5)
    before = {k: v.clone() for k, v in trans.state_dict().items()}
    stage = types.SimpleNamespace(
        extra=nn.ModuleDict({"ft": nn.ModuleDict({"translator": trans, "paraphraser": paraphraser})}),
        data=types.SimpleNamespace(train=loader), device=torch.device("cpu"), world_size=1, is_main=True,
        hook=types.SimpleNamespace(kdlab_teacher_outputs=lambda stage, batch: [ModelOutput(logits=None, features={"feat": batch.x})]))

    def error():
        with torch.no_grad():
            return sum(nn.functional.mse_loss(paraphraser(m), m).item() for m in maps) / len(maps)

    start = error()
    with caplog.at_level(logging.INFO, logger="kdlab"):
        FT(FTConfig(paraphraser_epochs=5, paraphraser_lr=0.05)).kdlab_epoch_start(stage, 0)
    assert error() < 0.85 * start
    logged = [float(x) for x in re.findall(r"reconstruction loss (\S+)", caplog.text)]
    assert len(logged) == 5 and logged[-1] < logged[0]
    assert not any(p.requires_grad for p in paraphraser.parameters()) and not paraphraser.training
    assert all(torch.equal(before[k], v) for k, v in trans.state_dict().items())
    assert loader.epochs == [0, 1, 2, 3, 4, 0]  # its passes, then the stage's epoch 0 again
    # a resumed stage starts past epoch 0: nothing is trained again
    trained = {k: v.clone() for k, v in paraphraser.state_dict().items()}
    FT(FTConfig(paraphraser_epochs=5)).kdlab_epoch_start(stage, 1)
    assert all(torch.equal(trained[k], v) for k, v in paraphraser.state_dict().items())
