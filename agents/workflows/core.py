"""The pure core of a workflow run: `advance(state, event) -> (new_state, commands)`.

Everything a run does is decided here, from its state and one event, with no I/O and no clock: the time is the
event's. So the same events always give the same commands (a run replays exactly, a redelivered event can be
recognised), and the bus code around it (`agents.workflows.processors`) only translates events and commands.

A run's state is plain JSON: the workflow definition it started with, its input, where to send its result, and
per task its status, current attempt, output or error, a not-before time while it waits for a retry, and the
history of its attempts. Statuses:

    run:  running -> succeeded | failed | cancelled
    task: waiting -> running -> succeeded
                             -> retry_wait -> running ...   (a transient failure with attempts left)
                             -> failed                      (for good: the run fails, or only its branch)
          waiting -> skipped (its condition is false, or a dependency was skipped)
          waiting -> upstream_failed (a dependency failed and the run does not fail fast)
          waiting | running | retry_wait -> cancelled (the run was cancelled or failed fast)

Every change yields a `Transition` command (the audit trail). A retry is not slept on: the task waits in
`retry_wait` with `not_before_ms`, a `ScheduleRetry` command says so, and a `RetryDue` event (sent by a timer once
that time has passed) starts the next attempt, so other work goes on meanwhile.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from agents.dialogue.errors import ExpressionError, TemplateError
from agents.dialogue.expressions import Expression, compile_expression, truthy
from agents.dialogue.templates import Template, compile_template, render_value
from agents.workflows.claims import ClaimRef, as_markers, marker
from agents.workflows.model import SCOPE_NAMES, RetryPolicy, template_leaves

__all__ = ["DONE", "RUN_STATUSES", "TASK_STATUSES", "CancelRun", "Command", "DeadLetterTask", "FinishRun",
           "RetryDue", "RunEvent", "RunTask", "ScheduleRetry", "StartRun", "TaskFailed", "TaskSucceeded",
           "Transition", "advance", "due_retries"]

RUN_STATUSES: Final = ("running", "succeeded", "failed", "cancelled")
TASK_STATUSES: Final = ("waiting", "running", "retry_wait", "succeeded", "failed", "skipped", "upstream_failed",
                        "cancelled")
#: Task statuses a run can finish with.
DONE: Final = frozenset({"succeeded", "failed", "skipped", "upstream_failed", "cancelled"})
_BLOCKING: Final = frozenset({"failed", "upstream_failed", "cancelled"})


# -- events in ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartRun:
    """Start run `run_id` of `workflow` (a `Workflow.spec()`); the result goes to `reply_to`/`reply_key`."""

    run_id: str
    workflow: Mapping[str, Any]
    input: Mapping[str, Any]
    at_ms: int
    requester: str = ""
    reply_to: str | None = None
    reply_key: str | None = None


@dataclass(frozen=True)
class TaskSucceeded:
    """An attempt succeeded; a large output is not here but in object storage at `output_uri` (claim check)."""

    task: str
    attempt: int
    output: Any
    at_ms: int
    started_ms: int | None = None
    output_uri: str | None = None


@dataclass(frozen=True)
class TaskFailed:
    """An attempt failed; `error_types` are the error's class and base class names, `transient` the executor's
    judgement that trying again can help."""

    task: str
    attempt: int
    error: str
    at_ms: int
    error_types: tuple[str, ...] = ()
    transient: bool = False
    started_ms: int | None = None


@dataclass(frozen=True)
class RetryDue:
    """The wait before attempt `attempt` of `task` is over (sent by a timer; ignored when not, or no longer, due)."""

    task: str
    attempt: int
    at_ms: int


@dataclass(frozen=True)
class CancelRun:
    reason: str
    at_ms: int


RunEvent = StartRun | TaskSucceeded | TaskFailed | RetryDue | CancelRun


# -- commands out ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunTask:
    """Run attempt `attempt` of `task` now, with `params` rendered from the run's input and earlier outputs."""

    run_id: str
    workflow: str
    task: str
    attempt: int
    executor: str
    params: Mapping[str, Any]
    timeout_s: float | None


@dataclass(frozen=True)
class ScheduleRetry:
    run_id: str
    task: str
    attempt: int
    not_before_ms: int
    delay_s: float


@dataclass(frozen=True)
class Transition:
    """One change: of the run (`task` None) or of one task."""

    run_id: str
    workflow: str
    task: str | None
    from_state: str
    to_state: str
    reason: str
    attempt: int
    at_ms: int


@dataclass(frozen=True)
class FinishRun:
    """The run is over: send `{run_id, status, output, error}` to `reply_to` if it has one."""

    run_id: str
    workflow: str
    status: str
    output: Any
    error: str | None
    requester: str
    reply_to: str | None
    reply_key: str | None


