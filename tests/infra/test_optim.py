from __future__ import annotations

import math

import pytest

from kdlab.engine.recipe import SchedulerConfig
from kdlab.infra.optim import lr_factor


def test_cosine_with_warmup():
    cfg = SchedulerConfig(name="cosine", warmup_epochs=2)
    assert lr_factor(cfg, 10, 0) == pytest.approx(1 / 3)
    assert lr_factor(cfg, 10, 1) == pytest.approx(2 / 3)
    assert lr_factor(cfg, 10, 2) == pytest.approx(1.0)
    assert lr_factor(cfg, 10, 6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))


def test_multistep():
    cfg = SchedulerConfig(name="multistep", milestones=(3, 5), gamma=0.1)
    assert [lr_factor(cfg, 8, e) for e in range(7)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_constant():
    assert lr_factor(SchedulerConfig(), 5, 4) == 1.0
