"""The CIFAR-100 protocol recipe, smoke-swept on small files in the real format, reported beside
the published table (kdlab report --published)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from kdlab.cli import main
from kdlab.engine.errors import KdlabError
from kdlab.studies import published
from tests.data.test_vision import make_cifar

ROOT = Path(__file__).resolve().parents[2]


def test_protocol_sweep_reported_beside_the_published_table(tmp_path, capsys):
    make_cifar(tmp_path / "data", hundred=True)
    recipe = tomllib.loads((ROOT / "recipes" / "cifar100_protocol.toml").read_text())
    assert recipe["defaults"]["epochs"] == 240 and recipe["data"]["batch_size"] == 64
    assert recipe["defaults"]["scheduler"]["milestones"] == [150, 180, 210]
    methods = recipe["sweep"]["grid"]["stages.student.methods"]
    assert len(methods) == 19
    # smoke scale: the first pair, three of the methods, two seeds, one short epoch
    recipe["sweep"] = {"seeds": [0, 1], "zip": {k: v[:1] for k, v in recipe["sweep"]["zip"].items()},
                       "grid": {"stages.student.methods": [methods[0], methods[1], methods[10]]}}
    recipe["data"].update(root=str(tmp_path / "data"), verify=False, val_size=4, batch_size=8, eval_batch_size=8,
                          train_limit=16, num_workers=0)
    recipe["defaults"]["epochs"] = 1
    recipe["device"] = "cpu"
    recipe["plugins"] = {"progress": {"enabled": False}, "tensorboard": {"enabled": False}}
    path = tmp_path / "protocol.toml"
    path.write_text(tomli_w.dumps(recipe))
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs")]) == 0
    runs = sorted((tmp_path / "runs" / "cifar100_protocol").glob("*/metrics.json"))
    assert len(runs) == 6
    trained = [r.parent for r in runs if not (r.parent / "history" / "teacher.reused").exists()]
    assert len(trained) == 2  # one teacher per seed, shared by the three methods
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs" / "cifar100_protocol"), "--published",
                 str(ROOT / "docs" / "published" / "cifar100.toml")]) == 0
    out = capsys.readouterr().out
    header = [c.strip() for c in next(line for line in out.splitlines()
                                      if line.startswith("| teacher -> student")).strip("|").split("|")]
    assert header[1:4] == ["teacher", "student alone", "KD"]
    row = next(line for line in out.splitlines() if line.startswith("| resnet32x4 -> resnet8x4"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].endswith("(2); pub. 79.42")  # the teacher, over both seeds
    assert "(2)" in cells[2] and cells[2].endswith("pub. 72.50")
    assert "(2)" in cells[3] and cells[3].endswith("pub. 73.33")
    assert cells[4] == "-; pub. 73.50"  # FitNet was not run here
    assert "(2)" in cells[header.index("DKD")] and cells[header.index("DKD")].endswith("pub. 76.32")


def test_bad_published_tables_are_one_line_errors(tmp_path):
    bad = tmp_path / "t.toml"
    bad.write_text('source = "x"\nmetric = "test/accuracy"\n[columns]\n')
    with pytest.raises(KdlabError, match="needs a 'rows' key"):
        published.load_table(bad)
    bad.write_text('source = "x"\nmetric = "test/accuracy"\ncolumns = {}\nrows = [{ teacher = "a" }]\n')
    with pytest.raises(KdlabError, match=r"rows\[0\] needs teacher, student and values"):
        published.load_table(bad)


SWEEP = """
name = "layout"
device = "cpu"
[data]
dataset = "digits"
batch_size = 600
[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[defaults]
epochs = 3
eval_test = true
model = { arch = "cnn", channels = [4, 8] }
[stages.teacher]
model = { arch = "cnn", channels = [8, 16] }
methods.supervised = {}
[stages.student]
teachers = ["teacher"]
methods.supervised = {}
[sweep]
seeds = [0, 1, 2]
grid."stages.student.model.channels" = [[4, 8], [2, 4]]
grid."stages.student.methods" = [{ supervised = {} }, { logit_kd = { temperature = 4.0, alpha = 0.9 } }]
"""


def test_the_paper_layout_for_any_sweep(write_recipe, tmp_path, capsys, monkeypatch):
    """mean +- sample std over seeds of the last and the best epoch, per row key x column key, with
    the command that printed it; the numbers are the runs' own (metrics.json, history)."""
    import json
    import statistics

    assert main(["sweep", str(write_recipe(SWEEP)), "--out", str(tmp_path / "runs")]) == 0
    capsys.readouterr()
    argv = ["report", str(tmp_path / "runs" / "layout"), "--rows", "stages.student.model.channels",
            "--columns", "stages.student.methods"]
    monkeypatch.setattr("sys.argv", ["kdlab", *argv])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "last epoch / best epoch (seeds)" in out
    assert f"command: `kdlab {' '.join(argv)}`" in out
    head = next(line for line in out.splitlines() if line.startswith("| stages.student.model.channels"))
    assert [c.strip() for c in head.strip("|").split("|")][1:] == ["alone", "logit_kd"]
    runs = [p.parent for p in (tmp_path / "runs" / "layout").rglob("metrics.json")]
    assert len(runs) == 12
    for channels in ("[4, 8]", "[2, 4]"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {channels} "))
        cells = [c.strip() for c in row.strip("|").split("|")]
        for column, methods in ((1, {"supervised"}), (2, {"logit_kd"})):
            last, best = [], []
            for run in runs:
                recipe = tomllib.loads((run / "recipe.toml").read_text())
                student = recipe["stages"]["student"]
                if str(student["model"]["channels"]) != channels or set(student["methods"]) != methods:
                    continue
                last.append(100 * json.loads((run / "metrics.json").read_text())["student"]["test/accuracy"])
                history = [json.loads(x) for x in (run / "history" / "student.jsonl").read_text().splitlines() if x]
                best.append(100 * max(h["test/accuracy"] for h in history if "test/accuracy" in h))
            assert len(last) == 3
            want = (f"{statistics.fmean(last):.2f} ± {statistics.stdev(last):.2f} / "
                    f"{statistics.fmean(best):.2f} ± {statistics.stdev(best):.2f} (3)")
            assert cells[column] == want
            assert all(b >= v for b, v in zip(best, last))


def test_the_paper_layout_needs_both_keys(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.json").write_text('{"student": {"test/accuracy": 0.5}}')
    assert main(["report", str(run), "--rows", "stages.student.model.arch"]) == 2
    assert "needs both --rows and --columns" in capsys.readouterr().err


def test_the_two_stage_protocol_rows_run_and_report(tmp_path, capsys):
    """FSP and AB as published: a first stage on the method's loss alone, then the student from
    it (init) on cross-entropy; smoke scale, the first pair, one seed."""
    make_cifar(tmp_path / "data", hundred=True)
    recipe = tomllib.loads((ROOT / "recipes" / "cifar100_protocol_twostage.toml").read_text())
    assert recipe["stages"]["student_init"]["epochs"] == 30 and recipe["stages"]["student"]["init"] == "student_init"
    recipe["sweep"] = {"seeds": [0], "zip": {k: v[:1] for k, v in recipe["sweep"]["zip"].items()},
                       "grid": recipe["sweep"]["grid"]}
    recipe["data"].update(root=str(tmp_path / "data"), verify=False, val_size=4, batch_size=8, eval_batch_size=8,
                          train_limit=16, num_workers=0)
    recipe["defaults"]["epochs"] = 1
    recipe["stages"]["student_init"]["epochs"] = 1
    recipe["device"] = "cpu"
    recipe["plugins"] = {"progress": {"enabled": False}, "tensorboard": {"enabled": False}}
    path = tmp_path / "twostage.toml"
    path.write_text(tomli_w.dumps(recipe))
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs")]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs" / "cifar100_protocol_twostage"), "--rows",
                 "stages.teacher.model.arch,stages.student.model.arch", "--columns", "stages.student_init.methods"]) == 0
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("| teacher -> student"))
    assert [c.strip() for c in head.strip("|").split("|")][1:] == ["ab", "fsp"]
    assert next(line for line in out.splitlines() if line.startswith("| resnet32x4 -> resnet8x4")).count("(1)") == 2
