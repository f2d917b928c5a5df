"""Shared fixtures: small recipes on the bundled digits data, and in-process runs."""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from kdlab.engine.registry import discover

# Where the recipes of the tests train: the CPU, or KDLAB_TEST_DEVICE=cuda on a GPU machine
# (the same tests then check the CUDA paths; see CONTRIBUTING.md).
TEST_DEVICE = os.environ.get("KDLAB_TEST_DEVICE", "cpu")

# the data-file digest memo (kdlab.data.fingerprint) of the tests' processes, not the user's
os.environ.setdefault("KDLAB_CACHE_DIR", tempfile.mkdtemp(prefix="kdlab-test-cache-"))

# A recipe small enough that a stage trains in well under a second on the CPU.
TINY = """
name = "tiny"
seed = 0
device = "cpu"

[data]
dataset = "digits"
batch_size = 64

[plugins.progress]
enabled = false

[defaults]
epochs = 2
optimizer = { name = "adam", lr = 0.01 }
model = { arch = "cnn", channels = [4, 8] }

[stages.teacher]
model = { arch = "cnn", channels = [8, 16] }
methods.supervised = {}

[stages.student]
teachers = ["teacher"]
methods.logit_kd = { temperature = 4.0, alpha = 0.5 }
""".replace('device = "cpu"', f'device = "{TEST_DEVICE}"')


@pytest.fixture(autouse=True)
def _threads():
    # identical thread counts keep CPU kernels bit-for-bit reproducible between runs of a test
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def catalogue():
    return discover()


@pytest.fixture
def write_recipe(tmp_path):
    def write(text: str = TINY, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def rank_shares(make_data, epoch: int, world_size: int = 2) -> list[list]:
    """Each rank's training batches of ``epoch``, from a fresh data bundle per rank
    (``make_data()``), as ``world_size`` processes would load them."""
    shares = []
    for rank in range(world_size):
        data = make_data()
        data.train.shard(rank, world_size)
        data.train.set_epoch(epoch)
        shares.append(list(data.train))
    return shares


def installed_plugin(tmp_path: Path, package: str, code: str, entry: str, env: dict | None = None) -> dict:
    """Install a one-module package the way pip leaves it (the module and a .dist-info naming
    ``entry`` under kdlab.plugins) in ``tmp_path/site``; the environment a subprocess finds it in."""
    site = tmp_path / "site"
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(code)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[kdlab.plugins]\n{entry}\n")
    env = dict(os.environ if env is None else env)
    return {**env, "PYTHONPATH": os.pathsep.join([str(site), env.get("PYTHONPATH", "")])}

