"""Runs end to end: run directory layout, metrics, exact resume after a crash or a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from kdlab import KdlabError, hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from tests.conftest import TINY, state_dicts_equal

# Dropout draws from the global RNG, so resume must restore it for the weights to match.
# a checkpoint every epoch (not every minute): a crash, unlike Ctrl-C, leaves only what was written
RESUME = TINY.replace("epochs = 2", "epochs = 4").replace(
    'model = { arch = "cnn", channels = [4, 8] }', 'model = { arch = "cnn", channels = [4, 8], dropout = 0.3 }'
) + "\n[plugins.checkpoint]\nevery = 1\n"


class Crash:
    """Raises in the middle of an epoch of the student stage while armed."""

    default_enabled = True
    armed = False

    @hookimpl
    def kdlab_step_end(self, stage):
        if Crash.armed and stage.name == "student" and stage.epoch == 2 and stage.step % 17 == 5:
            raise RuntimeError("simulated crash")


def test_run_directory_layout(write_recipe, tmp_path, catalogue):
    result = run(write_recipe(), out=tmp_path / "runs", catalogue=catalogue)
    run_dir = result.run_dir
    assert run_dir.parent == tmp_path / "runs" / "tiny"
    assert (run_dir / "recipe.toml").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics) == ["teacher", "student"]
    for stage in metrics.values():
        assert 0 <= stage["test/accuracy"] <= 1 and stage["params"] > 0 and stage["macs"] > 0
    assert metrics["teacher"]["params"] > metrics["student"]["params"]
    for stage in ("teacher", "student"):
        assert (run_dir / "models" / f"{stage}.pt").is_file()
        assert (run_dir / "checkpoints" / stage / "last.pt").is_file()
        assert (run_dir / "checkpoints" / stage / "best.pt").is_file()
        assert list((run_dir / "tb" / stage).glob("events.out.tfevents.*"))


def test_resume_after_crash_gives_identical_weights(write_recipe, tmp_path):
    cat = discover(extra={"crash": Crash})
    recipe = write_recipe(RESUME)
    reference = run(recipe, out=tmp_path / "a", catalogue=cat)

    Crash.armed = True
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(recipe, out=tmp_path / "b", catalogue=cat)
    Crash.armed = False
    crashed_dir = next((tmp_path / "b" / "tiny").iterdir())
    assert not (crashed_dir / "models" / "student.pt").exists()
    assert torch.load(crashed_dir / "checkpoints/student/last.pt", weights_only=True)["epoch"] == 2

    resumed = run(recipe, out=tmp_path / "b", resume=crashed_dir, catalogue=cat)
    assert resumed.run_dir == crashed_dir
    for stage in ("teacher", "student"):
        a = torch.load(reference.run_dir / "models" / f"{stage}.pt", weights_only=True)["state_dict"]
        b = torch.load(resumed.run_dir / "models" / f"{stage}.pt", weights_only=True)["state_dict"]
        assert state_dicts_equal(a, b), stage
    for stage in ("teacher", "student"):
        for key in ("test/accuracy", "val/accuracy", "test/loss", "params", "macs", "bytes"):
            assert resumed.metrics[stage][key] == reference.metrics[stage][key]


STOPS = """
import os, signal

from kdlab import hookimpl


class StopsOnce:
    \"\"\"On by default, named in no recipe: stops the student stage after its first epoch (SIGTERM).\"\"\"

    default_enabled = True

    @hookimpl(trylast=True)
    def kdlab_epoch_end(self, stage, epoch):
        if stage.name == "student" and epoch == 0 and os.environ.get("KDLAB_TEST_STOP"):
            os.kill(os.getpid(), signal.SIGTERM)
