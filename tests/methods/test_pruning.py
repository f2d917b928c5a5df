from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from kdlab.engine.runner import run
from kdlab.methods.pruning import PruningConfig, prune_to, sparsity, target_sparsity
from tests.conftest import TINY


def _two_layers():
    a, b = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
        b.weight.copy_(torch.tensor([[0.5, -5.0]]))
    targets = [(a, "weight"), (b, "weight")]
    for m, n in targets:
        prune.identity(m, n)
    return a, b, targets


def test_global_magnitude_pruning_is_global_and_cumulative():
    a, b, targets = _two_layers()
    prune_to(targets, 0.5)  # 3 of 6: the three smallest |w| overall are 0.5, 1, -2
    assert a.weight.tolist() == [[0.0, 0.0], [3.0, 4.0]]
    assert b.weight.tolist() == [[0.0, -5.0]]
    assert sparsity(targets) == pytest.approx(0.5)
    prune_to(targets, 4 / 6)  # one more: 3
    assert a.weight.tolist() == [[0.0, 0.0], [0.0, 4.0]]
    prune_to(targets, 0.5)  # never un-prunes
    assert sparsity(targets) == pytest.approx(4 / 6)


def test_schedules():
    oneshot = PruningConfig(sparsity=0.6, start_epoch=2)
    assert [target_sparsity(oneshot, e, 5) for e in range(5)] == [0, 0, 0.6, 0.6, 0.6]
    gradual = PruningConfig(sparsity=0.8, schedule="gradual", start_epoch=0, end_epoch=3)
    values = [target_sparsity(gradual, e, 6) for e in range(6)]
    assert values[0] == pytest.approx(0.8 * (1 - 0.75**3))
    assert values[1] == pytest.approx(0.8 * (1 - 0.5**3))
    assert values[3:] == [pytest.approx(0.8)] * 3
    assert values == sorted(values)


def test_pruning_stage_reports_sparsity_and_exports_plain_zeros(write_recipe, tmp_path, catalogue):
    text = TINY.split("[stages.student]")[0].replace(
        "methods.supervised = {}", "methods.supervised = {}\nmethods.pruning = { sparsity = 0.7, start_epoch = 1 }"
    )
    result = run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())["teacher"]
    assert metrics["test/sparsity"] == pytest.approx(0.7, abs=1e-3)
    exported = torch.load(result.run_dir / "models/teacher.pt", weights_only=True)["state_dict"]
    assert not any(k.endswith("_orig") or k.endswith("_mask") for k in exported)
    weights = [v for k, v in exported.items() if k.endswith("weight") and v.dim() in (2, 4)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / sum(w.numel() for w in weights) == pytest.approx(0.7, abs=1e-3)
    # the checkpoint keeps the masks, so a resume continues with them
    last = torch.load(result.run_dir / "checkpoints/teacher/last.pt", weights_only=True)["student"]
    assert any(k.endswith("weight_mask") for k in last)
