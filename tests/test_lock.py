"""The install is the tested set: pyproject's exact pins agree with constraints.txt, and the
environment the tests run in is the lock (what CI installs through the README's command)."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, ver = line.partition("==")
            assert ver, f"constraints.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = ver
    return pins


def test_torch_family_is_pinned_exactly_and_matches_the_lock():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = _lock()
    for name in ("torch", "torchvision", "torchaudio"):
        spec = next(d for d in deps if re.match(rf"{name}\s*==", d))
        assert "*" not in spec, spec
        assert spec.split("==")[1].strip() == lock[name]


def test_the_installed_environment_is_the_lock():
    wrong = {}
    for name, ver in _lock().items():
        try:
            got = version(name)
        except PackageNotFoundError:
            continue  # a platform-specific wheel (CUDA libraries) absent on this platform
        if got.split("+")[0] != ver.split("+")[0]:
            wrong[name] = (got, ver)
    assert wrong == {}
