"""The workflow model: a named DAG of tasks, written in Python or YAML, checked before it ever runs.

A `Task` names an executor (`http_client`, `python`, a plugin), its parameters, the tasks it depends on, a retry
policy, a timeout and an optional condition. Parameters and conditions use the dialogue engine's safe expression
language (`agents.dialogue.expressions`, `templates`), so `{{input.url}}` and `{{tasks.fetch_data.output.y}}` are
checked when the workflow loads and evaluated without ever running Python from the definition.

`Workflow.spec()` is the plain-JSON form the run processor stores in each run's state: a run finishes with the
definition it started with, even if the file changes meanwhile.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agents.dialogue.errors import ExpressionError, TemplateError
from agents.dialogue.expressions import Expression, compile_expression
from agents.dialogue.templates import Template, compile_template
from agents.workflows.errors import Problem, WorkflowDefinitionError

__all__ = ["SCOPE_NAMES", "TRANSIENT_ERRORS", "RetryPolicy", "Task", "Workflow"]

#: Root names that parameters, conditions and the workflow's output may read.
SCOPE_NAMES: Final = ("input", "tasks", "run")
#: Error types retried by default: what passes by itself (the executor raised `TransientError`, a connection
#: dropped, a timeout).
TRANSIENT_ERRORS: Final = ("TransientError", "ConnectionError", "TimeoutError")
_WORKFLOW_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: Task names are read in expressions as `tasks.<name>`, so they must be identifiers.
_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a task is tried and how long to wait between tries.

    Attempt n (n >= 2) waits `initial_delay_s * multiplier ** (n - 2)`, at most `max_delay_s`, varied by
    `±jitter` (a fraction) so that many runs failing together do not retry in lockstep. The jitter is derived from
    the run, task and attempt, not drawn at random, so replaying a run reproduces its schedule exactly.
    A failure is retried when the executor marked it transient or its error type (or a base class) is named in
    `retry_on`; `PermanentError` never is.
    """

    max_attempts: int = 3
    initial_delay_s: float = 1.0
    multiplier: float = 2.0
    max_delay_s: float = 60.0
    jitter: float = 0.2
    retry_on: tuple[str, ...] = ()
    retry_transient: bool = True

    def delay_s(self, attempt: int, seed: str) -> float:
        """Seconds to wait before attempt `attempt` (2 for the first retry); `seed` names run and task."""
        base = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** max(attempt - 2, 0))
        digest = hashlib.sha256(f"{seed}/{attempt}".encode()).digest()
        unit = int.from_bytes(digest[:8], "big") / 2**64  # in [0, 1)
        return max(0.0, base * (1 + self.jitter * (2 * unit - 1)))

    def retries(self, error_types: Sequence[str], transient: bool) -> bool:
        """Whether a failure of these types (the error's class and its bases) is worth another attempt."""
        if "PermanentError" in error_types:
            return False
        if transient and self.retry_transient:
            return True
        return any(name in self.retry_on for name in error_types)

    def problems(self) -> list[str]:
        found = []
        if self.max_attempts < 1:
            found.append(f"retry max_attempts must be at least 1, not {self.max_attempts}")
        if self.initial_delay_s < 0 or self.max_delay_s < 0:
            found.append("retry delays must not be negative")
        if self.multiplier < 1:
            found.append(f"retry multiplier must be at least 1 (exponential backoff), not {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            found.append(f"retry jitter is a fraction from 0 to 1, not {self.jitter}")
        return found

    def spec(self) -> dict[str, Any]:
        return {"max_attempts": self.max_attempts, "initial_delay_s": self.initial_delay_s,
                "multiplier": self.multiplier, "max_delay_s": self.max_delay_s, "jitter": self.jitter,
                "retry_on": list(self.retry_on), "retry_transient": self.retry_transient}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> RetryPolicy:
        return cls(max_attempts=int(spec["max_attempts"]), initial_delay_s=float(spec["initial_delay_s"]),
                   multiplier=float(spec["multiplier"]), max_delay_s=float(spec["max_delay_s"]),
                   jitter=float(spec["jitter"]), retry_on=tuple(spec["retry_on"]),
                   retry_transient=bool(spec["retry_transient"]))


@dataclass(frozen=True)
class Where:
    """Where a definition came from (file and 1-based line, 0 for unknown), for problems that point at it."""

    file: str = "<code>"
    line: int = 0


def _caller() -> Where:
    """The file and line of the code that built a task or workflow: code workflows get `file:line` problems too."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # type: ignore[assignment]
    return Where(frame.f_code.co_filename, frame.f_lineno) if frame is not None else Where()


class Task:
    """One step of a workflow: run `executor` with `params` once every task in `depends_on` has succeeded.

    `condition` (an expression over `input`, `tasks` and `run`) skips the task when false; tasks that depend on a
    skipped task are skipped too. `timeout_s` bounds one attempt; a timed-out attempt is a transient failure.
    """

    def __init__(self, name: str, executor: str = "python", params: Mapping[str, Any] | None = None, *,
                 depends_on: Iterable[Task | str] = (), retry: RetryPolicy | Mapping[str, Any] | None = None,
                 timeout_s: float | None = None, condition: str | None = None, where: Where | None = None) -> None:
        self.name = name
        self.executor = executor
        self.params: dict[str, Any] = dict(params or {})
        self.depends_on: tuple[str, ...] = tuple(dep.name if isinstance(dep, Task) else dep for dep in depends_on)
        if isinstance(retry, Mapping):
            values: dict[str, Any] = {k: tuple(v) if k == "retry_on" else v for k, v in retry.items()}
            retry = RetryPolicy(**values)
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self.condition = condition
        self.where = where or _caller()

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "executor": self.executor, "params": self.params,
                "depends_on": list(self.depends_on), "retry": self.retry.spec(), "timeout_s": self.timeout_s,
                "condition": self.condition}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Task:
        return cls(spec["name"], spec["executor"], spec.get("params") or {}, depends_on=spec.get("depends_on", ()),
                   retry=RetryPolicy.from_spec(spec["retry"]) if spec.get("retry") else None,
                   timeout_s=spec.get("timeout_s"), condition=spec.get("condition"), where=Where())

    def __repr__(self) -> str:
        return f"Task({self.name!r}, executor={self.executor!r}, depends_on={list(self.depends_on)!r})"


class Workflow:
    """A named DAG of tasks. Subclass it and add tasks in `define`, or pass `tasks`, or load it from YAML.

    `fail_fast` (default): the first task that fails for good fails the run, and what is still running is
    ignored. Without it, only the failed task's dependants are given up and the rest of the DAG finishes first.
    `output` is a template or value over the run's scope; by default the run's output is that of its last task
    (the one nothing depends on), or a mapping of every such task's output when there are several.
    """

    def __init__(self, name: str, *, tasks: Iterable[Task] = (), description: str = "", fail_fast: bool = True,
                 output: Any = None, where: Where | None = None) -> None:
        self.name = name
        self.description = description
        self.fail_fast = fail_fast
        self.output = output
        self.where = where or _caller()
        self._tasks: list[Task] = list(tasks)
        self._defined = bool(self._tasks)

    def define(self) -> None:
        """Add the workflow's tasks (`self.add_tasks`); called once, the first time the tasks are needed."""

    def add_task(self, task: Task) -> Task:
        self._tasks.append(task)
        return task

    def add_tasks(self, tasks: Iterable[Task]) -> None:
        for task in tasks:
            self.add_task(task)

    @property
    def tasks(self) -> list[Task]:
        if not self._defined:
            self._defined = True
            self.define()
        return list(self._tasks)

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    # -- checking ---------------------------------------------------------------------------------------------
    def problems(self, executors: Mapping[str, Collection[str]] | Collection[str] | None = None) -> list[Problem]:
        """Every problem of the definition; `executors` (names, or names to their required params) enables the
        executor checks."""
        return _Checker(self, executors).run()

    def check(self, executors: Mapping[str, Collection[str]] | Collection[str] | None = None) -> Workflow:
        """This workflow if it is valid; raises `WorkflowDefinitionError` listing every problem otherwise."""
        found = self.problems(executors)
        if found:
            raise WorkflowDefinitionError(found)
        return self

    def order(self) -> list[str]:
        """Task names in a dependency order (every task after its dependencies); assumes the DAG is valid."""
        names = [task.name for task in self.tasks]
        deps = {task.name: task.depends_on for task in self.tasks}
        done: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            for dep in deps.get(name, ()):
                visit(dep)
            done.append(name)

        for name in names:
            visit(name)
        return done

    # -- plain form -------------------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """The definition as plain JSON (what a run keeps in its state)."""
        return {"name": self.name, "description": self.description, "fail_fast": self.fail_fast,
                "output": self.output, "tasks": [task.spec() for task in self.tasks]}

    def digest(self) -> str:
        """A short digest of the definition: which version a run used."""
        return hashlib.sha256(json.dumps(self.spec(), sort_keys=True, default=str).encode()).hexdigest()[:16]

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Workflow:
        return cls(spec["name"], tasks=[Task.from_spec(task) for task in spec["tasks"]],
                   description=spec.get("description", ""), fail_fast=spec.get("fail_fast", True),
                   output=spec.get("output"), where=Where())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, tasks={[task.name for task in self.tasks]!r})"


