"""Errors a user can fix. The command line prints them as one message and exits with code 2."""

from __future__ import annotations


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
