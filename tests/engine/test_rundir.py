"""One writer per run directory; SIGTERM stops a run like Ctrl-C with the real resume command;
debris of interrupted writes is removed; sweep children die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from kdlab.engine.runner import run
from tests.conftest import TINY


def _wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_second_writer_refused_and_sigterm_prints_the_resume_command(write_recipe, tmp_path):
    recipe = write_recipe(TINY.replace("epochs = 2", "epochs = 2000"))
    cmd = [sys.executable, "-m", "kdlab", "run", str(recipe), "--out", str(tmp_path), "--run-id", "same",
           "--set", "seed=0"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "tiny" / "same"
    try:
        # an epoch has finished (checkpoints are paced by time: last.pt comes with the SIGTERM)
        assert _wait_for(lambda: (run_dir / "history" / "teacher.jsonl").is_file()), "no epoch finished"
        second = subprocess.run(cmd, capture_output=True, text=True)
        assert second.returncode == 2
        assert f"{run_dir}: in use by another kdlab process (pid {first.pid})" in second.stderr
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 143  # SIGTERM: 128 + 15
    assert "Traceback" not in err
    assert f"continue with: kdlab run {recipe} --set=seed=0 --resume {run_dir}" in err
    assert (run_dir / "checkpoints" / "teacher" / "last.pt").is_file()


def test_temp_files_of_interrupted_writes_are_removed(write_recipe, tmp_path, catalogue):
    recipe = write_recipe()
    result = run(recipe, out=tmp_path, run_id="r", catalogue=catalogue)
    debris = [result.run_dir / "checkpoints" / "student" / ".last.pt.abc123.tmp", result.run_dir / ".metrics.json.x.tmp"]
    for path in debris:
        path.write_bytes(b"half a checkpoint")
    run(recipe, out=tmp_path, run_id="r", catalogue=catalogue)  # finished: nothing trains, the directory is tidied
    assert not any(p.exists() for p in debris)
    assert (result.run_dir / "checkpoints" / "student" / "last.pt").is_file()


def test_sweep_children_die_with_their_parent(tmp_path):
    parent = textwrap.dedent(f"""
        import subprocess, sys
        from kdlab.studies.sweep import die_with_parent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=die_with_parent)
        print(child.pid, flush=True)
        child.wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)  # the parent alone, as `kill -9 <sweep pid>` would
    proc.wait()

    def gone():
        try:
            with open(f"/proc/{child}/stat") as f:
                return f.read().split()[2] == "Z"  # a zombie waiting for init: dead
        except FileNotFoundError:
            return True

    assert _wait_for(gone, timeout=10)


def test_sigterm_exits_143_and_sigint_130(write_recipe, tmp_path):
    """A scheduler's stop (SIGTERM) exits with its own code, 128 + 15; Ctrl-C keeps 130."""
    recipe = write_recipe(TINY.replace("epochs = 2", "epochs = 2000"))
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        run_dir = tmp_path / "tiny" / sig.name
        cmd = [sys.executable, "-m", "kdlab", "run", str(recipe), "--out", str(tmp_path), "--run-id", sig.name]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert _wait_for(lambda: (run_dir / "history" / "teacher.jsonl").is_file()), "no epoch finished"
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == code, err
        assert "Traceback" not in err and "continue with:" in err
