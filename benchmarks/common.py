"""Pieces shared by the speed benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def peak_of(code: str, args: list[str], cwd: Path, *, python: str = sys.executable, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh ``python`` in ``cwd`` (whose kdlab it imports) -> its last JSON line,
    with the process's own peak resident memory (wait4's ru_maxrss) as ``peak`` if it gives none.
    ``env``: the environment (default: this one with ``PYTHONPATH = cwd``)."""
    env = env if env is not None else {**os.environ, "PYTHONPATH": str(cwd)}
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([python, "-c", code, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=err,
                                text=True, env=env)
        out = proc.stdout.read()  # communicate() would reap the child and lose its rusage: wait4 it here
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"{python} failed in {cwd}:\n{err.read()[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.setdefault("peak", usage.ru_maxrss * 1024)
    return result


# Every writer off, so that only training is timed (no braces: safe inside str.format templates).
QUIET = """[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[plugins.checkpoint]
enabled = false
[plugins.history]
enabled = false
"""

# One logit-KD stage of the [4, 8] digits student from a teacher file, with every writer off, so
# that only training is timed. Format with epochs, batch, lr, teacher, t, alpha, and cache
# (either "" or "methods.teacher_cache = {}").
KD_RECIPE = """
name = "kd_bench"
device = "cpu"
[data]
dataset = "digits"
batch_size = {batch}
""" + QUIET + """[stages.student]
epochs = {epochs}
eval_every = {epochs}
model = {{ arch = "cnn", channels = [4, 8] }}
optimizer = {{ name = "adam", lr = {lr} }}
teachers = ["{teacher}"]
methods.logit_kd = {{ temperature = {t}, alpha = {alpha} }}
{cache}
"""
