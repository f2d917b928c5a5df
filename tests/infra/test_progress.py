from __future__ import annotations

import logging

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
