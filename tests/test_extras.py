"""The core install runs the default recipe; a command that needs an extra says which one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("matplotlib", "espeakng_loader", "wordfreq", "flashlight", "transformers", "optuna", "tokenizers")


def _kdlab_without_extras(*argv: str) -> subprocess.CompletedProcess:
    """``kdlab ARGV`` in a process where the optional packages cannot be imported."""
    code = ("import sys\n"
            f"for name in {EXTRAS!r}: sys.modules[name] = None  # import raises ImportError\n"
            "from kdlab.cli import main\n"
            f"sys.exit(main({list(argv)!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def test_default_recipe_runs_on_the_core_install(tmp_path):
    done = _kdlab_without_extras("run", "recipes/digits_kd.toml", "--out", str(tmp_path), "--set", "defaults.epochs=1",
                                 "--set", "plugins.progress.enabled=false")
    assert done.returncode == 0, done.stderr
    assert "| student_kd |" in done.stdout


def test_missing_extras_are_named(tmp_path):
    data = _kdlab_without_extras("data", "kws", "--out", str(tmp_path / "kws"), "--clips", "4")
    assert data.returncode == 2 and "Traceback" not in data.stderr
    assert "pip install 'kdlab[speech]'" in data.stderr and len(data.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "kws").exists() or not any((tmp_path / "kws").iterdir())
    _kdlab_without_extras("run", "recipes/digits_kd.toml", "--out", str(tmp_path / "runs"),
                                "--set", "defaults.epochs=1", "--set", "plugins.progress.enabled=false")
    report = _kdlab_without_extras("report", str(tmp_path / "runs"), "--plots", str(tmp_path / "plots"))
    assert report.returncode == 2 and "pip install 'kdlab[plots]'" in report.stderr, report.stderr


def test_search_names_its_extra(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text((ROOT / "recipes" / "digits_arch_optuna.toml").read_text())
    done = _kdlab_without_extras("search", str(recipe), "--out", str(tmp_path / "runs"))
    assert done.returncode == 2 and "pip install 'kdlab[search]'" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_text_data_and_transformer_lm_name_their_extras(tmp_path):
    from tests.data.test_text import make_dialogues

    corpus = make_dialogues(tmp_path / "d")
    args = ["run", "recipes/dialogue_kd.toml", "--out", str(tmp_path / "runs"), "--set", f"data.dir={corpus}"]
    done = _kdlab_without_extras(*args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("pip install 'kdlab[text]'"), done.stderr
    # with tokenizers but without transformers: the transformer model names the hf extra
    code = ("import sys\nsys.modules['transformers'] = None\nfrom kdlab.cli import main\n"
            f"sys.exit(main({args + ['--set', 'plugins.progress.enabled=false']!r}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "pip install 'kdlab[hf]'" in done.stderr, done.stderr
