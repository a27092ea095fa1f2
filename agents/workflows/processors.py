"""The workflow engine on the bus: the run processor and the task worker, both run by the stream shell.

`WorkflowRunner` is a stateful processor keyed by run id. It reads `workflow.requests` (runs to start),
`workflow.results` (task outcomes) and `workflow.control` (cancellations, due retries), turns each into a core event,
calls `advance`, and publishes the commands: task commands to `workflow.tasks`, every change to
`workflow.transitions`, tasks that failed for good to `workflow.deadletters`, and the run's result to the request's
`reply_to`/`reply_key` as a `workflow_result` signal, exactly as the inline runner answers a dialogue. Its `sweep`
(the shell's timer) sends `retry_due` for retries whose wait is over, so a waiting retry blocks nothing.

`TaskWorker` consumes task commands, runs the executor under the task's timeout and emits the result. With an
`OutputStore` (object storage), it first looks for the output of that task's earlier success, and stores every
success before it publishes the result: a command delivered again after a crash is answered from storage without
running the executor. Outputs over the claim-check limit travel as their URI only (`output_uri`), and params that
refer to such outputs (markers, `agents.workflows.claims`) are resolved from storage before the executor runs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from agents.workflows.claims import find_markers, resolve_markers
from agents.workflows.core import (
    CancelRun,
    Command,
    DeadLetterTask,
    FinishRun,
    RetryDue,
    RunEvent,
    RunTask,
    ScheduleRetry,
    StartRun,
    TaskFailed,
    TaskSucceeded,
    Transition,
    advance,
    due_retries,
)
from agents.workflows.errors import PermanentError
from agents.workflows.executors import (
    BaseExecutor,
    Outcome,
    discover_executors,
    failed_outcome,
    run_executor,
    with_defaults,
)
from agents.workflows.model import Workflow
from agents.workflows.storage import OutputStore
from topics import catalog
from topics.errors import TopicError
from topics.event import Event, derived_id
from topics.processor import Emit, State

log = logging.getLogger(__name__)

REQUEST: Final = "switchboard.workflow.Request"
TASK_COMMAND: Final = "switchboard.workflow.TaskCommand"
TASK_RESULT: Final = "switchboard.workflow.TaskResult"
CONTROL: Final = "switchboard.workflow.Control"
TRANSITION: Final = "switchboard.workflow.Transition"
DEAD_TASK: Final = "switchboard.workflow.DeadTask"
SIGNAL: Final = "switchboard.dialogue.Signal"
RUNNER_SOURCE: Final = "/switchboard/workflows/runner"
WORKER_SOURCE: Final = "/switchboard/workflows/worker"


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def at(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def cancel_event(run_id: str, reason: str, *, source: str = "/switchboard/cli", principal: str | None = None) -> Event:
    """The control event that cancels run `run_id` (what `switchboard workflow cancel` sends)."""
    return Event(type=CONTROL, source=source, subject=run_id, principal=principal,
                 data={"run_id": run_id, "kind": "cancel", "task": None, "attempt": None, "reason": reason})


def request_event(run_id: str, workflow: str, payload: Mapping[str, Any], *, requester: str = "cli",
                  reply_to: str | None = None, reply_key: str | None = None, source: str = "/switchboard/cli") -> Event:
    """A `workflow.requests` event starting run `run_id` of `workflow` with input `payload`."""
    return Event(type=REQUEST, source=source, subject=run_id,
                 data={"run_id": run_id, "workflow": workflow, "input": json.dumps(dict(payload), default=str),
                       "requester": requester, "reply_to": reply_to, "reply_key": reply_key})


class WorkflowRunner:
    """Runs each workflow run's state machine (`agents.workflows.core.advance`), one state record per run id.

    Requests for workflows it does not know are answered with a failed result naming the known workflows, so the
    requester does not wait for nothing; unless `answer_unknown` is false (another runner shares
    `workflow.requests`), or the workflow is one of `others` (answered by another processor: the device twin's
    `device_reading`).
    """

    name = "workflow-runs"
    source = catalog.WORKFLOW_REQUESTS
    sources = (catalog.WORKFLOW_REQUESTS, catalog.WORKFLOW_RESULTS, catalog.WORKFLOW_CONTROL)

    def __init__(self, workflows: Mapping[str, Workflow], *, answer_unknown: bool = True,
                 executors: Mapping[str, BaseExecutor] | None = None, others: Collection[str] = ()) -> None:
        self.workflows = dict(workflows)
        # A run keeps the definition it started with, executors' default params merged in (`BaseExecutor.defaults`).
        known = discover_executors() if executors is None else executors
        self.specs = {name: with_defaults(workflow.spec(), known) for name, workflow in self.workflows.items()}
        self.answer_unknown = answer_unknown
        self.others = frozenset(others)

    def initial(self, subject: str) -> State:
        return {}

    def step(self, state: State, event: Event) -> tuple[State, Sequence[Emit]]:
        if event.type == REQUEST and event.data["workflow"] not in self.specs:
            return state, self._unknown(state, event)
        if event.type == REQUEST and not state and not isinstance(_json_object(event.data.get("input")), dict):
            return state, self._refuse(event, f"input is not a JSON object: {event.data.get('input')!r:.200}")
        core_event = self.translate(event)
        if core_event is None:
            return state, []
        new_state, commands = advance(state, core_event)
        if isinstance(core_event, StartRun) and not state:
            new_state["correlationid"] = event.correlationid
        return new_state, self.emits(event, commands)

    def translate(self, event: Event) -> RunEvent | None:
        """The core event an input stands for (None: nothing the core needs to see)."""
        data = event.data
        now = ms(event.time)
        if event.type == REQUEST:
            payload = _json_object(data.get("input")) or {}
            return StartRun(data["run_id"], self.specs[data["workflow"]], payload, now, requester=data["requester"],
                            reply_to=self._reply_topic(data.get("reply_to")), reply_key=data.get("reply_key"))
        if event.type == TASK_RESULT:
            if data["status"] == "succeeded":
                return TaskSucceeded(data["task"], data["attempt"], json.loads(data["output"] or "null"),
                                     data["finished_ms"], data["started_ms"], output_uri=data.get("output_uri"))
            return TaskFailed(data["task"], data["attempt"], data["error"] or "failed", data["finished_ms"],
                              tuple(data["error_types"]), bool(data["transient"]), data["started_ms"])
        if event.type == CONTROL:
            if data["kind"] == "cancel":
                return CancelRun(data["reason"] or "cancelled", now)
            if data["task"] is not None and data["attempt"] is not None:
                return RetryDue(data["task"], data["attempt"], now)
        return None

    @staticmethod
    def _reply_topic(name: str | None) -> str | None:
        """`reply_to` if it is a declared topic of signals; a result is never sent where it cannot be read."""
        if not name:
            return None
        try:
            spec = catalog.get(name)
        except TopicError:
            log.warning("workflow result not sent: reply_to %r is not a declared topic", name)
            return None
        if spec.value_schema != SIGNAL:
            log.warning("workflow result not sent: reply_to %r does not carry %s", name, SIGNAL)
            return None
        return name

    def _unknown(self, state: State, event: Event) -> list[Emit]:
        if not self.answer_unknown or state or event.data["workflow"] in self.others:
            return []
        known = ", ".join(sorted(self.specs)) or "none"
        return self._refuse(event, f"no workflow named {event.data['workflow']!r}; known: {known}")

    def _refuse(self, event: Event, error: str) -> list[Emit]:
        """Answer a request that cannot start a run with a failed result (no state is kept for it)."""
        data = event.data
        finish = FinishRun(data["run_id"], data["workflow"], "failed", None, error, data["requester"],
                           self._reply_topic(data.get("reply_to")), data.get("reply_key"))
        return self.emits(event, [finish])

    def emits(self, cause: Event, commands: Sequence[Command]) -> list[Emit]:
        """The bus events for the core's commands; ids derive from the input and the command, times from the core."""
        out: list[Emit] = []
        for index, command in enumerate(commands):
            if isinstance(command, RunTask):
                data: dict[str, Any] = {
                    "run_id": command.run_id, "workflow": command.workflow, "task": command.task,
                    "attempt": command.attempt, "executor": command.executor,
                    "params": json.dumps(command.params, sort_keys=True, default=str),
                    "timeout_s": command.timeout_s}
                out.append(Emit(catalog.WORKFLOW_TASKS, cause.caused(
                    TASK_COMMAND, RUNNER_SOURCE, data, effect=f"task/{command.task}/{command.attempt}",
                    subject=f"{command.run_id}/{command.task}", time=cause.time)))
            elif isinstance(command, Transition):
                detail: dict[str, Any] = {}
                nxt = commands[index + 1] if index + 1 < len(commands) else None
                if isinstance(nxt, FinishRun) and command.task is None:
                    detail = {"output": nxt.output, "error": nxt.error}
                elif isinstance(nxt, ScheduleRetry):
                    detail = {"not_before_ms": nxt.not_before_ms, "delay_s": nxt.delay_s}
                data = {"run_id": command.run_id, "workflow": command.workflow, "task": command.task,
                        "from_state": command.from_state, "to_state": command.to_state, "reason": command.reason,
                        "attempt": command.attempt, "detail": json.dumps(detail, sort_keys=True, default=str)}
                out.append(Emit(catalog.WORKFLOW_TRANSITIONS, cause.caused(
                    TRANSITION, RUNNER_SOURCE, data, effect=f"transition/{index}", subject=command.run_id,
                    time=at(command.at_ms))))
            elif isinstance(command, DeadLetterTask):
                data = {"run_id": command.run_id, "workflow": command.workflow, "task": command.task,
                        "executor": command.executor, "params": json.dumps(command.params, sort_keys=True,
                                                                            default=str),
                        "error": command.error, "history": [_attempt(entry) for entry in command.history]}
                out.append(Emit(catalog.WORKFLOW_DEADLETTERS, cause.caused(
                    DEAD_TASK, RUNNER_SOURCE, data, effect=f"deadletter/{command.task}", subject=command.run_id,
                    time=cause.time)))
            elif isinstance(command, FinishRun) and command.reply_to:
                session = command.reply_key or command.run_id
                data = {"session_id": session, "agent": command.requester, "kind": "workflow_result",
                        "name": command.workflow, "text": None,
                        "data": json.dumps({"run_id": command.run_id, "status": command.status,
                                            "output": command.output, "error": command.error},
                                           sort_keys=True, default=str)}
                out.append(Emit(catalog.get(command.reply_to), cause.caused(
                    SIGNAL, RUNNER_SOURCE, data, effect="result", subject=session, time=cause.time)))
        return out

    def sweep(self, subject: str, state: State, now: datetime) -> Sequence[Emit]:
        """`retry_due` for each retry of this run whose wait is over; ids are per attempt, so a sweep that runs
        again before the first was applied sends the same event, which the shell and the core drop."""
        emits = []
        for due in due_retries(state, ms(now)):
            data = {"run_id": subject, "kind": "retry_due", "task": due.task, "attempt": due.attempt,
                    "reason": "retry wait over"}
            event = Event(type=CONTROL, source=RUNNER_SOURCE, data=data, subject=subject, time=now,
                          id=derived_id(f"{subject}/{due.task}/{due.attempt}", "retry_due"),
                          correlationid=str(state.get("correlationid") or ""))
            emits.append(Emit(catalog.WORKFLOW_CONTROL, event))
        return emits


