"""CONTRIBUTING.md's worked examples (a method, a data set, a model, a metric) are real code:
taken from the file as written, installed as a package with the entry points it describes (each
in its own group), and trained with."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks() -> dict[str, str]:
    """The python blocks of CONTRIBUTING.md that begin with ``# my_package/<file>.py``."""
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for m in re.finditer(r"```python\n# my_package/(\w+\.py)\n(.*?)```", text, re.S)}


def test_worked_examples_train_in_a_recipe(tmp_path):
    blocks = _blocks()
    assert set(blocks) == {"logit_l2.py", "blobs.py", "mlp.py", "balanced.py"}
    pkg = tmp_path / "site" / "my_package"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name, code in blocks.items():
        (pkg / name).write_text(code)
    info = tmp_path / "site" / "my_package-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-package\nVersion: 0.1\n")
    # the entry points as CONTRIBUTING.md writes them, each in its group
    (info / "entry_points.txt").write_text("[kdlab.plugins]\nlogit_l2 = my_package.logit_l2:LogitL2\n"
                                           "balanced = my_package.balanced:BalancedAccuracy\n"
                                           "[kdlab.datasets]\nblobs = my_package.blobs:DATASET\n"
                                           "[kdlab.models]\nmlp = my_package.mlp:ARCH\n")
    recipe = tmp_path / "blobs.toml"
    recipe.write_text(textwrap.dedent("""
        device = "cpu"
        [data]
        dataset = "blobs"
        [plugins.progress]
        enabled = false
        [stages.teacher]
        epochs = 3
        model = { arch = "mlp", hidden = 32 }
        methods.supervised = {}
        [stages.student]
        epochs = 3
        model = { arch = "mlp", hidden = 4 }
        teachers = ["teacher"]
        methods.logit_kd = { temperature = 2.0, alpha = 0.5 }
        methods.logit_l2 = { scale = 0.01 }
        monitor = "val/balanced_accuracy"
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "kdlab", "run", str(recipe), "--out", str(tmp_path / "runs")],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "PluginDeprecationWarning" not in done.stderr  # the examples are written the current way
    import json

    metrics = json.loads(next((tmp_path / "runs" / "blobs").iterdir()).joinpath("metrics.json").read_text())
    # three well-separated blobs: the teacher learns them, and the metric is reported per split
    assert metrics["teacher"]["test/balanced_accuracy"] > 0.8
    assert 0 <= metrics["student"]["val/balanced_accuracy"] <= 1
    assert metrics["student"]["params"] == 2 * 4 + 4 + 4 * 3 + 3

    # the method ran: its term was logged, with its config's scale (a positive penalty)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((tmp_path / "runs" / "blobs").iterdir()) / "tb" / "student"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("loss/l2")] and all(e.value > 0 for e in acc.Scalars("loss/l2"))
    # and the metric joins only stages of data it declares: the data set says "classification"
    listing = subprocess.run([sys.executable, "-m", "kdlab", "validate", str(recipe)], env=env, capture_output=True,
                             text=True, check=True).stdout
    assert "kdlab_eval_metrics: balanced -> accuracy" in listing or "kdlab_eval_metrics: accuracy -> balanced" in listing