@dataclass(frozen=True)
class DeadLetterTask:
    """A task failed for good: park it with its parameters and the history of every attempt."""

    run_id: str
    workflow: str
    task: str
    executor: str
    params: Mapping[str, Any]
    error: str
    history: Sequence[Mapping[str, Any]] = field(default_factory=tuple)


Command = RunTask | ScheduleRetry | Transition | FinishRun | DeadLetterTask


# -- the step ----------------------------------------------------------------------------------------------------
def advance(state: Mapping[str, Any], event: RunEvent) -> tuple[dict[str, Any], list[Command]]:
    """The run's next state and what to do, for one event. Pure: `state` is not modified.

    Events that do not apply (a result for an attempt not running, a second start of the same run, anything after
    the run finished) leave the state as it is and yield no commands, which makes redelivery harmless.
    """
    run = _Run(copy.deepcopy(dict(state)))
    if isinstance(event, StartRun):
        if not run.state:
            run.start(event)
    elif run.state and run.state["status"] == "running":
        if isinstance(event, TaskSucceeded):
            run.succeeded(event)
        elif isinstance(event, TaskFailed):
            run.failed(event)
        elif isinstance(event, RetryDue):
            run.retry_due(event)
        elif isinstance(event, CancelRun):
            run.stop(f"cancelled: {event.reason}", event.at_ms, "cancelled")
    return run.state, run.commands


def due_retries(state: Mapping[str, Any], now_ms: int) -> list[RetryDue]:
    """The retries of a running run whose wait is over at `now_ms` (what the timer sends)."""
    if not state or state.get("status") != "running":
        return []
    return [RetryDue(name, task["attempt"] + 1, now_ms) for name, task in sorted(state["tasks"].items())
            if task["status"] == "retry_wait" and task["not_before_ms"] is not None
            and task["not_before_ms"] <= now_ms]


class ClaimedOutputError(ValueError):
    """A template or condition needs the value of an output that is only referenced (claim-checked)."""


@lru_cache(maxsize=512)
def _condition(source: str) -> Expression:
    return compile_expression(source, names=SCOPE_NAMES)


@lru_cache(maxsize=1024)
def _template(text: str) -> Template:
    return compile_template(text, names=SCOPE_NAMES)


