"""Workflow files (YAML) into the same `Workflow` model as code, reporting every problem with its line at once.

Like the policy loader, the YAML is composed into position-keeping nodes, so a problem names `file:line`; the
structure is checked here (keys, types), the graph and templates by `Workflow.problems` (cycles, unknown
dependencies, unknown executors, bad templates), and everything found is raised together. Format:
docs/workflows.md.

    workflow: data_processing
    tasks:
      - name: fetch_data
        executor: http_client
        params: {url: "{{input.url}}"}
        retry: {max_attempts: 5, initial_delay_s: 0.5}
        timeout_s: 10
      - name: transform_data
        executor: python
        params: {function: "mypkg.steps:transform", kwargs: {rows: "{{tasks.fetch_data.output.json}}"}}
        depends_on: [fetch_data]
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from agents.workflows.errors import Problem, WorkflowDefinitionError
from agents.workflows.model import RetryPolicy, Task, Where, Workflow

__all__ = ["check_workflow_file", "discover_workflow_files", "load_workflow", "load_workflow_text"]

_TOP_KEYS = ("workflow", "description", "fail_fast", "output", "tasks")
_TASK_KEYS = ("name", "executor", "params", "depends_on", "retry", "timeout_s", "condition")
_RETRY_KEYS = ("max_attempts", "initial_delay_s", "multiplier", "max_delay_s", "jitter", "retry_on",
               "retry_transient")
WORKFLOWS_FOLDER = "workflows"

Executors = Mapping[str, Collection[str]] | Collection[str] | None


def load_workflow(path: Path | str, executors: Executors = None) -> Workflow:
    """The workflow in file `path`; raises `WorkflowDefinitionError` listing every problem in it."""
    workflow, problems = _load_path(Path(path), executors)
    if problems or workflow is None:
        raise WorkflowDefinitionError(problems)
    return workflow


def load_workflow_text(text: str, file: str = "<string>", executors: Executors = None) -> Workflow:
    workflow, problems = _load(text, file, executors)
    if problems or workflow is None:
        raise WorkflowDefinitionError(problems)
    return workflow


def check_workflow_file(path: Path | str, executors: Executors = None) -> list[Problem]:
    """Every problem of the workflow file at `path` (empty: it loads)."""
    return _load_path(Path(path), executors)[1]


def discover_workflow_files(root: Path) -> list[Path]:
    """Workflow files an agent folder ships: `<root>/<agent>/workflows/*.yaml`, sorted."""
    return sorted(path for pattern in ("*.yaml", "*.yml")
                  for path in Path(root).glob(f"*/{WORKFLOWS_FOLDER}/{pattern}") if path.is_file())


def _load_path(path: Path, executors: Executors) -> tuple[Workflow | None, list[Problem]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(str(path), 0, f"cannot read the workflow file ({exc}); check the path")]
    return _load(text, str(path), executors)


def _load(text: str, file: str, executors: Executors) -> tuple[Workflow | None, list[Problem]]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        return None, [Problem(file, line, f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]
    reader = _Reader(file)
    workflow = reader.workflow(root)
    problems = reader.found
    if workflow is not None:
        problems += workflow.problems(executors)
    return (workflow if not problems else None), problems


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Reader:
    def __init__(self, file: str) -> None:
        self.file = file
        self.found: list[Problem] = []
        self.constructor = SafeConstructor()

    def problem(self, node: yaml.Node | None, message: str) -> None:
        self.found.append(Problem(self.file, _line(node) if node is not None else 0, message))

    def plain(self, node: yaml.Node) -> Any:
        return self.constructor.construct_object(node, deep=True)

    def mapping(self, node: yaml.Node | None, what: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping with keys {', '.join(allowed)}")
            return None
        found: dict[str, yaml.Node] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name not in allowed:
                self.problem(key, f"{what}: unknown key {name!r}; allowed: {', '.join(allowed)}")
            elif name in found:
                self.problem(key, f"{what}: key {name!r} given twice: keep one")
            else:
                found[name] = value
        return found

    def text(self, node: yaml.Node, what: str) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
            return str(node.value)
        self.problem(node, f"{what} must be text (quote it)")
        return None

    def number(self, node: yaml.Node, what: str) -> float | None:
        value = self.plain(node)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(node, f"{what} must be a number, not {value!r}")
            return None
        return float(value)

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        value = self.plain(node)
        if not isinstance(value, bool):
            self.problem(node, f"{what} must be true or false, not {value!r}")
            return None
        return value

    def names(self, node: yaml.Node, what: str) -> list[str]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
            return [str(node.value)]
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f"{what} must be a list of names")
            return []
        return [name for item in node.value if (name := self.text(item, what)) is not None]

    def workflow(self, root: yaml.Node | None) -> Workflow | None:
        if root is None:
            self.problem(None, "the file is empty: write `workflow: <name>` and `tasks:`")
            return None
        top = self.mapping(root, "the workflow file", _TOP_KEYS)
        if top is None:
            return None
        name = self.text(top["workflow"], "workflow") if "workflow" in top else None
        if "workflow" not in top:
            self.problem(root, "missing `workflow: <name>`: name the workflow (lower-case, e.g. order_status)")
        description = (self.text(top["description"], "description") or "") if "description" in top else ""
        fail_fast = self.boolean(top["fail_fast"], "fail_fast") if "fail_fast" in top else True
        output = self.plain(top["output"]) if "output" in top else None
        tasks: list[Task] = []
        if "tasks" not in top:
            self.problem(root, "missing `tasks:`: list the workflow's tasks")
        elif not isinstance(top["tasks"], yaml.SequenceNode) or not top["tasks"].value:
            self.problem(top["tasks"], "tasks must be a non-empty list of tasks (`- name: ...`)")
        else:
            tasks = [task for item in top["tasks"].value if (task := self.task(item)) is not None]
        if name is None:
            return None
        return Workflow(name, tasks=tasks, description=description, fail_fast=bool(fail_fast), output=output,
                        where=Where(self.file, _line(root)))

    def task(self, node: yaml.Node) -> Task | None:
        given = self.mapping(node, "a task", _TASK_KEYS)
        if given is None:
            return None
        if "name" not in given:
            self.problem(node, "a task needs a `name:`")
            return None
        name = self.text(given["name"], "task name")
        what = f"task {name!r}"
        executor = self.text(given["executor"], f"{what} executor") if "executor" in given else None
        if "executor" not in given:
            self.problem(node, f"{what} needs an `executor:` (http_client, python, or a plugin's name)")
        params: dict[str, Any] = {}
        if "params" in given:
            value = self.plain(given["params"])
            if isinstance(value, dict):
                params = value
            else:
                self.problem(given["params"], f"{what}: params must be a mapping")
        depends_on = self.names(given["depends_on"], f"{what} depends_on") if "depends_on" in given else []
        retry = self.retry(given["retry"], what) if "retry" in given else RetryPolicy()
        timeout = self.number(given["timeout_s"], f"{what} timeout_s") if "timeout_s" in given else None
        condition = self.text(given["condition"], f"{what} condition") if "condition" in given else None
        if name is None or executor is None or retry is None:
            return None
        return Task(name, executor, params, depends_on=depends_on, retry=retry, timeout_s=timeout,
                    condition=condition, where=Where(self.file, _line(node)))

    def retry(self, node: yaml.Node, what: str) -> RetryPolicy | None:
        given = self.mapping(node, f"{what} retry", _RETRY_KEYS)
        if given is None:
            return None
        values: dict[str, Any] = {}
        ok = True
        for key, value in given.items():
            if key == "retry_on":
                values[key] = tuple(self.names(value, f"{what} retry_on"))
            elif key == "retry_transient":
                flag = self.boolean(value, f"{what} retry_transient")
                ok = ok and flag is not None
                values[key] = flag
            else:
                number = self.number(value, f"{what} retry {key}")
                if key == "max_attempts" and number is not None and not number.is_integer():
                    self.problem(value, f"{what} retry max_attempts must be a whole number")
                    number = None
                ok = ok and number is not None
                values[key] = int(number) if key == "max_attempts" and number is not None else number
        if not ok:
            return None
        return RetryPolicy(**values)  # its values are checked with the rest of the task
