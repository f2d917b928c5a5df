"""The command-line contract: run, validate, plugins, report, exit codes."""

from __future__ import annotations

from pathlib import Path

from kdlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_run_prints_table_and_report_reads_it(write_recipe, tmp_path, capsys):
    assert main(["run", str(write_recipe()), "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert header.startswith("| stage | test/accuracy | val/accuracy |") and "| params | nonzero_params | macs |" in header
    assert "| teacher |" in out and "| student |" in out
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    assert f"run directory: {run_dir}" in out

    assert main(["report", str(run_dir), str(run_dir), "--format", "csv", "--per-run"]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0].startswith("run,stage,test/accuracy,val/accuracy")
    assert len(csv) == 1 + 4 and csv[1].startswith(f"{run_dir},teacher,")
    assert main(["report", str(run_dir), "--per-run"]) == 0
    assert "| run | stage |" in capsys.readouterr().out


def test_report_on_a_non_run_is_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_validate_prints_resolved_recipe_plugins_and_order(write_recipe, capsys):
    assert main(["validate", str(write_recipe()), "--set", "stages.student.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "[stages.student]\nepochs = 3" in out  # resolved, with the override and defaults merged
    assert "# stage student: plugins " in out and "logit_kd" in out
    assert "#   kdlab_loss_terms: logit_kd" in out
    assert "#   kdlab_teacher_outputs: forward (wrapper) -> forward" in out


def test_plugins_lists_fields(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "logit_kd  (method, table [stages.<s>.methods.logit_kd])" in out
    assert "- temperature: float (default 4.0)" in out
    assert "cnn: channels:" in out


def test_missing_data_files_exit_2(write_recipe, tmp_path, capsys):
    text = open(write_recipe()).read().replace('dataset = "digits"', f'dataset = "cifar10"\nroot = "{tmp_path}/none"')
    assert main(["run", str(write_recipe(text)), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "cifar10 files not found under" in err and "Traceback" not in err


def test_every_shipped_recipe_validates(capsys):
    recipes = sorted((ROOT / "recipes").glob("*.toml"))
    assert recipes
    for recipe in recipes:
        assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err
    assert main(["validate", str(ROOT / "recipes" / "digits_arch_search.toml")]) == 0
    assert "# sweep: 144 runs, every one valid" in capsys.readouterr().out