class _Run:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.commands: list[Command] = []

    # -- helpers ----------------------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return str(self.state["run_id"])

    @property
    def workflow(self) -> Mapping[str, Any]:
        return self.state["workflow"]  # type: ignore[no-any-return]

    def spec(self, task: str) -> Mapping[str, Any]:
        return next(spec for spec in self.workflow["tasks"] if spec["name"] == task)

    def order(self) -> list[str]:
        return list(self.state["order"])

    def move(self, task: str | None, to: str, reason: str, at_ms: int) -> None:
        if task is None:
            before = self.state["status"]
            self.state["status"] = to
            attempt = 0
        else:
            entry = self.state["tasks"][task]
            before = entry["status"]
            entry["status"] = to
            attempt = entry["attempt"]
        self.commands.append(Transition(self.run_id, self.workflow["name"], task, before, to, reason, attempt, at_ms))

    def scope(self) -> dict[str, Any]:
        """What templates read. A claim-checked output is a `ClaimRef`: rendered, it becomes a marker that the
        task worker resolves from object storage."""
        tasks = {name: {"output": ClaimRef(entry["output_uri"]) if entry.get("output_uri") else entry["output"],
                        "status": entry["status"], "attempts": entry["attempt"]}
                 for name, entry in self.state["tasks"].items()}
        return {"input": self.state["input"], "tasks": tasks,
                "run": {"id": self.run_id, "workflow": self.workflow["name"]}}

    # -- events -----------------------------------------------------------------------------------------------
    def start(self, event: StartRun) -> None:
        from agents.workflows.model import Workflow

        workflow = dict(event.workflow)
        self.state.update({
            "run_id": event.run_id, "workflow": workflow, "status": "pending", "input": dict(event.input),
            "requester": event.requester, "reply_to": event.reply_to, "reply_key": event.reply_key,
            "started_ms": event.at_ms, "finished_ms": None, "output": None, "error": None,
            "order": Workflow.from_spec(workflow).order(),
            "tasks": {spec["name"]: {"status": "waiting", "attempt": 0, "output": None, "output_uri": None,
                                     "error": None, "not_before_ms": None, "history": []}
                      for spec in workflow["tasks"]},
        })
        self.move(None, "running", f"started by {event.requester or 'a request'}", event.at_ms)
        self.dispatch(event.at_ms)

    def running(self, task: str, attempt: int) -> dict[str, Any] | None:
        entry = self.state["tasks"].get(task)
        if entry is None or entry["status"] != "running" or entry["attempt"] != attempt:
            return None  # a duplicate, or a late result of an attempt that was given up
        return entry  # type: ignore[no-any-return]

    def succeeded(self, event: TaskSucceeded) -> None:
        entry = self.running(event.task, event.attempt)
        if entry is None:
            return
        entry["output"] = None if event.output_uri else event.output
        entry["output_uri"] = event.output_uri
        entry["error"] = None
        entry["history"].append({"attempt": event.attempt, "status": "succeeded", "error": None,
                                 "started_ms": event.started_ms, "finished_ms": event.at_ms})
        self.move(event.task, "succeeded", f"attempt {event.attempt} succeeded", event.at_ms)
        self.dispatch(event.at_ms)

    def failed(self, event: TaskFailed) -> None:
        entry = self.running(event.task, event.attempt)
        if entry is None:
            return
        entry["history"].append({"attempt": event.attempt, "status": "failed", "error": event.error,
                                 "error_types": list(event.error_types), "transient": event.transient,
                                 "started_ms": event.started_ms, "finished_ms": event.at_ms})
        entry["error"] = event.error
        policy = RetryPolicy.from_spec(self.spec(event.task)["retry"])
        if event.attempt < policy.max_attempts and policy.retries(event.error_types, event.transient):
            delay = policy.delay_s(event.attempt + 1, f"{self.run_id}/{event.task}")
            entry["not_before_ms"] = event.at_ms + round(delay * 1000)
            self.move(event.task, "retry_wait", f"attempt {event.attempt} failed ({event.error}); attempt "
                                                f"{event.attempt + 1} in {delay:.2f}s", event.at_ms)
            self.commands.append(ScheduleRetry(self.run_id, event.task, event.attempt + 1, entry["not_before_ms"],
                                               delay))
            return
        why = "not retryable" if event.attempt < policy.max_attempts else f"{event.attempt} attempt(s) exhausted"
        self.give_up(event.task, f"attempt {event.attempt} failed ({event.error}); {why}", event.at_ms)

    def retry_due(self, event: RetryDue) -> None:
        entry = self.state["tasks"].get(event.task)
        if (entry is None or entry["status"] != "retry_wait" or event.attempt != entry["attempt"] + 1
                or entry["not_before_ms"] is None or event.at_ms < entry["not_before_ms"]):
            return
        entry["not_before_ms"] = None
        self.launch(event.task, event.at_ms, f"retry: attempt {event.attempt}")
        self.dispatch(event.at_ms)

    def stop(self, reason: str, at_ms: int, status: str) -> None:
        """End the run now: what has not finished is cancelled, and `reason` is the run's error."""
        for name in self.order():
            if self.state["tasks"][name]["status"] in ("waiting", "running", "retry_wait"):
                self.state["tasks"][name]["not_before_ms"] = None
                self.move(name, "cancelled", reason, at_ms)
        self.finish(status, None, reason, at_ms)

    # -- the DAG ----------------------------------------------------------------------------------------------
    def dispatch(self, at_ms: int) -> None:
        """Start every waiting task whose dependencies are done (in one pass: the order puts dependencies first)."""
        tasks = self.state["tasks"]
        for name in self.order():
            entry = tasks[name]
            if entry["status"] != "waiting" or self.state["status"] != "running":
                continue
            deps = self.spec(name)["depends_on"]
            blocked = [dep for dep in deps if tasks[dep]["status"] in _BLOCKING]
            skipped = [dep for dep in deps if tasks[dep]["status"] == "skipped"]
            if blocked:
                self.move(name, "upstream_failed", f"dependency {blocked[0]} {tasks[blocked[0]]['status']}", at_ms)
            elif skipped:
                self.move(name, "skipped", f"dependency {skipped[0]} was skipped", at_ms)
            elif all(tasks[dep]["status"] == "succeeded" for dep in deps):
                self.launch(name, at_ms, "dependencies done" if deps else "no dependencies")
        self.finish_if_done(at_ms)

    def launch(self, name: str, at_ms: int, reason: str) -> None:
        spec = self.spec(name)
        entry = self.state["tasks"][name]
        scope = self.scope()
        try:
            if spec.get("condition"):
                condition = _condition(spec["condition"])
                self.refuse_claimed(condition.paths, f"the condition `{spec['condition']}`")
                if not truthy(condition.evaluate(scope)):
                    self.move(name, "skipped", f"condition `{spec['condition']}` is false", at_ms)
                    return
            params = self.render(spec.get("params") or {}, scope)
        except (ExpressionError, TemplateError, ClaimedOutputError) as exc:
            entry["attempt"] += 1
            entry["error"] = str(exc)
            entry["history"].append({"attempt": entry["attempt"], "status": "failed", "error": str(exc),
                                     "error_types": [type(exc).__name__], "transient": False,
                                     "started_ms": at_ms, "finished_ms": at_ms})
            self.give_up(name, f"cannot prepare attempt {entry['attempt']}: {exc}", at_ms)
            return
        entry["attempt"] += 1
        self.move(name, "running", reason, at_ms)
        self.commands.append(RunTask(self.run_id, self.workflow["name"], name, entry["attempt"], spec["executor"],
                                     params, spec.get("timeout_s")))

    def give_up(self, name: str, reason: str, at_ms: int) -> None:
        """The task failed for good: dead-letter it, then fail the run (fail fast) or only its dependants."""
        spec = self.spec(name)
        entry = self.state["tasks"][name]
        self.move(name, "failed", reason, at_ms)
        try:
            params = self.render(spec.get("params") or {}, self.scope())
        except (ExpressionError, TemplateError, ClaimedOutputError):
            params = dict(spec.get("params") or {})
        self.commands.append(DeadLetterTask(self.run_id, self.workflow["name"], name, spec["executor"], params,
                                            entry["error"] or reason, tuple(entry["history"])))
        if self.workflow.get("fail_fast", True):
            self.stop(f"task {name} failed: {entry['error']}", at_ms, "failed")
        else:
            self.dispatch(at_ms)

    def finish_if_done(self, at_ms: int) -> None:
        tasks = self.state["tasks"]
        if self.state["status"] != "running" or any(entry["status"] not in DONE for entry in tasks.values()):
            return
        failed = [name for name in self.order() if tasks[name]["status"] == "failed"]
        if failed:
            self.finish("failed", None, f"task {failed[0]} failed: {tasks[failed[0]]['error']}", at_ms)
            return
        try:
            output = self.output()
        except (ExpressionError, TemplateError, ClaimedOutputError) as exc:
            self.finish("failed", None, f"cannot render the workflow's output: {exc}", at_ms)
            return
        self.finish("succeeded", output, None, at_ms)

    def output(self) -> Any:
        """The run's output; a claim-checked part stays a marker (the result never carries a large output)."""
        if self.workflow.get("output") is not None:
            return self.render(self.workflow["output"], self.scope(), "the workflow's output")
        needed = {dep for spec in self.workflow["tasks"] for dep in spec["depends_on"]}
        sinks = [name for name in self.order() if name not in needed]
        tasks = self.state["tasks"]

        def of(entry: Mapping[str, Any]) -> Any:
            return marker(entry["output_uri"]) if entry.get("output_uri") else entry["output"]

        if len(sinks) == 1:
            return of(tasks[sinks[0]])
        return {name: of(tasks[name]) for name in sinks}

    # -- claim checks -----------------------------------------------------------------------------------------
    def claimed(self) -> set[str]:
        return {name for name, entry in self.state["tasks"].items() if entry.get("output_uri")}

    def refuse_claimed(self, paths: frozenset[str], what: str) -> None:
        """Raise if `paths` read a claim-checked output: its value is not here, only its URI."""
        claimed = self.claimed()
        for path in sorted(paths):
            parts = path.split(".")
            if len(parts) >= 3 and parts[0] == "tasks" and parts[1] in claimed and parts[2] == "output":
                raise ClaimedOutputError(
                    f"{what} reads {path}, but task {parts[1]}'s output was larger than the claim-check limit and "
                    "is in object storage, not in the run: pass it whole to a task (a param that is exactly "
                    f"{{{{{path}}}}}), have {parts[1]} return a smaller summary to test, or raise "
                    "workflows.claim_check_bytes")

    def render(self, value: Any, scope: Mapping[str, Any], where: str = "params") -> Any:
        """`render_value`, where a template reading a claim-checked output must be exactly one placeholder that
        gives the reference itself (it becomes a marker); text built from it, or a function of it, is refused."""
        claimed = self.claimed()
        if not claimed:
            return render_value(value, scope)
        for path, text in template_leaves(value, where):
            template = _template(text)
            if template.single is None or any(p.startswith("tasks.") and p.split(".")[1] in claimed
                                               and not isinstance(render_value(text, scope), ClaimRef)
                                               for p in template.paths):
                self.refuse_claimed(template.paths, f"{path} `{text}`")
        return as_markers(render_value(value, scope))

    def finish(self, status: str, output: Any, error: str | None, at_ms: int) -> None:
        self.state.update({"output": output, "error": error, "finished_ms": at_ms})
        self.move(None, status, error or "every task done", at_ms)
        self.commands.append(FinishRun(self.run_id, self.workflow["name"], status, output, error,
                                       self.state["requester"], self.state["reply_to"], self.state["reply_key"]))