def template_leaves(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string leaf of a parameter value with its dotted path (`params.headers.Accept`)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from template_leaves(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from template_leaves(item, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value


def read_tasks(paths: Iterable[str]) -> set[str]:
    """The task names that expression paths read (`tasks.fetch.output.x` -> `fetch`)."""
    return {path.split(".")[1] for path in paths if path.startswith("tasks.") and path.count(".") >= 1}


class _Checker:
    def __init__(self, workflow: Workflow, executors: Mapping[str, Collection[str]] | Collection[str] | None) -> None:
        self.workflow = workflow
        self.executors = executors
        self.found: list[Problem] = []

    def problem(self, where: Where, message: str) -> None:
        self.found.append(Problem(where.file, where.line, message))

    def run(self) -> list[Problem]:
        wf = self.workflow
        if not isinstance(wf.name, str) or not _WORKFLOW_NAME.fullmatch(wf.name):
            self.problem(wf.where, f"workflow name {wf.name!r} must be lower-case letters, digits, '_' or '-', "
                                   "starting with a letter")
        tasks = wf.tasks
        if not tasks:
            self.problem(wf.where, f"workflow {wf.name!r} has no tasks: add at least one")
            return self.found
        by_name: dict[str, Task] = {}
        for task in tasks:
            if not isinstance(task.name, str) or not _TASK_NAME.fullmatch(task.name):
                self.problem(task.where, f"task name {task.name!r} must be letters, digits and '_' (it is read as "
                                         "`tasks.<name>` in templates)")
            if task.name in by_name:
                first = by_name[task.name].where
                self.problem(task.where, f"task {task.name!r} is defined twice (first at line {first.line}): "
                                         "rename one")
            by_name.setdefault(task.name, task)
        for task in tasks:
            self.task(task, by_name)
        self.cycles(by_name)
        ancestors = self.ancestors(by_name)
        for task in tasks:
            self.expressions(task, by_name, ancestors.get(task.name, set()))
        if wf.output is not None:
            for path, text in template_leaves(wf.output, "output"):
                compiled = self.template(wf.where, text, path)
                if compiled is not None:
                    self.read_known(wf.where, path, read_tasks(compiled.paths), by_name, None)
        return self.found

    def task(self, task: Task, by_name: Mapping[str, Task]) -> None:
        what = f"task {task.name!r}"
        if self.executors is not None and task.executor not in self.executors:
            hint = difflib.get_close_matches(str(task.executor), sorted(self.executors), n=1)
            guess = f" (did you mean {hint[0]!r}?)" if hint else ""
            self.problem(task.where, f"{what}: unknown executor {task.executor!r}{guess}; known executors: "
                                     f"{', '.join(sorted(self.executors)) or 'none'} (plugins register in the "
                                     "'switchboard.executors' entry-point group)")
        elif isinstance(self.executors, Mapping):
            missing = [name for name in self.executors[task.executor] if name not in task.params]
            if missing:
                self.problem(task.where, f"{what}: executor {task.executor!r} needs params "
                                         f"{', '.join(missing)}: add them under params")
        for dep in task.depends_on:
            if dep == task.name:
                self.problem(task.where, f"{what} depends on itself: remove it from depends_on")
            elif dep not in by_name:
                hint = difflib.get_close_matches(dep, sorted(by_name), n=1)
                guess = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.problem(task.where, f"{what} depends on unknown task {dep!r}{guess}; tasks: "
                                         f"{', '.join(sorted(by_name))}")
        if len(set(task.depends_on)) != len(task.depends_on):
            self.problem(task.where, f"{what} lists a dependency twice: list each once")
        for message in task.retry.problems():
            self.problem(task.where, f"{what}: {message}")
        if task.timeout_s is not None and not task.timeout_s > 0:
            self.problem(task.where, f"{what}: timeout_s must be positive, not {task.timeout_s}")
        if not isinstance(task.params, Mapping):
            self.problem(task.where, f"{what}: params must be a mapping")

    def cycles(self, by_name: Mapping[str, Task]) -> None:
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        reported: set[frozenset[str]] = set()

        def visit(name: str, path: list[str]) -> None:
            state[name] = 1
            path.append(name)
            for dep in by_name[name].depends_on:
                if dep not in by_name or dep == name:
                    continue
                if state.get(dep) == 1:
                    cycle = [*path[path.index(dep):], dep]
                    key = frozenset(cycle)
                    if key not in reported:
                        reported.add(key)
                        self.problem(by_name[name].where, "dependency cycle " + " -> ".join(reversed(cycle)) +
                                     ": a workflow must be acyclic; remove one of these depends_on entries")
                elif state.get(dep) is None:
                    visit(dep, path)
            path.pop()
            state[name] = 2

        for name in by_name:
            if name not in state:
                visit(name, [])

    def ancestors(self, by_name: Mapping[str, Task]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}

        def of(name: str, visiting: frozenset[str]) -> set[str]:
            if name in found:
                return found[name]
            result: set[str] = set()
            for dep in by_name[name].depends_on:
                if dep in by_name and dep not in visiting:
                    result |= {dep, *of(dep, visiting | {dep})}
            found[name] = result
            return result

        for name in by_name:
            of(name, frozenset({name}))
        return found

    def expressions(self, task: Task, by_name: Mapping[str, Task], ancestors: set[str]) -> None:
        if isinstance(task.params, Mapping):
            for path, text in template_leaves(task.params, "params"):
                compiled = self.template(task.where, text, f"task {task.name!r} {path}")
                if compiled is not None:
                    self.read_known(task.where, f"task {task.name!r} {path}", read_tasks(compiled.paths), by_name,
                                    ancestors)
        if task.condition is not None:
            expression = self.expression(task.where, task.condition, f"task {task.name!r} condition")
            if expression is not None:
                self.read_known(task.where, f"task {task.name!r} condition", read_tasks(expression.paths),
                                by_name, ancestors)

    def template(self, where: Where, text: str, what: str) -> Template | None:
        try:
            return compile_template(text, names=SCOPE_NAMES)
        except (TemplateError, ExpressionError) as exc:
            self.problem(where, f"{what}: {exc}")
            return None

    def expression(self, where: Where, text: Any, what: str) -> Expression | None:
        try:
            return compile_expression(text, names=SCOPE_NAMES)
        except ExpressionError as exc:
            self.problem(where, f"{what}: {exc}")
            return None

    def read_known(self, where: Where, what: str, read: set[str], by_name: Mapping[str, Task],
                   ancestors: set[str] | None) -> None:
        for name in sorted(read):
            if name not in by_name:
                hint = difflib.get_close_matches(name, sorted(by_name), n=1)
                guess = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.problem(where, f"{what} reads tasks.{name}, which is not a task of this workflow{guess}")
            elif ancestors is not None and name not in ancestors:
                self.problem(where, f"{what} reads tasks.{name}, whose output may not exist yet: add {name!r} to "
                                    "depends_on (directly or through another dependency)")

