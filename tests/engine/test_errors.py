"""Failed writes (kdlab.engine.errors.writing): a full disk ends a run with one line naming the
file that could not be written, and the run continues with --resume to the same result as a run
that never stopped.

A full disk is simulated with a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) on the kdlab
process: every write past the limit fails with EFBIG, the way writes fail with ENOSPC on a full
disk, through the same code paths."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest

from kdlab.engine.errors import KdlabError, WriteError, writing

RECIPE = """
name = "fd"
seed = 0
device = "cpu"
[data]
dataset = "digits"
batch_size = 64
[defaults]
epochs = 2
optimizer = { name = "adam", lr = 0.01 }
model = { arch = "cnn", channels = [4, 8] }
[stages.teacher]
methods.supervised = {}
[stages.student]
teachers = ["teacher"]
methods.logit_kd = { temperature = 4.0, alpha = 0.5 }
methods.teacher_cache = { dir = "CACHE" }
"""


def test_writing_names_the_path_for_an_os_error_and_for_torchs_zip_writer(tmp_path):
    target = tmp_path / "m.pt"
    with pytest.raises(WriteError, match=r"m\.pt: could not write \(No space left on device\)"):
        with writing(target):
            raise OSError(28, "No space left on device")
    with pytest.raises(WriteError, match=r"m\.pt: could not write \(torch's writer failed, a full disk\?"):
        with writing(target):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 6784 vs 6680")
    with pytest.raises(RuntimeError, match="a bug"):  # any other error is not a failed write
        with writing(target):
            raise RuntimeError("a bug")
    assert issubclass(WriteError, KdlabError)  # the command line prints it as one line, exit 2


def _kdlab(args, cwd, limit=None):
    def full_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kdlab", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          preexec_fn=full_disk if limit else None)


# bytes a file may hold -> the file that is first too large for it
CASES = {1000: "fd/a/plugins.json", 2000: "fd/a/tb/teacher", 10000: "fd/a/checkpoints/teacher/last.pt",
         30000: "%2Flogits.npy"}  # 30000: the teacher cache on disk (43 kB of logits)


@pytest.mark.parametrize("limit", list(CASES))
def test_a_full_disk_is_one_line_naming_the_file_and_the_run_resumes_to_the_same_result(limit, tmp_path):
    (tmp_path / "recipe.toml").write_text(RECIPE.replace("CACHE", str(tmp_path / "cache")))
    run = ["run", "recipe.toml", "--out", "runs", "--run-id", "a"]
    done = _kdlab(["run", "recipe.toml", "--out", "reference", "--run-id", "a"], tmp_path)
    assert done.returncode == 0, done.stderr
    shutil.rmtree(tmp_path / "cache")  # the run below writes the teacher cache again

    for attempt in range(2):  # the first run and a resume, both on the full disk
        failed = _kdlab(run, tmp_path, limit)
        assert failed.returncode == 2, failed.stderr
        last = failed.stderr.strip().splitlines()[-1]
        assert last.startswith("kdlab: error: ") and CASES[limit] in last and "could not write" in last, failed.stderr
        assert "Traceback" not in failed.stderr
        if limit > 1000:  # the run directory exists: the line says how to continue
            assert last.endswith("--resume runs/fd/a"), last
        else:
            assert not (tmp_path / "runs/fd/a/recipe.toml").exists()  # no half-written recipe
    assert not list((tmp_path / "runs").rglob("*.tmp")), "a temporary file was left behind"
    if (tmp_path / "cache").exists():
        assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]

    resumed = _kdlab(run, tmp_path)  # room again: the same command continues the run
    assert resumed.returncode == 0, resumed.stderr
    for name in ("models/teacher.pt", "models/student.pt", "history/teacher.jsonl", "history/student.jsonl"):
        assert (tmp_path / "runs/fd/a" / name).read_bytes() == (tmp_path / "reference/fd/a" / name).read_bytes(), name


def test_a_full_disk_under_nproc_is_the_same_one_line(tmp_path):
    """Rank 0 writes and fails; rank 1 then loses its peer. The launcher prints rank 0's line
    once: no worker traceback, no torchrun failure report."""
    (tmp_path / "recipe.toml").write_text(RECIPE.replace("CACHE", str(tmp_path / "cache")))
    run = ["run", "recipe.toml", "--out", "runs", "--run-id", "a", "--nproc", "2"]
    failed = _kdlab(run, tmp_path, 10000)
    assert failed.returncode == 2, failed.stderr
    errors = [ln for ln in failed.stderr.splitlines() if ln.startswith("kdlab: error: ")]
    assert len(errors) == 1 and "fd/a/checkpoints/teacher/last.pt: could not write" in errors[0], failed.stderr
    for noise in ("Traceback", "ChildFailedError", "FAILED", "Sending process"):
        assert noise not in failed.stderr, failed.stderr
    resumed = _kdlab(run, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "runs/fd/a/models/student.pt").is_file()
