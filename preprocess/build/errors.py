"""What stops a build: `BuildError` (one line saying what to do) and `AlreadyBuilt`."""

from __future__ import annotations

from collections.abc import Sequence

from preprocess.read_clip import Problem
from shared.errors import UserError


class BuildError(UserError, RuntimeError):
    """The build cannot go on (or, with --strict, must not publish); says what to do.
    `problems`: the files refused, which the command lists before the error."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class AlreadyBuilt(BuildError):
    """`--resume` found nothing to resume: the store is published (not a failure: the command
    reports it itself, exit status 0)."""
