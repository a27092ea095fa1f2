"""Which workflows a deployment runs: YAML files that agent folders ship (`<agent>/workflows/*.yaml`, under
`agents/` and `workers.agent_dirs`) and code workflows registered in the `switchboard.workflows` entry-point group
(a `Workflow` subclass or instance). Everything is validated against the installed executors when a worker starts,
so a worker never starts with a broken workflow.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Final

from agents.workflows.errors import Problem, WorkflowDefinitionError, WorkflowError
from agents.workflows.executors import BaseExecutor, discover_executors, executor_params
from agents.workflows.loader import discover_workflow_files, load_workflow
from agents.workflows.model import Workflow
from infra.config import Settings
from topics.processor import Processor, StatefulProcessor

__all__ = ["ENTRY_POINT_GROUP", "deployment_workflows", "discover_workflows", "workflow_processors"]

ENTRY_POINT_GROUP: Final = "switchboard.workflows"


def discover_workflows(roots: Iterable[Path], executors: Mapping[str, BaseExecutor] | None = None, *,
                       plugins: bool = True) -> dict[str, Workflow]:
    """Every workflow under `roots` and (with `plugins`) from entry points; raises `WorkflowDefinitionError` listing
    every problem of every file, and `WorkflowError` when two definitions share a name."""
    known = executor_params(discover_executors() if executors is None else executors)
    found: dict[str, Workflow] = {}
    problems: list[Problem] = []

    def add(workflow: Workflow) -> None:
        if workflow.name in found:
            raise WorkflowError(f"workflow {workflow.name!r} is defined twice, in {found[workflow.name].where.file} "
                                f"and {workflow.where.file}; rename one")
        found[workflow.name] = workflow

    for root in roots:
        for path in discover_workflow_files(Path(root)):
            try:
                add(load_workflow(path, known))
            except WorkflowDefinitionError as exc:
                problems.extend(exc.problems)
    if plugins:
        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = point.load()
                workflow = loaded() if isinstance(loaded, type) else loaded
            except Exception as exc:
                raise WorkflowError(f"cannot load workflow plugin {point.name!r} ({point.value}): "
                                    f"{type(exc).__name__}: {exc}; fix or uninstall the package") from exc
            if not isinstance(workflow, Workflow):
                raise WorkflowError(f"workflow plugin {point.name!r} ({point.value}) is not a Workflow; "
                                    "register a subclass of agents.workflows.Workflow or an instance")
            problems.extend(workflow.problems(known))
            add(workflow)
    if problems:
        raise WorkflowDefinitionError(problems)
    return found


def deployment_workflows(settings: Settings | None = None) -> dict[str, Workflow]:
    """The workflows a deployment runs: those in its agent folders and those installed as plugins."""
    from agents.registry import agent_roots

    return discover_workflows(agent_roots(settings))


def workflow_processors(workflows: Mapping[str, Workflow], *, answer_unknown: bool = False,
                        executors: Mapping[str, BaseExecutor] | None = None,
                        settings: Settings | None = None,
                        others: Collection[str] = ()) -> list[Processor | StatefulProcessor]:
    """The engine's processors: the run processor and a task worker (with every installed executor). With
    `settings`, the task worker keeps outputs in the configured object storage (idempotence, claim checks)."""
    from agents.workflows.processors import TaskWorker, WorkflowRunner
    from agents.workflows.storage import OutputStore, S3Store

    executors = discover_executors(settings) if executors is None else executors
    outputs = None
    if settings is not None:
        outputs = OutputStore(S3Store.from_settings(settings), claim_check_bytes=settings.workflows.claim_check_bytes)
    return [WorkflowRunner(workflows, answer_unknown=answer_unknown, executors=executors, others=others),
            TaskWorker(executors, outputs=outputs)]
