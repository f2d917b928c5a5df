"""Shared stages: a finished stage filed under the hash of everything that determines it.

Runs of a sweep or a search often share a stage (typically the teacher: same architecture,
data, seed and settings in every run). With a store (``kdlab run --stage-store DIR``; ``kdlab
sweep`` and ``kdlab search`` use ``<out>/.kdlab-stages``), a stage whose key is already in the
store is not trained again: its exported model, metrics and history are copied into the run.

The key hashes the stage's resolved table (model, methods, optimizer, epochs, ...), its name,
the recipe's seed, device (and the kind it resolves to), determinism, data table and default-on
plugin tables, the kdlab version, the torch version, a digest of the source of every package whose
code the stage runs (kdlab's, and each plugin's, model's and data set's package: an edited loss
retrains, also in an editable install), and the keys of the stages it reads (teachers, ``init``)
-- or the bytes of a model file it reads -- and the built data set's key, which holds the
contents of its files (:mod:`kdlab.data.fingerprint`): a data file rewritten in place retrains.
``key.json`` in the entry keeps what the key hashes; ``kdlab store list DIR`` shows it.

An entry is checked before it is restored: ``files.json`` lists its files with their SHA-256,
every path inside the entry (an absolute path or ``..`` is refused), and ``stage.json`` must be a
table of metrics. A damaged entry is one warning line, and the stage is trained and filed again.

Safe under concurrent workers: a process about to train a stage holds an exclusive lock on
``<store>/<key>.lock`` (``fcntl.flock``) until the stage is filed, so a second process that
needs the same stage waits and then reuses it instead of training it twice; a process that
dies drops its lock and leaves nothing half-filed (an entry is published by one rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import attrs
import torch

from kdlab.engine import checkpoint
from kdlab.engine.errors import writing
from kdlab.engine.plan import stage_plugins
from kdlab.engine.recipe import Recipe, recipe_to_dict

log = logging.getLogger("kdlab")


def _kdlab_version() -> str:
    try:
        return version("kdlab")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_distributions = functools.lru_cache(maxsize=1)(packages_distributions)  # top-level name -> distributions


@functools.lru_cache(maxsize=None)
def _source_digest(top: str) -> str:
    """SHA-256 of the Python source of one top-level package (every .py file under it, by path
    and content) or module: an edited loss, model or loader changes it, also in an editable
    install whose version never changes. Computed once per process."""
    module = sys.modules.get(top) or importlib.import_module(top)
    path = Path(getattr(module, "__file__", None) or "")
    if not path.is_file():
        return f"no-source:{top}"
    if {"site-packages", "dist-packages"} & set(path.parts):
        # installed from a release (torch, torchvision, transformers): its version names its code,
        # and hashing thousands of files would cost seconds per run. Editable installs and source
        # trees (kdlab's own, a plugin being written) are hashed.
        dists = _distributions().get(top, [])
        if dists:
            return "release:" + ",".join(f"{d} {version(d)}" for d in sorted(set(dists)))
    files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def code_digest(objects) -> dict[str, str]:
    """Top-level package -> source digest, for the packages that define ``objects`` (plugin
    classes, model and data-set builders) and for kdlab itself, with the torch version."""
    tops = {"kdlab"}
    for obj in objects:
        module = inspect.getmodule(obj)
        if module is not None:
            tops.add(module.__name__.split(".")[0])
    return {**{top: _source_digest(top) for top in sorted(tops)}, "torch version": torch.__version__}


def _stage_code(recipe: Recipe, catalogue, name: str) -> dict[str, str]:
    """The code a stage runs: its methods, the default-on plugins, its model, the data set."""
    stage = recipe.stages[name]
    if catalogue is None:
        return code_digest([])
    objects = [catalogue.plugins[n].factory for n in stage_plugins(recipe, catalogue, name) if n in catalogue.plugins]
    for registry, key in ((catalogue.models, getattr(stage.model, "arch", None)), (catalogue.datasets, recipe.data.name)):
        if key in registry:
            objects.append(registry[key].build)
    return code_digest(objects)


def stage_key_contents(recipe: Recipe, catalogue=None, data_key: dict | None = None) -> dict[str, tuple[str, dict]]:
    """Stage name -> (content key, what it hashes), for every stage of the recipe (in order).
    With ``catalogue``, the key also holds the source of every package whose code the stage
    runs; with ``data_key`` (the built data set's :attr:`DataBundle.key`), the contents of the
    data files."""
    plain = recipe_to_dict(recipe)
    common = {k: plain[k] for k in ("seed", "device", "deterministic", "data", "plugins")}
    # "auto" trains on CUDA where there is one: the same recipe on another kind of device is another stage
    common["device_kind"] = "cuda" if recipe.device == "cuda" or (recipe.device == "auto" and torch.cuda.is_available()) else "cpu"
    common["data_key"] = data_key or {}
    found: dict[str, tuple[str, dict]] = {}
    for name, stage in recipe.stages.items():
        inputs = {}
        for ref in [*stage.teachers, *([stage.init] if stage.init else [])]:
            if ref in found:
                inputs[ref] = found[ref][0]
            else:  # a model file: by its bytes (a missing file fails later, with the loop's error)
                path = Path(ref)
                inputs[ref] = _file_digest(path) if path.is_file() else f"missing:{ref}"
        content = {"kdlab": _kdlab_version(), "code": _stage_code(recipe, catalogue, name),
                   "stage": name, "table": plain["stages"][name],
                   "inputs": inputs, **common}
        found[name] = (hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:24], content)
    return found


def stage_keys(recipe: Recipe, catalogue=None, data_key: dict | None = None) -> dict[str, str]:
    """Stage name -> content key (see :func:`stage_key_contents`)."""
    return {name: key for name, (key, _) in stage_key_contents(recipe, catalogue, data_key).items()}


def _stage_files(run_dir: Path, stage: str) -> list[Path]:
    """What a finished stage leaves in its run directory, relative to it (checkpoints excluded:
    a finished stage is never resumed)."""
    found = [p.relative_to(run_dir) for p in (run_dir / "models").glob(f"{stage}.*") if p.is_file()]
    found += [p.relative_to(run_dir) for p in [run_dir / "history" / f"{stage}.jsonl"] if p.is_file()]
    tb = run_dir / "tb" / stage
    if tb.is_dir():
        found += [p.relative_to(run_dir) for p in tb.rglob("*") if p.is_file()]
    return found


def _link_or_copy(src: Path, dst: Path) -> None:
    with writing(dst):  # a full disk names the file being written, not the one read
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)  # no second copy of a large model on the same file system
        except OSError:
            shutil.copy2(src, dst)


def check_entry(entry: Path) -> tuple[str | None, dict, dict[str, str]]:
    """Load a filed entry and check it before anything is restored: stage.json a table of
    metrics; files.json a table of paths inside the entry (no absolute path, no ..) with their
    SHA-256, each file present with that digest. Returns (problem or None, metrics, files)."""
    try:
        metrics = json.loads((entry / "stage.json").read_text(encoding="utf-8"))
        files = json.loads((entry / "files.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable: {exc}", {}, {}
    if not isinstance(metrics, dict):
        return "stage.json is not a table of metrics", {}, {}
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(d, str) for k, d in files.items()):
        return "files.json is not a table of file -> sha256 (an entry of an older kdlab?)", {}, {}
    root = entry.resolve()
    for rel, digest in files.items():
        path = (entry / rel).resolve()
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not path.is_relative_to(root):
            return f"files.json names {rel!r}, outside the entry", {}, {}
        if not path.is_file():
            return f"{rel} is missing", {}, {}
        if _file_digest(path) != digest:
            return f"{rel} does not match its checksum", {}, {}
    return None, metrics, files


class Claim:
    """A held lock on one key: ``metrics`` is the filed stage's metrics (None: not filed yet, or
    the entry is damaged; train it and ``publish``)."""

    def __init__(self, store: StageStore, key: str, about: dict | None = None):
        self.store, self.key, self.about = store, key, about or {}
        self.entry = store.root / key
        self.files: dict[str, str] = {}  # relative path -> sha256
        self.metrics: dict | None = None
        if (self.entry / "stage.json").is_file():
            problem, metrics, files = check_entry(self.entry)
            if problem is None:
                self.metrics, self.files = metrics, files
                return
            log.warning("stage store entry %s is damaged (%s); the stage is trained again", self.entry, problem)

    def restore(self, run_dir: Path, stage: str) -> dict:
        """Copy the filed (and checked) stage into ``run_dir``; returns its metrics."""
        for rel in self.files:
            _link_or_copy(self.entry / rel, run_dir / rel)
        marker = run_dir / "history" / f"{stage}.reused"  # what it trained itself: kdlab.studies.search
        marker.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save_text(f"{self.entry}\n", marker)
        log.info("stage %s: reused from the stage store (%s)", stage, self.entry)
        return dict(self.metrics)

    def publish(self, run_dir: Path, stage: str, metrics: dict) -> None:
        """File the stage just trained in ``run_dir`` (atomically: a temporary folder renamed)."""
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.key}.", dir=self.store.root))
        try:
            files = _stage_files(run_dir, stage)
            for rel in files:
                _link_or_copy(run_dir / rel, tmp / rel)
            self.files = {str(r): _file_digest(tmp / r) for r in files}
            checkpoint.save_text(json.dumps(self.files, indent=1), tmp / "files.json")
            checkpoint.save_text(json.dumps(metrics, indent=1), tmp / "stage.json")
            checkpoint.save_text(json.dumps(
                {"stage": stage, "run_dir": str(run_dir), "filed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "key": self.about}, indent=1, sort_keys=True, default=str), tmp / "key.json")
            checkpoint.save_text(f"{run_dir}\n", tmp / "source.txt")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk: no half-filed entry is left behind
            raise
        shutil.rmtree(self.entry, ignore_errors=True)  # a damaged entry
        os.rename(tmp, self.entry)
        self.metrics = metrics


@attrs.frozen
class Entry:
    """One filed stage, as ``kdlab store list`` shows it."""

    key: str
    path: Path
    stage: str
    run_dir: str
    filed: float  # modification time of the entry (seconds since the epoch)
    size: int  # bytes
    about: dict


class StageStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @contextlib.contextmanager
    def claim(self, key: str, stage: str, about: dict | None = None) -> Iterator[Claim]:
        """Hold ``key``'s lock (waiting for another process that holds it) for the block."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                log.info("stage %s: another process is training the same stage; waiting for it", stage)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield Claim(self, key, about)
        finally:
            os.close(fd)  # drops the lock

    def has(self, key: str) -> bool:
        """Whether ``key`` is filed and its files check out (read without taking the lock)."""
        return (self.root / key / "stage.json").is_file() and check_entry(self.root / key)[0] is None

    def entries(self) -> list[Entry]:
        """Every filed entry (damaged ones included; :func:`check_entry` tells which), oldest first."""
        found = []
        for path in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if not path.is_dir() or path.name.startswith(".") or not (path / "stage.json").exists():
                continue
            try:
                about = json.loads((path / "key.json").read_text(encoding="utf-8"))
                about = about if isinstance(about, dict) else {}
            except (OSError, ValueError):
                about = {}
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            found.append(Entry(key=path.name, path=path, stage=str(about.get("stage", "?")),
                               run_dir=str(about.get("run_dir", "?")), filed=(path / "stage.json").stat().st_mtime,
                               size=size, about=about.get("key", {}) if isinstance(about.get("key"), dict) else {}))
        return sorted(found, key=lambda e: e.filed)

    def remove(self, key: str) -> None:
        """Delete one entry, holding its lock (a run that is reading it finishes first)."""
        with self.claim(key, key):
            shutil.rmtree(self.root / key, ignore_errors=True)
        # the lock file stays: a process waiting on it holds that very file
