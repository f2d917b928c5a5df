"""Errors a user can fix. The command line prints them as one message and exits with code 2."""

from __future__ import annotations


class KdlabError(Exception):
    """Bad input (a recipe, a path, a checkpoint): shown without a traceback, exit code 2."""


class RecipeError(KdlabError):
    """A recipe failed validation; ``messages`` holds every problem, each naming file and key."""

    def __init__(self, messages: list[str]):
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))