"""


def test_resume_after_a_plugin_it_ran_was_uninstalled_is_refused_and_changes_nothing(write_recipe, tmp_path):
    """Without the default-on plugin the run started with, the rest of the run would be computed
    differently: the resume stops naming it, writes nothing, and continues once it is back."""
    from tests.conftest import installed_plugin

    with_plugin = installed_plugin(tmp_path, "kdlab_stops_once", STOPS, "stops_once = kdlab_stops_once:StopsOnce")
    kdlab = [sys.executable, "-m", "kdlab", "run", str(write_recipe(RESUME)), "--out", str(tmp_path), "--run-id", "r"]
    stopped = subprocess.run(kdlab, env={**with_plugin, "KDLAB_TEST_STOP": "1"}, capture_output=True, text=True)
    assert stopped.returncode == 143, stopped.stderr
    run_dir = tmp_path / "tiny" / "r"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    without = subprocess.run(kdlab, capture_output=True, text=True)
    assert without.returncode == 2, without.stderr
    assert ("stage 'student' was started with the plugin 'stops_once' (kdlab_stops_once:StopsOnce "
            "(kdlab-stops-once 0.1)), which is not installed now; install it again to continue") in without.stderr
    assert "Traceback" not in without.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    again = subprocess.run(kdlab, env=with_plugin, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert (run_dir / "models" / "student.pt").is_file()
    # a finished run resumes (to nothing) without it: its stages are done
    assert subprocess.run(kdlab, capture_output=True, text=True).returncode == 0


def test_resume_with_a_different_recipe_is_refused(write_recipe, tmp_path, catalogue):
    recipe = write_recipe()
    first = run(recipe, out=tmp_path / "runs", catalogue=catalogue)
    with pytest.raises(KdlabError, match=r"the recipe differs from the one this run started with \(in: seed\)"):
        run(recipe, overrides=["seed=3"], resume=first.run_dir, catalogue=catalogue)
    with pytest.raises(KdlabError, match="not a kdlab run directory"):
        run(recipe, resume=tmp_path / "runs", catalogue=catalogue)


def test_kill_and_resume_from_the_command_line(write_recipe, tmp_path):
    """A real SIGKILL at an arbitrary moment (possibly during a checkpoint write), then --resume."""
    recipe = write_recipe(RESUME.replace("epochs = 4", "epochs = 6"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kdlab = [sys.executable, "-m", "kdlab"]
    subprocess.run([*kdlab, "run", str(recipe), "--out", str(tmp_path / "a")], check=True, env=env,
                   capture_output=True)
    proc = subprocess.Popen([*kdlab, "run", str(recipe), "--out", str(tmp_path / "b")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "b").glob("tiny/*/checkpoints/student/last.pt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = next((tmp_path / "b" / "tiny").iterdir())
    assert not (run_dir / "models" / "student.pt").exists(), "the run finished before it could be killed"
    done = subprocess.run([*kdlab, "run", str(recipe), "--resume", str(run_dir)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ref_dir = next((tmp_path / "a" / "tiny").iterdir())
    for stage in ("teacher", "student"):
        a = torch.load(ref_dir / "models" / f"{stage}.pt", weights_only=True)["state_dict"]
        b = torch.load(run_dir / "models" / f"{stage}.pt", weights_only=True)["state_dict"]
        assert state_dicts_equal(a, b), stage


def test_teacher_and_init_from_exported_files(write_recipe, tmp_path, catalogue):
    first = run(write_recipe(), out=tmp_path / "a", catalogue=catalogue)
    teacher_file = first.run_dir / "models" / "teacher.pt"
    student_file = first.run_dir / "models" / "student.pt"
    text = TINY.split("[stages.teacher]")[0] + f"""
