"""The workflow engine's errors: authors and operators read these, so each says what to fix and where."""

from __future__ import annotations

from collections.abc import Sequence

from agents.dialogue.errors import Problem
from topics.errors import SwitchboardError

__all__ = ["ExecutorError", "PermanentError", "Problem", "TransientError", "WorkflowDefinitionError",
           "WorkflowError", "WorkflowNotFound"]


class WorkflowError(SwitchboardError):
    """Base of every error the workflow engine raises on purpose."""


class WorkflowDefinitionError(WorkflowError):
    """A workflow (YAML or code) is invalid; `problems` lists every problem found, each as `file:line: what to do`."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems) or "invalid workflow")


class WorkflowNotFound(WorkflowError):
    """No workflow of that name is deployed; the message lists the known ones."""


class ExecutorError(WorkflowError):
    """An executor failed. Raise a subclass to tell the engine whether a retry can help."""


class TransientError(ExecutorError):
    """A failure that may pass (a 503, a refused connection): retried while the task's retry policy allows."""


class PermanentError(ExecutorError):
    """A failure that will not pass by trying again (a 404, bad parameters): never retried."""
