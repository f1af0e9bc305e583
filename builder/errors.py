"""Errors the builder raises; every one carries a message fit to show the person who pushed."""

from __future__ import annotations


class BuildError(Exception):
    """The build cannot go on; the message says why in the user's terms."""


class ProcfileError(BuildError):
    """A Procfile line is malformed; the message names the line number and the problem."""

    def __init__(self, line: int | None, problem: str) -> None:
        super().__init__(f"Procfile line {line}: {problem}" if line else f"Procfile: {problem}")
        self.line = line
        self.problem = problem


class SourceError(BuildError):
    """The pushed source holds something the builder refuses (a file is named)."""


class BuildTimeout(BuildError):
    """The build ran past its deadline and was stopped."""
