"""The dialogue engine's errors: policy authors read these, so each message says what to fix and where."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from topics.errors import SwitchboardError


class DialogueError(SwitchboardError):
    """Base of every error the dialogue engine raises on purpose."""


class ExpressionError(DialogueError):
    """A policy expression is invalid; `line` and `column` (1-based) point into its source when known."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        self.reason = message
        self.line = line
        self.column = column
        super().__init__(message + _where(line, column))


class EvaluationError(ExpressionError):
    """A valid expression failed on the values it met at run time (division by zero, `int("abc")`)."""


class TemplateError(DialogueError):
    """A reply template is invalid (unbalanced braces, a bad placeholder); `line`/`column` point into its text."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        self.reason = message
        self.line = line
        self.column = column
        super().__init__(message + _where(line, column))


def _where(line: int | None, column: int | None) -> str:
    if column is None:
        return ""
    return f" (column {column})" if line in (None, 1) else f" (line {line}, column {column})"


class Problem(NamedTuple):
    """One thing wrong in a policy file: where (`line` 0: the file as a whole) and what to do about it."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


class PolicyError(DialogueError):
    """A policy file is invalid; `problems` lists every problem found in it, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems) or "invalid policy")
