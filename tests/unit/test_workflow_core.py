"""The pure core `advance`: DAG scheduling, results, retries with backoff, failure, cancel, and properties that
hold for any sequence of events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.workflows import RetryPolicy, Task, Workflow, advance
from agents.workflows.core import (
    DONE,
    RUN_STATUSES,
    TASK_STATUSES,
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
    due_retries,
)

FAST = RetryPolicy(max_attempts=3, initial_delay_s=1, multiplier=2, max_delay_s=10, jitter=0.5)


def diamond(*, fail_fast: bool = True, condition: str | None = None) -> Workflow:
    fetch = Task("fetch", "python", {"function": "m:f", "kwargs": {"n": "{{input.n}}"}}, retry=FAST)
    left = Task("left", "python", {"function": "m:f", "args": ["{{tasks.fetch.output.value}}"]}, depends_on=[fetch],
                retry=FAST, condition=condition)
    right = Task("right", "python", {"function": "m:f"}, depends_on=[fetch], retry=FAST, timeout_s=5)
    join = Task("join", "python", {"function": "m:f", "args": ["{{tasks.left.output}}", "{{tasks.right.output}}"]},
                depends_on=[left, right], retry=FAST)
    return Workflow("diamond", tasks=[fetch, left, right, join], fail_fast=fail_fast)


def start(workflow: Workflow | None = None, **kwargs: Any) -> tuple[dict[str, Any], list[Command]]:
    wf = workflow or diamond()
    return advance({}, StartRun("run-1", wf.spec(), {"n": 2}, 1_000, requester="test", reply_to="agent.x.signals",
                                reply_key="s1", **kwargs))


def of(commands: Sequence[Command], kind: type) -> list[Any]:
    return [command for command in commands if isinstance(command, kind)]


def test_start_runs_tasks_without_dependencies_with_rendered_params() -> None:
    state, commands = start()
    [task] = of(commands, RunTask)
    assert (task.task, task.attempt, task.params) == ("fetch", 1, {"function": "m:f", "kwargs": {"n": 2}})
    assert state["status"] == "running" and state["tasks"]["fetch"]["status"] == "running"
    assert [(t.task, t.to_state) for t in of(commands, Transition)] == [(None, "running"), ("fetch", "running")]


def test_diamond_runs_branches_in_parallel_and_joins() -> None:
    state, _ = start()
    state, commands = advance(state, TaskSucceeded("fetch", 1, {"value": 7}, 2_000))
    assert {(c.task, tuple(c.params.get("args", ()))) for c in of(commands, RunTask)} == {
        ("left", (7,)), ("right", ())}
    state, commands = advance(state, TaskSucceeded("right", 1, "R", 3_000))
    assert of(commands, RunTask) == []  # join still waits for left
    state, commands = advance(state, TaskSucceeded("left", 1, "L", 4_000))
    [join] = of(commands, RunTask)
    assert join.params["args"] == ["L", "R"]
    state, commands = advance(state, TaskSucceeded("join", 1, {"sum": 3}, 5_000))
    [finish] = of(commands, FinishRun)
    assert (finish.status, finish.output, finish.error, finish.reply_to, finish.reply_key) == (
        "succeeded", {"sum": 3}, None, "agent.x.signals", "s1")
    assert state["status"] == "succeeded" and state["finished_ms"] == 5_000


def test_transient_failure_schedules_a_retry_without_blocking_other_work() -> None:
    state, _ = start()
    state, _ = advance(state, TaskSucceeded("fetch", 1, {"value": 1}, 2_000))
    state, commands = advance(state, TaskFailed("left", 1, "503", 3_000, ("TransientError",), True))
    [retry] = of(commands, ScheduleRetry)
    assert retry.attempt == 2 and 3_000 + 500 <= retry.not_before_ms <= 3_000 + 1_500
    assert state["tasks"]["left"]["status"] == "retry_wait"
    # meanwhile the other branch goes on
    state, commands = advance(state, TaskSucceeded("right", 1, "R", 3_100))
    assert state["tasks"]["right"]["status"] == "succeeded"
    # too early: ignored; due: attempt 2 runs
    assert advance(state, RetryDue("left", 2, retry.not_before_ms - 1)) == (state, [])
    assert due_retries(state, retry.not_before_ms - 1) == []
    assert due_retries(state, retry.not_before_ms) == [RetryDue("left", 2, retry.not_before_ms)]
    state, commands = advance(state, RetryDue("left", 2, retry.not_before_ms))
    assert [(c.task, c.attempt) for c in of(commands, RunTask)] == [("left", 2)]


def test_exhausted_retries_fail_the_run_and_dead_letter_the_task_with_its_history() -> None:
    state, _ = start()
    now = 2_000
    for attempt in (1, 2, 3):
        state, commands = advance(state, TaskFailed("fetch", attempt, f"down {attempt}", now, ("ConnectionError",),
                                                    True, started_ms=now - 10))
        if attempt < 3:
            [retry] = of(commands, ScheduleRetry)
            now = retry.not_before_ms
            state, _ = advance(state, RetryDue("fetch", attempt + 1, now))
    [dead] = of(commands, DeadLetterTask)
    assert dead.task == "fetch" and dead.error == "down 3"
    assert [(h["attempt"], h["error"]) for h in dead.history] == [(1, "down 1"), (2, "down 2"), (3, "down 3")]
    [finish] = of(commands, FinishRun)
    assert finish.status == "failed" and "task fetch failed: down 3" in (finish.error or "")
    assert {name: t["status"] for name, t in state["tasks"].items()} == {
        "fetch": "failed", "left": "cancelled", "right": "cancelled", "join": "cancelled"}


def test_a_permanent_error_is_not_retried() -> None:
    state, _ = start()
    state, commands = advance(state, TaskFailed("fetch", 1, "404", 2_000, ("PermanentError", "ExecutorError"), False))
    assert of(commands, ScheduleRetry) == [] and state["status"] == "failed"


def test_without_fail_fast_only_the_branch_fails() -> None:
    state, _ = start(diamond(fail_fast=False))
    state, _ = advance(state, TaskSucceeded("fetch", 1, {"value": 1}, 2_000))
    state, commands = advance(state, TaskFailed("left", 1, "bad", 3_000, ("ValueError",), False))
    assert state["status"] == "running" and state["tasks"]["join"]["status"] == "upstream_failed"
    state, commands = advance(state, TaskSucceeded("right", 1, "R", 4_000))
    [finish] = of(commands, FinishRun)
    assert finish.status == "failed" and state["tasks"]["right"]["status"] == "succeeded"


def test_a_false_condition_skips_the_task_and_its_dependants() -> None:
    state, _ = start(diamond(condition="input.n > 5"))
    state, commands = advance(state, TaskSucceeded("fetch", 1, {"value": 1}, 2_000))
    assert [c.task for c in of(commands, RunTask)] == ["right"]
    state, commands = advance(state, TaskSucceeded("right", 1, "R", 3_000))
    assert state["tasks"]["left"]["status"] == "skipped" and state["tasks"]["join"]["status"] == "skipped"
    [finish] = of(commands, FinishRun)
    assert finish.status == "succeeded" and finish.output is None


def test_a_template_that_cannot_be_rendered_fails_the_task_for_good() -> None:
    wf = Workflow("w", tasks=[Task("a", "python", {"function": "m:f", "args": ["{{ 1 / input.zero }}"]})])
    state, commands = advance({}, StartRun("r", wf.spec(), {"zero": 0}, 1))
    [dead] = of(commands, DeadLetterTask)
    assert "division by zero" in dead.error and state["status"] == "failed"


def test_cancel_stops_everything_and_late_results_are_ignored() -> None:
    state, _ = start()
    state, commands = advance(state, CancelRun("operator said so", 2_000))
    [finish] = of(commands, FinishRun)
    assert finish.status == "cancelled" and finish.error == "cancelled: operator said so"
    assert {t["status"] for t in state["tasks"].values()} == {"cancelled"}
    assert advance(state, TaskSucceeded("fetch", 1, {}, 3_000)) == (state, [])


def test_duplicates_and_stale_results_change_nothing() -> None:
    state, _ = start()
    assert advance(state, StartRun("run-1", diamond().spec(), {}, 5)) == (state, [])
    assert advance(state, TaskSucceeded("fetch", 2, {}, 5)) == (state, [])  # not the running attempt
    assert advance(state, TaskSucceeded("nope", 1, {}, 5)) == (state, [])
    assert advance({}, TaskSucceeded("fetch", 1, {}, 5)) == ({}, [])  # unknown run
    after, _ = advance(state, TaskSucceeded("fetch", 1, {"value": 1}, 6))
    assert advance(after, TaskSucceeded("fetch", 1, {"value": 1}, 6)) == (after, [])


def test_an_explicit_output_template_and_several_sinks() -> None:
    wf = Workflow("w", tasks=[Task("a", "python", {"function": "m:f"}), Task("b", "python", {"function": "m:f"})])
    state, _ = advance({}, StartRun("r", wf.spec(), {}, 1))
    state, _ = advance(state, TaskSucceeded("a", 1, 1, 2))
    state, commands = advance(state, TaskSucceeded("b", 1, 2, 3))
    assert of(commands, FinishRun)[0].output == {"a": 1, "b": 2}
    wf.output = {"total": "{{ tasks.a.output + tasks.b.output }}"}
    state, _ = advance({}, StartRun("r", wf.spec(), {}, 1))
    state, _ = advance(state, TaskSucceeded("a", 1, 1, 2))
    state, commands = advance(state, TaskSucceeded("b", 1, 2, 3))
    assert of(commands, FinishRun)[0].output == {"total": 3}


# -- properties ----------------------------------------------------------------------------------------------------
TASKS = ("fetch", "left", "right", "join")
events = st.one_of(
    st.builds(TaskSucceeded, st.sampled_from(TASKS), st.integers(1, 4), st.sampled_from([None, 1, {"value": 2}]),
              st.integers(0, 100_000)),
    st.builds(TaskFailed, st.sampled_from(TASKS), st.integers(1, 4), st.just("boom"), st.integers(0, 100_000),
              st.sampled_from([(), ("TransientError",), ("ValueError",), ("PermanentError",)]), st.booleans()),
    st.builds(RetryDue, st.sampled_from(TASKS), st.integers(1, 4), st.integers(0, 100_000)),
    st.builds(CancelRun, st.just("stop"), st.integers(0, 100_000)),
)


def _feed(state: dict[str, Any], sequence: Sequence[RunEvent]) -> tuple[dict[str, Any], list[Command]]:
    out: list[Command] = []
    for event in sequence:
        state, commands = advance(state, event)
        out.extend(commands)
    return state, out


def _check(state: dict[str, Any], commands: Sequence[Command]) -> None:
    tasks = state["tasks"]
    assert state["status"] in RUN_STATUSES
    finishes = of(commands, FinishRun)
    assert len(finishes) == (0 if state["status"] == "running" else 1)
    specs = {spec["name"]: spec for spec in state["workflow"]["tasks"]}
    for name, entry in tasks.items():
        assert entry["status"] in TASK_STATUSES
        assert 0 <= entry["attempt"] <= specs[name]["retry"]["max_attempts"]
        assert (entry["status"] == "retry_wait") == (entry["not_before_ms"] is not None)
        if entry["status"] in ("running", "retry_wait", "succeeded"):
            assert all(tasks[dep]["status"] == "succeeded" for dep in specs[name]["depends_on"])
        if state["status"] != "running":
            assert entry["status"] in DONE
    if state["status"] == "succeeded":
        assert all(entry["status"] in ("succeeded", "skipped") for entry in tasks.values())
    # every RunTask is a new attempt: (task, attempt) never repeats
    runs = [(c.task, c.attempt) for c in of(commands, RunTask)]
    assert len(runs) == len(set(runs))
    json.dumps(state)  # storable


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=40), st.booleans())
def test_any_event_sequence_leaves_a_valid_state(sequence: list[RunEvent], fail_fast: bool) -> None:
    state, commands = start(diamond(fail_fast=fail_fast))
    state, more = _feed(state, sequence)
    _check(state, [*commands, *more])


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=40), st.integers(0, 40))
def test_replay_reproduces_the_same_commands_even_across_a_stored_state(sequence: list[RunEvent], cut: int) -> None:
    first_state, _ = start()
    state1, commands1 = _feed(first_state, sequence)
    state2, commands2 = _feed(first_state, sequence)
    assert (state1, commands1) == (state2, commands2)
    # stop after `cut` events, store the state as JSON (a restart), go on: the same commands
    head, tail = sequence[:cut], sequence[cut:]
    state3, commands3 = _feed(first_state, head)
    state3, commands4 = _feed(json.loads(json.dumps(state3)), tail)
    assert (state3, [*commands3, *commands4]) == (state1, commands1)


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=30))
def test_results_that_follow_the_commands_always_finish_the_run(noise: list[RunEvent]) -> None:
    """Answer every RunTask (and every due retry) and the run ends, whatever noise came first."""
    state, commands = start()
    state, more = _feed(state, noise)
    pending = [c for c in [*commands, *more] if isinstance(c, RunTask)]
    now = 200_000
    for _ in range(100):
        if state["status"] != "running":
            break
        due = due_retries(state, now + 100_000)
        if due:
            state, new = advance(state, due[0])
        elif pending:
            task = pending.pop(0)
            state, new = advance(state, TaskSucceeded(task.task, task.attempt, {"value": 1}, now))
        else:
            break
        pending.extend(c for c in new if isinstance(c, RunTask))
        now += 1
    assert state["status"] != "running"
