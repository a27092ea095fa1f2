"""The workflow engine: DAG workflows as event-driven state machines (docs/workflows.md).

Define a workflow in code (`Workflow`, `Task`) or YAML (`load_workflow`); a pure core (`advance`) decides each
run's next steps; `WorkflowRunner` and `TaskWorker` run it on the bus; executors (`BaseExecutor`, plugins through
the `switchboard.executors` entry points) do the work.
"""

from agents.workflows.core import advance
from agents.workflows.errors import (
    ExecutorError,
    PermanentError,
    TransientError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowNotFound,
)
from agents.workflows.executors import BaseExecutor, discover_executors, run_executor
from agents.workflows.loader import check_workflow_file, load_workflow, load_workflow_text
from agents.workflows.model import RetryPolicy, Task, Workflow

__all__ = [
    "BaseExecutor",
    "ExecutorError",
    "PermanentError",
    "RetryPolicy",
    "Task",
    "TransientError",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowNotFound",
    "advance",
    "check_workflow_file",
    "discover_executors",
    "load_workflow",
    "load_workflow_text",
    "run_executor",
]
