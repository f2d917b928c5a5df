"""CONTRIBUTING.md's worked examples (a data set, a model, a metric) are real code: taken from the
file as written, installed as a package with entry points, and trained with."""

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
    assert set(blocks) == {"blobs.py", "mlp.py", "balanced.py"}
    pkg = tmp_path / "site" / "my_package"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name, code in blocks.items():
        (pkg / name).write_text(code)
    # the model example leaves the registering hook to the reader: this is the one it describes
    (pkg / "models.py").write_text(textwrap.dedent("""
        from kdlab import hookimpl
        from my_package.mlp import MLPConfig, build

        class MLPModels:
            default_enabled = True

            @hookimpl
            def kdlab_register_models(self, models):
                models.add("mlp", MLPConfig, build)
    """))
    info = tmp_path / "site" / "my_package-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-package\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kdlab.plugins]\nblobs = my_package.blobs:Blobs\n"
                                           "mlp = my_package.models:MLPModels\n"
                                           "balanced = my_package.balanced:BalancedAccuracy\n")
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
        monitor = "val/balanced_accuracy"
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "kdlab", "run", str(recipe), "--out", str(tmp_path / "runs")],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import json

    metrics = json.loads(next((tmp_path / "runs" / "blobs").iterdir()).joinpath("metrics.json").read_text())
    # three well-separated blobs: the teacher learns them, and the metric is reported per split
    assert metrics["teacher"]["test/balanced_accuracy"] > 0.8
    assert 0 <= metrics["student"]["val/balanced_accuracy"] <= 1
    assert metrics["student"]["params"] == 2 * 4 + 4 + 4 * 3 + 3
