"""Claim checks and idempotent tasks without a broker: the pure core hands large outputs around by reference, the
task worker resolves references and answers a command again from stored outputs instead of running it twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agents.workflows import Task, Workflow
from agents.workflows.claims import ClaimRef, find_markers, marker, resolve_markers
from agents.workflows.core import RunTask, StartRun, TaskSucceeded, advance
from agents.workflows.offline import run_offline
from agents.workflows.processors import TaskWorker
from agents.workflows.storage import MemoryStore, OutputStore, output_key
from topics import Event

URI = "s3://switchboard/workflows/w/r1/make/1.json"


def _started(*tasks: Task, output: Any = None) -> dict[str, Any]:
    workflow = Workflow("w", tasks=list(tasks), output=output)
    state, _ = advance({}, StartRun("r1", workflow.spec(), {"n": 3}, 0))
    return state


MAKE = Task("make", "python", {"function": "m:make"})


def _after_big_make(task: Task, output: Any = None) -> tuple[dict[str, Any], list[Any]]:
    state = _started(MAKE, task, output=output)
    return advance(state, TaskSucceeded("make", 1, None, 10, output_uri=URI))


def test_a_claim_checked_output_reaches_the_next_task_as_a_marker() -> None:
    use = Task("use", "python", {"function": "m:use", "args": ["{{tasks.make.output}}"],
                                 "kwargs": {"rows": "{{tasks.make.output.json.rows}}", "n": "{{input.n}}"}},
               depends_on=["make"])
    state, commands = _after_big_make(use)
    assert state["tasks"]["make"] == {**state["tasks"]["make"], "output": None, "output_uri": URI,
                                      "status": "succeeded"}
    run = next(c for c in commands if isinstance(c, RunTask))
    assert run.params == {"function": "m:use", "args": [marker(URI)],
                          "kwargs": {"rows": marker(URI, ["json", "rows"]), "n": 3}}
    json.dumps(state)  # the state stays plain JSON


@pytest.mark.parametrize(("task", "refused"), [
    (Task("use", "python", {"function": "m:use", "args": ["rows: {{tasks.make.output.rows}}"]}, depends_on=["make"]),
     "params.args[0] `rows: {{tasks.make.output.rows}}` reads tasks.make.output.rows"),
    (Task("use", "python", {"function": "m:use", "args": ["{{len(tasks.make.output)}}"]}, depends_on=["make"]),
     "reads tasks.make.output"),
    (Task("use", "python", {"function": "m:use"}, depends_on=["make"], condition="tasks.make.output.ok"),
     "the condition `tasks.make.output.ok` reads tasks.make.output.ok"),
])
def test_what_needs_the_value_of_a_claim_checked_output_fails_the_task_saying_why(task: Task, refused: str) -> None:
    state, commands = _after_big_make(task)
    assert state["tasks"]["use"]["status"] == "failed" and state["status"] == "failed"
    assert refused in state["tasks"]["use"]["error"]
    assert "workflows.claim_check_bytes" in state["tasks"]["use"]["error"]
    assert not any(isinstance(c, RunTask) for c in commands)


def test_the_status_of_a_claim_checked_task_is_still_readable() -> None:
    use = Task("use", "python", {"function": "m:use"}, depends_on=["make"],
               condition="tasks.make.status == 'succeeded'")
    state, _ = _after_big_make(use)
    assert state["tasks"]["use"]["status"] == "running"


def test_a_large_final_output_stays_a_reference() -> None:
    state, _ = _after_big_make(Task("other", "python", {"function": "m:x"}),
                               output={"big": "{{tasks.make.output}}", "n": "{{input.n}}"})
    done, _ = advance(state, TaskSucceeded("other", 1, 5, 20))
    assert done["status"] == "succeeded" and done["output"] == {"big": marker(URI), "n": 3}


def test_claim_refs_look_up_like_mappings() -> None:
    ref = ClaimRef(URI)
    assert ref["a"][0] == ClaimRef(URI, ("a", 0)) and ref.get("b") == ClaimRef(URI, ("b",)) and len(ref) == 0


async def test_markers_resolve_from_the_store_with_missing_keys_as_none() -> None:
    loaded: list[str] = []

    async def load(uri: str) -> Any:
        loaded.append(uri)
        return {"json": {"rows": [1, 2]}}

    value = {"a": marker(URI, ["json", "rows"]), "b": [marker(URI, ["json", "missing"])], "c": 1}
    assert await resolve_markers(value, load) == {"a": [1, 2], "b": [None], "c": 1}
    assert loaded == [URI]  # each object read once


# -- through the processors and the codec (offline) -------------------------------------------------------------
BIG = Workflow("big", tasks=[
    Task("make", "python", {"function": "operator:mul", "args": ["{{input.text}}", "{{input.times}}"]}),
    Task("measure", "python", {"function": "builtins:len", "args": ["{{tasks.make.output}}"]}, depends_on=["make"]),
], output={"length": "{{tasks.measure.output}}", "text": "{{tasks.make.output}}"})


async def test_a_large_output_rides_as_a_uri_and_the_next_task_still_gets_the_data() -> None:
    run = await run_offline(BIG, {"text": "abc", "times": 400}, claim_check_bytes=1000)
    assert run.status == "succeeded"
    results = {r.data["task"]: r.data for r in run.published["workflow.results"]}
    assert results["make"]["output"] is None and results["make"]["output_uri"].startswith("memory://workflows/big/")
    assert results["measure"]["output"] == "1200" and results["measure"]["output_uri"] is None
    command = next(c for c in run.published["workflow.tasks"] if c.data["task"] == "measure")
    assert len(command.data["params"]) < 200 and list(find_markers(json.loads(command.data["params"])))
    assert run.output == {"length": 1200, "text": "abc" * 400}
    assert run.state["output"]["text"] == marker(results["make"]["output_uri"])  # the result carries the URI


async def test_below_the_limit_outputs_ride_inline() -> None:
    run = await run_offline(BIG, {"text": "abc", "times": 4})
    assert {r.data["task"]: r.data["output_uri"] for r in run.published["workflow.results"]} == \
        {"make": None, "measure": None}
    assert run.output == {"length": 12, "text": "abc" * 4}


async def test_a_command_delivered_again_to_a_new_worker_is_answered_from_storage(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agents" / "workflow_demo"))
    try:
        log = tmp_path / "ran.log"
        params = {"function": "demo_steps:tally", "args": [str(log), "r1/start", "add", 2, 3]}
        command = Event(type="switchboard.workflow.TaskCommand", source="/test", subject="r1/start",
                        data={"run_id": "r1", "workflow": "w", "task": "start", "attempt": 1, "executor": "python",
                              "params": json.dumps(params), "timeout_s": None})
        store = MemoryStore()
        first = await TaskWorker(outputs=OutputStore(store)).handle(command)
        # the worker is killed after publishing, before committing: another worker gets the command again
        again = await TaskWorker(outputs=OutputStore(store)).handle(command)
        assert len(log.read_text().splitlines()) == 1
        assert first[0].event == again[0].event and first[0].event.data["output"] == "5"
        assert output_key("w", "r1", "start", 1) in store.objects
        # attempt 2 (its attempt 1 result was lost and the run retried): the task succeeded already, not run again
        retry = Event(type=command.type, source="/test", subject="r1/start", data={**command.data, "attempt": 2})
        answered = await TaskWorker(outputs=OutputStore(store)).handle(retry)
        assert answered[0].event.data["status"] == "succeeded" and answered[0].event.data["attempt"] == 2
        assert len(log.read_text().splitlines()) == 1
    finally:
        sys.path.pop(0)
        sys.modules.pop("demo_steps", None)


async def test_a_failed_attempt_is_not_stored_and_runs_again() -> None:
    store = MemoryStore()
    command = Event(type="switchboard.workflow.TaskCommand", source="/test", subject="r1/p",
                    data={"run_id": "r1", "workflow": "w", "task": "p", "attempt": 1, "executor": "python",
                          "params": json.dumps({"function": "json:loads", "args": ["{no"]}), "timeout_s": None})
    result = await TaskWorker(outputs=OutputStore(store)).handle(command)
    assert result[0].event.data["status"] == "failed" and not store.objects
