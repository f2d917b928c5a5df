"""ViTKD on vision transformers: a ViT student of another width distilled from a ViT teacher,
shallow layers mimicked, the last generated (class tokens dropped), and the masking RNG part of
what a resume restores."""

from __future__ import annotations

import math

import torch

from kdlab.engine.runner import run
from kdlab.methods.vitkd import as_tokens

RECIPE = """
name = "vitkd"
device = "cpu"
[data]
dataset = "digits"
batch_size = 600
[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[defaults]
epochs = 1
[stages.teacher]
model = { arch = "vit", patch_size = 2, dim = 16, depth = 3, heads = 2 }
methods.supervised = {}
[stages.student]
model = { arch = "vit", patch_size = 2, dim = 8, depth = 3, heads = 2 }
teachers = ["teacher"]
taps = { student = { low0 = "encoder.layers.encoder_layer_0", low1 = "encoder.layers.encoder_layer_1", feat = "encoder.layers.encoder_layer_2" }, teacher = { low0 = "encoder.layers.encoder_layer_0", low1 = "encoder.layers.encoder_layer_1", feat = "encoder.layers.encoder_layer_2" } }
methods.supervised = {}
methods.vitkd = { alpha = 0.01, beta = 0.01 }
"""


def test_class_tokens_are_dropped_and_maps_read_as_tokens():
    tokens = torch.randn(2, 17, 5)  # a class token and a 4 x 4 grid
    assert torch.equal(as_tokens(tokens), tokens[:, 1:])
    grid = torch.randn(2, 16, 5)
    assert torch.equal(as_tokens(grid), grid)
    fmap = torch.randn(2, 5, 3, 3)
    assert torch.equal(as_tokens(fmap)[:, 4], fmap[:, :, 1, 1])


def test_a_vit_student_distils_from_a_vit_teacher(write_recipe, tmp_path, catalogue):
    result = run(write_recipe(RECIPE), out=tmp_path, catalogue=catalogue)
    assert math.isfinite(result.metrics["student"]["test/loss"])
    last = torch.load(result.run_dir / "checkpoints/student/last.pt", weights_only=True)
    extra = last["extra"]
    assert extra["vitkd.align2.1.weight"].shape == (16, 8) and extra["vitkd.align.weight"].shape == (16, 8)
    assert extra["vitkd.generation.0.weight"].shape == (16, 16, 3, 3)
