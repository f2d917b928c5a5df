"""The ``--nproc N`` launcher's torchrun: ``python -m kdlab.engine.launch TORCHRUN-ARGS``.

torchrun itself, with one difference: a worker's error reaches the terminal as the one line a
single process prints. Each worker hands its error line to this process (a file per rank in
the directory named by ``KDLAB_RANK_ERRORS``) instead of printing it, and the workers that
stopped only because another one did (a closed connection) print nothing; this process prints
the line of the worker that failed first, and exits 2 like one process would. torchrun's own
account of a failure (its log lines and the "ChildFailedError" block) is shown only for a
worker that crashed without such a line (a bug, a signal, running out of memory).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ENV = "KDLAB_RANK_ERRORS"


def hand_over(lines: list[str]) -> bool:
    """In a worker of this launcher: leave ``lines`` (the error) for the launcher to print.
    False outside one (print them)."""
    where = os.environ.get(ENV)
    if not where or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    path = Path(where) / f"rank{os.environ.get('RANK', '0')}"
    path.write_text(f"{time.time()!r}\n" + "".join(f"{ln}\n" for ln in lines), encoding="utf-8")
    return True


def first_error(where: Path) -> list[str]:
    """The lines of the worker whose error came first (none: no worker left one)."""
    found = []
    for path in where.glob("rank*"):
        stamp, *lines = path.read_text(encoding="utf-8").splitlines()
        found.append((float(stamp), lines))
    return min(found)[1] if found else []


def main(argv: list[str]) -> int:
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    for name in list(logging.root.manager.loggerDict):  # torchrun's log lines; a crash is reported below
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    where = Path(tempfile.mkdtemp(prefix="kdlab-ranks-"))
    os.environ[ENV] = str(where)
    try:
        torchrun(argv)
        return 0
    except ChildFailedError as exc:
        lines = first_error(where)
        if lines:
            for line in lines:
                print(line, file=sys.stderr)
            return 2
        _, failure = exc.get_first_failure()
        if failure.exitcode in (130, 143):  # interrupted: the workers said where to continue
            return failure.exitcode
        print(exc.format_msg(), file=sys.stderr)
        return 1
    except SignalException as exc:  # stopped by a signal: the workers saved and rank 0 said how to continue
        return 128 + int(exc.sigval)
    finally:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
