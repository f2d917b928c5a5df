from __future__ import annotations

import logging
import re

import pytest

from kdlab.engine.runner import run
from tests.conftest import TINY


def test_log_lines_when_not_a_terminal(write_recipe, tmp_path, catalogue, caplog):
    text = TINY.replace("[plugins.progress]\nenabled = false", "[plugins.progress]\ninterval_s = 0.001")
    with caplog.at_level(logging.INFO, logger="kdlab"):
        run(write_recipe(text), out=tmp_path, catalogue=catalogue)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("stage student epoch 2/2 step ") and " loss " in m for m in messages)  # periodic
    assert any(m.startswith("stage teacher epoch 1/2 val/accuracy ") for m in messages)  # per epoch
    assert any(m.startswith("stage student done: ") and "test/accuracy" in m for m in messages)


def test_log_lines_give_the_step_of_the_epochs_total_and_an_eta(write_recipe, tmp_path, catalogue, caplog):
    text = TINY.replace("[plugins.progress]\nenabled = false", "[plugins.progress]\ninterval_s = 0.001")
    with caplog.at_level(logging.INFO, logger="kdlab"):
        run(write_recipe(text.replace("[stages.student]", "[stages.student]\naccumulate = 2")), out=tmp_path,
            catalogue=catalogue)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage student epoch 1/2 step ")]
    # 1,078 training digits, batches of 64: 17 batches, 9 optimizer steps of two
    assert lines and all(re.search(r" step \d+/9 loss [\d.]+, epoch ETA \d+m\d\ds$", m) for m in lines), lines[:3]
    assert "tokens/s" not in lines[0]  # images: no tokens


def test_text_runs_log_tokens_per_second(write_recipe, tmp_path, catalogue, caplog):
    pytest.importorskip("transformers")
    from tests.data.test_text import make_dialogues
    from tests.methods.test_conformance import TEXT_RECIPE

    text = TEXT_RECIPE.format(corpus=make_dialogues(tmp_path / "corpus"), methods="methods.lm = {}")
    text = text.replace("[plugins.progress]\nenabled = false", "[plugins.progress]\ninterval_s = 0.001")
    with caplog.at_level(logging.INFO, logger="kdlab"):
        run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage teacher epoch 1/1 step 2/2")]
    assert lines and re.search(r"loss [\d.]+, [\d,]+ tokens/s, epoch ETA 0m00s$", lines[0]), lines
