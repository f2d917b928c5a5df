"""compile: torch.compile of student and teachers in place, taps included, on the CPU."""

from __future__ import annotations

import torch

from kdlab import hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from tests.conftest import TINY

TAPPED = TINY.replace("alpha = 0.5 }", 'alpha = 0.5 }\ntaps = { student = { emb = "embed" }, teacher = { emb = "embed" } }\n'
                      'methods.feature_kd = { student = "emb", teacher = "emb", weight = 1.0 }')


class Compiled:
    default_enabled = True
    seen: list[bool] = []

    @hookimpl
    def kdlab_step_end(self, stage):
        Compiled.seen.append(stage.student._compiled_call_impl is not None
                             and all(t._compiled_call_impl is not None for t in stage.teachers))


def test_compiled_training_matches_eager(write_recipe, tmp_path):
    cat = discover(extra={"compiled": Compiled})
    eager = run(write_recipe(TAPPED), out=tmp_path / "a", catalogue=cat)
    Compiled.seen = []
    text = TAPPED.replace("[stages.student]", "[stages.student]\nmethods.compile = {}")
    compiled = run(write_recipe(text, "compiled.toml"), out=tmp_path / "b", catalogue=cat)
    assert Compiled.seen[-1] and not any(Compiled.seen[:17])  # only the student stage compiles
    a, b = (torch.load(r.run_dir / "models/student.pt", weights_only=True)["state_dict"] for r in (eager, compiled))
    assert a.keys() == b.keys()  # no _orig_mod. prefix: the export is the plain model's
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3
    assert compiled.metrics["student"]["macs"] == eager.metrics["student"]["macs"]