def _json_object(text: str | None) -> Any:
    """The JSON value in `text` (None when it is not JSON); an absent input is the empty object."""
    try:
        return json.loads(text or "{}")
    except ValueError:
        return None


def _attempt(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"attempt": int(entry["attempt"]), "status": str(entry["status"]), "error": entry.get("error"),
            "error_types": list(entry.get("error_types") or []), "transient": bool(entry.get("transient")),
            "started_ms": entry.get("started_ms"), "finished_ms": entry.get("finished_ms")}


class TaskWorker:
    """`workflow.tasks` -> run the executor -> `workflow.results`. Scale by running more workers.

    `concurrency` attempts run at once per worker (the app registers it with that many actors on the topic), so
    the parallel branches of a run proceed in parallel even on one worker. With `outputs`, every success is stored
    before its result is published and looked up before a command runs (idempotence across crashes and workers),
    and outputs over `outputs.claim_check_bytes` travel as a URI. The last results are also remembered by command
    id, so a command delivered again to this worker (a rebalance) is answered without a look-up.
    """

    name = "workflow-tasks"
    source = catalog.WORKFLOW_TASKS
    remembered: Final = 1024

    def __init__(self, executors: Mapping[str, BaseExecutor] | None = None, *, concurrency: int = 4,
                 worker: str | None = None, outputs: OutputStore | None = None) -> None:
        self.executors = dict(discover_executors() if executors is None else executors)
        self.concurrency = concurrency
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.outputs = outputs
        self._done: OrderedDict[str, dict[str, Any]] = OrderedDict()

    async def handle(self, event: Event) -> Sequence[Emit]:
        command = event.data
        data = self._done.get(event.id)
        if data is None:
            data = await self.attempt(command)
            self._done[event.id] = data
            while len(self._done) > self.remembered:
                self._done.popitem(last=False)
        result = event.caused(TASK_RESULT, WORKER_SOURCE, data, effect="result", subject=command["run_id"],
                              time=at(data["finished_ms"]))
        return [Emit(catalog.WORKFLOW_RESULTS, result)]

    async def close(self) -> None:
        """Release the output store's connection (the worker stops)."""
        if self.outputs is not None:
            await self.outputs.objects.close()

    async def attempt(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """The result of one command: its stored success if there is one, else what running it gave (a success
        stored first). Storage that does not answer is waited out here (back-pressure), never turned into a
        failed result."""
        where = (command["workflow"], command["run_id"], command["task"], command["attempt"])
        if self.outputs is not None:
            found = await self.outputs.find(*where)
            if found is not None:
                uri, record = found
                log.info("%s/%s attempt %s: answered from %s without running it again", command["run_id"],
                         command["task"], command["attempt"], uri)
                return self._result(command, record, uri)
        outcome = await self.run(command)
        if not outcome.succeeded:
            return self._data(command, "failed", None, None, outcome.error, outcome.error_types, outcome.transient,
                              outcome.started_ms, outcome.finished_ms, self.worker)
        record = {"output": outcome.output, "started_ms": outcome.started_ms, "finished_ms": outcome.finished_ms,
                  "worker": self.worker}
        saved = await self.outputs.save(*where, record) if self.outputs is not None else None
        return self._result(command, record, saved)

    def _result(self, command: Mapping[str, Any], record: Mapping[str, Any], uri: str | None) -> dict[str, Any]:
        """A success: the output inline, or only its URI when it is over the claim-check limit."""
        text = json.dumps(record["output"], sort_keys=True)
        claimed = uri is not None and self.outputs is not None and len(text.encode()) > self.outputs.claim_check_bytes
        return self._data(command, "succeeded", None if claimed else text, uri if claimed else None, None, (), False,
                          int(record["started_ms"]), int(record["finished_ms"]), str(record.get("worker") or ""))

    @staticmethod
    def _data(command: Mapping[str, Any], status: str, output: str | None, output_uri: str | None,
              error: str | None, error_types: Sequence[str], transient: bool, started_ms: int, finished_ms: int,
              worker: str) -> dict[str, Any]:
        return {"run_id": command["run_id"], "workflow": command["workflow"], "task": command["task"],
                "attempt": command["attempt"], "status": status, "output": output, "output_uri": output_uri,
                "error": error, "error_types": list(error_types), "transient": transient, "started_ms": started_ms,
                "finished_ms": finished_ms, "worker": worker}

    async def run(self, command: Mapping[str, Any]) -> Outcome:
        started = ms(datetime.now(UTC))
        executor = self.executors.get(command["executor"])
        if executor is None:
            known = ", ".join(sorted(self.executors))
            missing = PermanentError(f"this worker has no executor {command['executor']!r} (it has {known}); "
                                     "install the plugin that provides it on every worker")
            return failed_outcome(missing, started)
        try:
            params = json.loads(command["params"] or "{}")
        except ValueError:
            params = {}
        if any(True for _ in find_markers(params)):
            if self.outputs is None:
                return failed_outcome(PermanentError("the params refer to stored outputs (claim checks), and this "
                                                     "worker has no object store; run it with settings"), started)
            try:
                params = await resolve_markers(params, self.outputs.load_output)
            except PermanentError as exc:
                return failed_outcome(exc, started)
        log.info("running %s/%s attempt %s with %s", command["run_id"], command["task"], command["attempt"],
                 command["executor"])
        return await run_executor(executor, params, command["timeout_s"])
