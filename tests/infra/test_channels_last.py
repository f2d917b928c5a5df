"""channels_last: the models train in NHWC and learn what they learn in NCHW."""

from __future__ import annotations

import torch

from kdlab import hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from tests.conftest import TEST_DEVICE, TINY


class Layout:
    default_enabled = True
    seen: list[bool] = []

    @hookimpl
    def kdlab_step_end(self, stage):
        # (a conv with one input channel is contiguous in both layouts)
        convs = [p for p in stage.student.parameters() if p.ndim == 4 and p.shape[1] > 1]
        Layout.seen.append(all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                               for p in convs))


def test_channels_last_trains_nhwc_to_the_same_weights(write_recipe, tmp_path):
    cat = discover(extra={"layout": Layout})
    plain = run(write_recipe(TINY), out=tmp_path / "a", catalogue=cat)
    assert Layout.seen and not any(Layout.seen)
    Layout.seen = []
    text = TINY.replace("alpha = 0.5 }", "alpha = 0.5 }\nmethods.channels_last = {}")
    nhwc = run(write_recipe(text, "nhwc.toml"), out=tmp_path / "b", catalogue=cat)
    assert Layout.seen and all(Layout.seen[-34:])  # the student stage's 34 steps
    a, b = (torch.load(r.run_dir / "models/student.pt", weights_only=True)["state_dict"] for r in (plain, nhwc))
    # NHWC convolutions sum in another order: rounding, amplified by Adam (more so with cuDNN's algorithms)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < (1e-3 if TEST_DEVICE == "cpu" else 3e-2)


def test_channels_last_refuses_pruning(write_recipe, tmp_path, catalogue):
    import pytest

    from kdlab import KdlabError

    text = TINY.replace("alpha = 0.5 }", "alpha = 0.5 }\nmethods.channels_last = {}\nmethods.pruning = { sparsity = 0.3 }")
    with pytest.raises(KdlabError, match="channels_last: does not compose with pruning"):
        run(write_recipe(text), out=tmp_path, catalogue=catalogue)
