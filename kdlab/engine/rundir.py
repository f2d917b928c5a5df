"""Ownership of a run directory: one writer at a time, and no debris from a killed one.

``lock`` takes an exclusive advisory lock (``fcntl.flock``) on ``<run>/.lock`` for as long as the
run trains: a second ``kdlab run`` on the same directory (the same ``--run-id``, a ``--resume``
while the first still runs) is refused with the owner's pid instead of interleaving its logs and
checkpoints. The kernel drops the lock when the owner dies, however it dies. Written by hand:
the standard library has ``fcntl.flock`` but no lock-file helper, and no dependency is worth it.

``clean_stale_temp_files`` removes the temporary files of atomic writes that a kill interrupted
(``.<name>.<random>.tmp``); it runs under the lock, so no live writer owns them.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from kdlab.engine.errors import KdlabError

log = logging.getLogger("kdlab")


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self, wait: bool = False) -> RunLock:
        """Take the lock; if another process holds it, fail naming it, or (``wait``) wait for it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if wait:
                log.info("%s: in use by pid %s; waiting for it", self.path.parent, owner)
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                os.close(fd)
                raise KdlabError(f"{self.path.parent}: in use by another kdlab process (pid {owner}); "
                                 "wait for it to finish or stop it, then run again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def clean_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete what interrupted atomic writes left behind; returns the paths removed."""
    removed = []
    for path in Path(run_dir).rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
