"""Errors a user can fix (a bad input, a full disk). The command line prints them as one message
and exits with code 2."""

from __future__ import annotations

import contextlib


class KdlabError(Exception):
    """Bad input (a recipe, a path, a checkpoint): shown without a traceback, exit code 2."""


class RecipeError(KdlabError):
    """A recipe failed validation; ``messages`` holds every problem, each naming file and key."""

    def __init__(self, messages: list[str]):
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


def missing_extra(extra: str, package: str, feature: str) -> KdlabError:
    """The error for a feature whose optional dependency is not installed: one line naming the
    package and the extra that installs it (``raise missing_extra(...) from exc``)."""
    return KdlabError(f"{feature} needs the {package} package, which is not installed: "
                      f"pip install 'kdlab[{extra}]'")


class WriteError(KdlabError):
    """A file could not be written: a full disk, a quota, a file-size limit, a read-only or
    vanished directory. The message names the file; nothing written before is damaged (every
    checkpoint is written to a temporary file and renamed), so a run can continue with
    ``--resume`` once there is room. ``run_dir`` is set when a run was under way."""

    run_dir = None


@contextlib.contextmanager
def writing(path):
    """Turn a failed write inside the block into a :class:`WriteError` naming ``path``. The
    operating system's error (``OSError``: errno 28 for a full disk) usually carries no file
    name, and torch's zip writer reports one as a ``RuntimeError`` with no errno at all."""
    try:
        yield
    except OSError as exc:
        raise WriteError(f"{path}: could not write ({exc.strerror or exc})") from exc
    except RuntimeError as exc:
        text = str(exc)
        if "inline_container" not in text and "PytorchStreamWriter" not in text:
            raise
        raise WriteError(f"{path}: could not write (torch's writer failed, a full disk?: "
                         f"{text.splitlines()[0][:100]})") from exc
