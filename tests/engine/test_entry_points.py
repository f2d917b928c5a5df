"""Every entry point kdlab declares loads and registers its name; a broken optional module stops
only the recipes that use it, with one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from kdlab.engine.registry import DATASET_GROUP, ENTRY_POINT_GROUP, MODEL_GROUP, discover

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kdlab_eps(group):
    return [ep for ep in entry_points(group=group) if ep.dist is not None and ep.dist.metadata["Name"] == "kdlab"]


def test_every_kdlab_plugin_entry_point_loads():
    catalogue = discover()
    names = {ep.name for ep in _kdlab_eps(ENTRY_POINT_GROUP)}
    assert len(names) > 30
    assert {n: why for n, why in catalogue.broken.items() if n in names} == {}
    assert names <= set(catalogue.plugins)


@pytest.mark.parametrize("group", [MODEL_GROUP, DATASET_GROUP])
def test_every_kdlab_model_and_dataset_entry_point_loads(group):
    catalogue = discover()
    registry = catalogue.models if group == MODEL_GROUP else catalogue.datasets
    eps = _kdlab_eps(group)
    assert len(eps) >= (20 if group == MODEL_GROUP else 7)
    for ep in eps:
        entry = registry[ep.name]  # imports the module; raises on a broken one
        assert entry.name == ep.name and callable(entry.build)


BROKEN_TORCHAUDIO = (
    "import sys\n"
    "class Finder:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torchaudio' or name.startswith('torchaudio.'):\n"
    "            raise OSError('Could not load this library: libtorchaudio.so: undefined symbol')\n"
    "sys.meta_path.insert(0, Finder())\n"
    "from kdlab.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _kdlab_without_torchaudio(*args, cwd):
    return subprocess.run([sys.executable, "-c", BROKEN_TORCHAUDIO, *args], capture_output=True, text=True, cwd=cwd)


def test_default_recipe_runs_with_torchaudio_broken(tmp_path):
    done = _kdlab_without_torchaudio("run", os.path.join(ROOT, "recipes", "digits_kd.toml"), "--out", str(tmp_path),
                                     "--set", "defaults.epochs=1", "--set", "plugins.tensorboard.enabled=false",
                                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| student_kd |" in done.stdout
    assert "failed to load" not in done.stderr  # no plugin was skipped: nothing imports torchaudio


def test_a_model_whose_module_fails_to_import_is_one_line_naming_it(tmp_path, write_recipe):
    recipe = write_recipe("""
[data]
dataset = "digits"
[stages.s]
epochs = 1
model = { arch = "conformer_ctc" }
methods.supervised = {}
""")
    done = _kdlab_without_torchaudio("validate", str(recipe), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "model architecture 'conformer_ctc' (kdlab.models.conformer_ctc:ARCH (kdlab 0.1.0)) failed to import: " \
           "OSError: Could not load this library" in lines[0]
    assert "stages.s.model.arch" in lines[0] and "Traceback" not in done.stderr
    assert "available: )" not in done.stderr