[stages.finetune]
epochs = 1
teachers = ["{teacher_file}"]
init = "{student_file}"
optimizer = {{ name = "sgd", lr = 1e-9, momentum = 0.0 }}
methods.logit_kd = {{ temperature = 4.0, alpha = 0.5 }}
"""
    second = run(write_recipe(text, name="second.toml"), out=tmp_path / "b", catalogue=catalogue)
    # a near-zero learning rate: the weights are still those of the init file
    # (batch-norm running statistics do move: they are not learned by the optimizer)
    init = torch.load(student_file, weights_only=True)["state_dict"]
    tuned = torch.load(second.run_dir / "models/finetune.pt", weights_only=True)["state_dict"]
    learned = [k for k in init if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.allclose(init[k], tuned[k], atol=1e-6) for k in learned)
    assert not torch.equal(init["blocks.0.1.running_mean"], tuned["blocks.0.1.running_mean"])
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"garbage")
    bad = text.replace(str(teacher_file), str(broken))
    with pytest.raises(KdlabError, match="broken.pt: not a readable torch file"):
        run(write_recipe(bad, name="bad.toml"), out=tmp_path / "c", catalogue=catalogue)


def test_run_id_continues_or_skips(write_recipe, tmp_path, catalogue):
    recipe = write_recipe()
    first = run(recipe, out=tmp_path, run_id="r1", catalogue=catalogue)
    assert first.run_dir == tmp_path / "tiny" / "r1"
    stamp = (first.run_dir / "models" / "student.pt").stat().st_mtime_ns
    again = run(recipe, out=tmp_path, run_id="r1", catalogue=catalogue)  # finished: nothing retrained
    assert again.metrics == first.metrics
    assert (first.run_dir / "models" / "student.pt").stat().st_mtime_ns == stamp
    with pytest.raises(KdlabError, match="--run-id"):
        run(recipe, out=tmp_path, run_id="../x", catalogue=catalogue)


def test_history_has_one_line_per_epoch_after_a_resume(write_recipe, tmp_path):
    cat = discover(extra={"crash": Crash})
    recipe = write_recipe(RESUME)
    Crash.armed = True
    with pytest.raises(RuntimeError):
        run(recipe, out=tmp_path, run_id="h", catalogue=cat)
    Crash.armed = False
    result = run(recipe, out=tmp_path, run_id="h", catalogue=cat)
    lines = [json.loads(x) for x in (result.run_dir / "history" / "student.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3, 4]
    assert all("val/accuracy" in x and "lr" in x for x in lines)


def test_run_id_and_recipe_name_of_dots_are_refused(write_recipe, tmp_path, catalogue):
    """"." or ".." as a run id or a recipe name would make OUT/<recipe> (or OUT) the run directory."""
    import pytest

    from kdlab.engine.errors import KdlabError, RecipeError

    for bad in (".", ".."):
        with pytest.raises(KdlabError, match=r"--run-id '\.+': .*not \. or \.\."):
            run(write_recipe(), out=tmp_path / "out", run_id=bad, catalogue=catalogue)
        with pytest.raises(RecipeError, match=r"must not be \. or \.\."):
            run(write_recipe(), out=tmp_path / "out", overrides=[f'name="{bad}"'], catalogue=catalogue)
    assert not (tmp_path / "out" / "tiny" / "recipe.toml").exists() and not (tmp_path / "out" / "recipe.toml").exists()


def test_the_largest_seed_trains(write_recipe, tmp_path, catalogue):
    """Seeds near 2^32 passed validate and ended in a traceback (a derived augmentation seed
    outside torch's range); every seed validate accepts trains."""
    from tests.conftest import TINY

    text = TINY.replace("seed = 0", "seed = 4294967295").replace("batch_size = 64", "batch_size = 64\naugment = true")
    result = run(write_recipe(text), out=tmp_path, catalogue=catalogue)
    assert result.metrics["student"]["test/accuracy"] > 0


# -- kdlab run --stages -------------------------------------------------------------------------

def _model(run_dir, stage):
    return torch.load(run_dir / "models" / f"{stage}.pt", weights_only=True)["state_dict"]


def test_stages_trains_a_subset_and_a_later_subset_completes_the_run_as_one_run_would(write_recipe, tmp_path,
                                                                                       catalogue):
    recipe = write_recipe()
    whole = run(recipe, out=tmp_path / "whole", catalogue=catalogue)
    first = run(recipe, out=tmp_path / "parts", catalogue=catalogue, stages=["teacher"])
    assert set(first.metrics) == {"teacher"} and not (first.run_dir / "models" / "student.pt").exists()
    second = run(recipe, out=tmp_path / "parts", catalogue=catalogue, resume=first.run_dir, stages=["student"])
    assert set(second.metrics) == {"teacher", "student"}
    assert second.metrics == whole.metrics | {s: second.metrics[s] for s in ("teacher", "student")}
    for stage in ("teacher", "student"):
        assert state_dicts_equal(_model(second.run_dir, stage), _model(whole.run_dir, stage))
        assert second.metrics[stage]["test/accuracy"] == whole.metrics[stage]["test/accuracy"]


def test_stages_reads_a_teacher_from_the_stage_store(write_recipe, tmp_path, catalogue):
    recipe = write_recipe()
    store = tmp_path / "store"
    whole = run(recipe, out=tmp_path / "a", catalogue=catalogue, stage_store=store)
    part = run(recipe, out=tmp_path / "b", catalogue=catalogue, stage_store=store, stages=["student"])
    assert (part.run_dir / "history" / "teacher.reused").is_file()  # read, not trained
    assert set(part.metrics) == {"teacher", "student"}
    assert state_dicts_equal(_model(part.run_dir, "student"), _model(whole.run_dir, "student"))


def test_stages_whose_teacher_is_nowhere_is_one_line_before_anything_trains(write_recipe, tmp_path):
    recipe = write_recipe()
    done = subprocess.run([sys.executable, "-m", "kdlab", "run", str(recipe), "--out", str(tmp_path / "runs"),
                           "--stages", "student"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert ("error: --stages student: stage 'student' reads stage 'teacher' (a teacher), which is not trained in this "
            "command and is not in the run directory") in done.stderr
    assert "add teacher to --stages" in done.stderr
    assert not list((tmp_path / "runs").rglob("*.pt"))  # nothing trained
    unknown = subprocess.run([sys.executable, "-m", "kdlab", "run", str(recipe), "--out", str(tmp_path / "runs"),
                              "--stages", "teacher,studnet"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "--stages: no stage 'studnet' in" in unknown.stderr
    assert "(its stages: teacher, student)" in unknown.stderr
