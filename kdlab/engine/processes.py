"""Child processes that do not outlive their parent: ``kdlab sweep`` and ``search`` runs, the
``--nproc`` launcher's torchrun and torchrun's workers."""

from __future__ import annotations

import os


def die_with_parent() -> None:
    """In a child process (``preexec_fn``, or early in a torchrun worker): have the kernel send it
    SIGTERM when its parent dies, so that killing ``kdlab sweep`` or a ``--nproc`` launcher alone
    leaves no orphan runs (Linux; elsewhere a no-op). A parent that died before the call is caught
    by the check after it."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
