"""The shipped recipes: each runs a smoke step on small files in the real data format."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlab.engine.runner import run
from tests.plugins.test_datasets import make_cifar

ROOT = Path(__file__).resolve().parents[1]
# tiny data, one epoch, a couple of steps, the CPU, no AMP (bf16 ResNet-50 on a CPU is slow)
SMOKE = ["defaults.epochs=1", "device=\"cpu\"", "data.val_size=4", "data.batch_size=8", "data.eval_batch_size=8",
         "data.train_limit=16", "data.num_workers=0", "defaults.optimizer.lr=0.001", "defaults.methods.amp.enabled=false",
         "plugins.progress.enabled=false"]


@pytest.mark.parametrize(("recipe", "hundred"), [("cifar100_geometry.toml", True), ("cifar10_multiteacher.toml", False)])
def test_cifar_recipe_smoke(recipe, hundred, tmp_path, catalogue):
    make_cifar(tmp_path / "data", hundred=hundred)
    result = run(ROOT / "recipes" / recipe, overrides=[*SMOKE, f"data.root={tmp_path / 'data'}"],
                 out=tmp_path / "runs", catalogue=catalogue)
    recipe_stages = list(result.metrics)
    assert len(recipe_stages) >= 4
    for stage, metrics in result.metrics.items():
        assert 0 <= metrics["test/accuracy"] <= 1, stage
    if hundred:
        assert {"test/geometry_preservation", "test/cka", "test/top5"} <= set(result.metrics["geometry"])
