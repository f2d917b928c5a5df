"""Content digests of data files, for the keys of everything cached from them.

The stage store, the teacher cache and the feature caches must not serve a result made from
other data under the same path. A file's size, modification time and status-change time
(``st_ctime``, which the kernel sets on every write, rename or ``touch``, and no user call can
set back) detect a change; the SHA-256 of the contents confirms it, so a file copied elsewhere
or touched without change keeps its key. The SHA-256 of a file is remembered per fingerprint
(device, inode, size, mtime, ctime) in ``$KDLAB_CACHE_DIR/file-digests.json`` (default
``~/.cache/kdlab``), so an unchanged data set is not read again on the next run.

Hand-written: hashlib and os.stat are the library; no package keeps a digest memo keyed by
ctime (pip's and Hugging Face's caches key by URL or name).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

_memo: dict[str, str] | None = None
_dirty = False


def cache_root() -> Path:
    """kdlab's per-user cache: ``$KDLAB_CACHE_DIR``, default ``~/.cache/kdlab``."""
    return Path(os.environ.get("KDLAB_CACHE_DIR") or Path.home() / ".cache" / "kdlab")


def _memo_path() -> Path:
    return cache_root() / "file-digests.json"


def _load_memo() -> dict[str, str]:
    global _memo
    if _memo is None:
        try:
            loaded = json.loads(_memo_path().read_text(encoding="utf-8"))
            _memo = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, str)} \
                if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            _memo = {}  # no memo yet, or a damaged one: digests are computed again
    return _memo


def _save_memo() -> None:
    global _dirty
    if not _dirty:
        return
    path = _memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".file-digests.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(_memo, f)
            os.replace(tmp, path)  # one rename: a concurrent writer loses entries, never the file
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise
        _dirty = False
    except OSError:
        pass  # a read-only home or a full disk: the memo is an optimisation only


def file_sha256(path: Path) -> str:
    """SHA-256 of one file's contents, read again only when its fingerprint changed."""
    global _dirty
    st = path.stat()
    fp = f"{path.resolve()}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
    memo = _load_memo()
    if fp not in memo:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        memo[fp] = h.hexdigest()
        _dirty = True
    return memo[fp]


def files_digest(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """One digest of the contents of ``paths`` (folders: every file under them, hidden ones
    -- e.g. a feature cache -- excluded), by their names relative to ``root`` (or to each
    given path) and contents. A missing path is part of the digest, not an error: the loader
    reports it."""
    h = hashlib.sha256()
    for given in paths:
        given = Path(given)
        base = Path(root) if root is not None else given.parent
        if given.is_dir():
            files = sorted(p for p in given.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(given).parts))
            base = Path(root) if root is not None else given
        else:
            files = [given]
        for f in files:
            name = os.path.relpath(f, base)
            h.update(f"{name}\0{file_sha256(f) if f.is_file() else 'missing'}\n".encode())
    _save_memo()
    return h.hexdigest()[:24]


def modules_digest(*names: str) -> str:
    """Digest of the source files of the named modules (and the versions of the distributions
    they import from, given as ``"dist:<name>"``): the code that turns data into a cached
    result, so that an edit of it is a new key."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256()
    for name in names:
        if name.startswith("dist:"):
            try:
                h.update(f"{name}={version(name[5:])}\n".encode())
            except PackageNotFoundError:
                h.update(f"{name}=none\n".encode())
            continue
        source = getattr(importlib.import_module(name), "__file__", None)
        h.update(name.encode() + b"\0" + (Path(source).read_bytes() if source else b"") + b"\n")
    return h.hexdigest()[:16]
