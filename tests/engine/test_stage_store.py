"""Shared stages: a stage the same in two runs trains once, reuse changes no result, the key
follows everything that determines the stage, and concurrent runs wait instead of training twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kdlab.cli import main
from kdlab.engine.recipe import load_recipe
from kdlab.engine.runner import run
from kdlab.engine.stage_store import StageStore, stage_keys
from tests.conftest import TINY


def _trained(run_dir, stage) -> bool:
    return not (run_dir / "history" / f"{stage}.reused").exists()


def test_a_shared_teacher_trains_once_and_reuse_changes_nothing(write_recipe, tmp_path, catalogue):
    recipe = write_recipe()
    store = tmp_path / "store"
    wider = ["stages.student.model.channels=[8, 8]"]
    first = run(recipe, out=tmp_path / "a", catalogue=catalogue, stage_store=store)
    second = run(recipe, overrides=wider, out=tmp_path / "a", catalogue=catalogue, stage_store=store)
    alone = run(recipe, overrides=wider, out=tmp_path / "b", catalogue=catalogue)  # no store
    assert _trained(first.run_dir, "teacher") and not _trained(second.run_dir, "teacher")
    assert _trained(second.run_dir, "student")
    teacher = (first.run_dir / "models" / "teacher.pt").read_bytes()
    assert (second.run_dir / "models" / "teacher.pt").read_bytes() == teacher
    assert second.metrics["teacher"] == first.metrics["teacher"]
    assert json.loads((second.run_dir / "metrics.json").read_text())["teacher"] == first.metrics["teacher"]
    assert (second.run_dir / "history" / "teacher.jsonl").is_file()
    # the student distilled from the reused teacher is the one distilled from a teacher trained in its own run
    def untimed(metrics):
        return {k: val for k, val in metrics.items() if k != "latency_ms"}

    assert untimed(second.metrics["student"]) == untimed(alone.metrics["student"])


def test_the_key_follows_settings_and_inputs(write_recipe, tmp_path, catalogue):
    recipe = write_recipe()
    base = stage_keys(load_recipe(recipe, catalogue))
    seed = stage_keys(load_recipe(recipe, catalogue, ["seed=1"]))
    teacher_epochs = stage_keys(load_recipe(recipe, catalogue, ["stages.teacher.epochs=3"]))
    student_lr = stage_keys(load_recipe(recipe, catalogue, ["stages.student.optimizer.lr=0.1"]))
    assert seed["teacher"] != base["teacher"] and seed["student"] != base["student"]
    # a changed teacher changes the key of the student that reads it
    assert teacher_epochs["teacher"] != base["teacher"] and teacher_epochs["student"] != base["student"]
    assert student_lr["teacher"] == base["teacher"] and student_lr["student"] != base["student"]
    # a teacher read from a file: by its bytes, not its name
    model = tmp_path / "t.pt"
    model.write_bytes(b"one")
    from_file = write_recipe(TINY.replace('teachers = ["teacher"]', f'teachers = ["{model}"]'), "file.toml")
    before = stage_keys(load_recipe(from_file, catalogue))["student"]
    model.write_bytes(b"two")
    assert stage_keys(load_recipe(from_file, catalogue))["student"] != before


def test_concurrent_runs_train_a_shared_stage_once(write_recipe, tmp_path):
    recipe = write_recipe(TINY.replace("epochs = 2", "epochs = 6"))
    cmd = [sys.executable, "-m", "kdlab", "run", str(recipe), "--out", str(tmp_path), "--stage-store",
           str(tmp_path / "store")]
    procs = [subprocess.Popen([*cmd, "--set", f"stages.student.optimizer.lr={lr}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for lr in (0.01, 0.02)]
    logs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trained = sum("stage teacher: plugins" in log for log in logs)
    reused = sum("stage teacher: reused from the stage store" in log for log in logs)
    assert (trained, reused) == (1, 1), logs


def test_sweep_shares_stages_and_can_be_told_not_to(write_recipe, tmp_path):
    recipe = write_recipe(TINY + '\n[sweep]\nseeds = [0]\ngrid."stages.student.optimizer.lr" = [0.01, 0.02]\n')
    assert main(["sweep", str(recipe), "--out", str(tmp_path / "shared")]) == 0
    dirs = sorted((tmp_path / "shared" / "tiny").glob("*/metrics.json"))
    assert len(dirs) == 2 and sum(_trained(d.parent, "teacher") for d in dirs) == 1
    assert main(["sweep", str(recipe), "--out", str(tmp_path / "own"), "--no-shared-stages"]) == 0
    dirs = sorted((tmp_path / "own" / "tiny").glob("*/metrics.json"))
    assert sum(_trained(d.parent, "teacher") for d in dirs) == 2 and not (tmp_path / "own" / ".kdlab-stages").exists()


def _damage_cases(entry, outside):
    """(name, how to damage one filed entry) for the store-entry tests."""
    model = next(rel for rel in json.loads((entry / "files.json").read_text()) if rel.endswith(".pt"))

    def escape():
        files = json.loads((entry / "files.json").read_text())
        files[str(outside)] = files[model]  # an absolute path outside the store
        files["../../victim.txt"] = files[model]
        (entry / "files.json").write_text(json.dumps(files))

    def cut():
        data = (entry / model).read_bytes()
        (entry / model).unlink()  # a new file, not the run's hard link
        (entry / model).write_bytes(data[: len(data) // 2])

    def garbage():
        (entry / "stage.json").write_text("{not json")

    def old_format():
        (entry / "files.json").write_text(json.dumps(list(json.loads((entry / "files.json").read_text()))))

    return {"escape": escape, "cut": cut, "garbage": garbage, "old_format": old_format}


def test_a_damaged_store_entry_is_retrained_and_never_touches_files_outside(write_recipe, tmp_path, catalogue,
                                                                             caplog):
    recipe = write_recipe()
    outside = tmp_path / "victim.txt"
    outside.write_text("keep me")
    for n, case in enumerate(("escape", "cut", "garbage", "old_format")):
        store = tmp_path / f"store{n}"
        first = run(recipe, out=tmp_path / f"a{n}", catalogue=catalogue, stage_store=store)
        key = next(e.key for e in StageStore(store).entries() if e.stage == "teacher")
        _damage_cases(store / key, outside)[case]()
        caplog.clear()
        second = run(recipe, out=tmp_path / f"b{n}", catalogue=catalogue, stage_store=store)
        assert _trained(second.run_dir, "teacher"), case  # not restored from the damaged entry
        assert any("is damaged" in r.getMessage() and key in r.getMessage() for r in caplog.records), case
        assert outside.read_text() == "keep me"
        assert (second.run_dir / "models" / "teacher.pt").read_bytes() == (first.run_dir / "models" / "teacher.pt").read_bytes()
        # the entry was filed again, whole: a third run reuses it
        third = run(recipe, out=tmp_path / f"c{n}", catalogue=catalogue, stage_store=store)
        assert not _trained(third.run_dir, "teacher"), case


def test_an_edited_plugin_retrains_the_stage_under_the_same_version(write_recipe, tmp_path):
    """The key held the version (always 0.1) and the settings, not the code: a plugin whose loss
    changed between two runs had its stage reused. Now its source is in the key."""
    from tests.conftest import installed_plugin
    from tests.engine.test_registry import THIRD_PARTY

    env = installed_plugin(tmp_path, "kdlab_logit_l2", THIRD_PARTY, "logit_l2 = kdlab_logit_l2:LogitL2")
    recipe = write_recipe(TINY.replace("methods.supervised = {}", "methods.supervised = {}\nmethods.logit_l2 = {}", 1))
    cmd = [sys.executable, "-m", "kdlab", "run", str(recipe), "--stage-store", str(tmp_path / "store"),
           "--set", "plugins.tensorboard.enabled=false"]

    def run_once(n):
        done = subprocess.run([*cmd, "--out", str(tmp_path / f"r{n}")], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return next((tmp_path / f"r{n}" / "tiny").iterdir())

    first, same = run_once(0), run_once(1)
    assert _trained(first, "teacher") and not _trained(same, "teacher")  # unchanged code: reused
    module = tmp_path / "site" / "kdlab_logit_l2" / "__init__.py"
    module.write_text(module.read_text().replace("logits.pow(2).mean()", "logits.abs().mean()"))
    edited = run_once(2)
    assert _trained(edited, "teacher")  # the edited loss runs in the teacher stage: trained again
    assert (edited / "models" / "teacher.pt").read_bytes() != (first / "models" / "teacher.pt").read_bytes()


def test_kdlab_store_lists_verifies_and_removes(write_recipe, tmp_path, catalogue, capsys):
    recipe = write_recipe()
    store = tmp_path / "store"
    run(recipe, out=tmp_path / "a", catalogue=catalogue, stage_store=store)
    entries = StageStore(store).entries()
    assert sorted(e.stage for e in entries) == ["student", "teacher"]
    teacher = next(e for e in entries if e.stage == "teacher")
    assert teacher.size > 0 and "kdlab" in teacher.about["code"] and teacher.about["table"]["epochs"] == 2
    capsys.readouterr()
    assert main(["store", "list", str(store), "-v"]) == 0
    out = capsys.readouterr().out
    assert "2 entries" in out and teacher.key in out and "made by: kdlab" in out and '"epochs": 2' in out
    assert main(["store", "verify", str(store)]) == 0
    assert "2 ok, 0 damaged" in capsys.readouterr().out
    (teacher.path / "models" / "teacher.pt").unlink()
    (teacher.path / "models" / "teacher.pt").write_bytes(b"not a model")
    assert main(["store", "verify", str(store)]) == 1
    out = capsys.readouterr().out
    assert f"{teacher.key}  teacher      DAMAGED: models/teacher.pt does not match its checksum" in out
    assert main(["store", "verify", str(store), "--remove-damaged"]) == 0
    assert [e.stage for e in StageStore(store).entries()] == ["student"]
    assert main(["store", "remove", str(store), "--older-than", "2000-01-01"]) == 0
    assert len(StageStore(store).entries()) == 1  # filed today: kept
    assert main(["store", "remove", str(store), "zzz"]) == 2
    assert "zzz: no entry" in capsys.readouterr().err
    assert main(["store", "remove", str(store), "--older-than", "2999-01-01"]) == 0
    assert StageStore(store).entries() == []
    assert main(["store", "list", str(tmp_path / "none")]) == 2


def test_a_data_file_rewritten_in_place_retrains_the_stage(write_recipe, tmp_path, catalogue):
    """The key held the data's settings (paths), not its contents: text data rewritten under the
    same path had its stages reused."""
    from tests.data.test_text import make_dialogues

    corpus = make_dialogues(tmp_path / "corpus", n=20)
    recipe = write_recipe(f"""
name = "lm"
device = "cpu"
[data]
dataset = "text"
dir = "{corpus}"
seq_len = 32
vocab_size = 300
batch_size = 8
[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[plugins.lm_metrics]
enabled = false
[stages.lm]
epochs = 1
model = {{ arch = "transformer_lm", layers = 1, width = 16, heads = 2 }}
methods.lm = {{}}
""")
    store = tmp_path / "store"
    first = run(recipe, out=tmp_path / "a", catalogue=catalogue, stage_store=store)
    same = run(recipe, out=tmp_path / "b", catalogue=catalogue, stage_store=store)
    assert _trained(first.run_dir, "lm") and not _trained(same.run_dir, "lm")
    train = next(corpus.glob("train.*"))
    text = train.read_text(encoding="utf-8")
    stat = train.stat()
    assert "Моя" in text
    train.write_text(text.replace("Моя", "Мой"), encoding="utf-8")  # other data under the same path, same size and mtime
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    edited = run(recipe, out=tmp_path / "c", catalogue=catalogue, stage_store=store)
    assert _trained(edited.run_dir, "lm")
