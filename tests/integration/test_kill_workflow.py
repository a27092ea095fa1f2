"""Kill test for the workflow engine: runs in flight while one of two workers is SIGKILLed and restarted.

Each run of the demo diamond (start -> double, plus_ten -> join) takes four task hops and a dozen state changes over
the bus, so the kill lands on runs in every stage: requested, tasks commanded, tasks running, results coming back.
Afterwards every run has exactly one result, with the right output, and each of its steps exists once on the bus:
one task command per task (a second command with another id would run the task twice), one transition per state
change. Redelivered copies carry the same event id; readers drop them, so they are allowed.

The runs are of `demo_tally`, whose every execution appends a line to a log file: a command delivered again after
the kill (its result published, its offset not committed) is answered from object storage, so no task that
succeeded runs twice. Only an execution cut off by the kill itself (the killed worker's pid on the line, its output
never stored) may be followed by a second one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from agents.workflows.processors import request_event
from infra.bus.clients import producer as make_producer
from infra.bus.reading import read_topic
from infra.config import Settings
from infra.embedded import EmbeddedStack
from infra.testing import await_all, collect_events, embedded_settings
from topics import AvroCodec, Event, catalog, decode_event, encode_event
from topics.spec import TopicSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TEST_AGENTS = Path(__file__).resolve().parents[1] / "agents"
RUNS = 60
RATE = 10.0  # runs started per second, so the kill falls in the middle
KILL_AFTER_S = 2.0
REPLIES = catalog.agent_topics("sleepy").signals  # any agent's inbox will do
TASKS = ("start", "double", "plus_ten", "join")


def _distinct_ids(events: list[Event], key: str | tuple[str, ...]) -> dict[object, set[str]]:
    keys = (key,) if isinstance(key, str) else key
    by: dict[object, set[str]] = defaultdict(set)
    for event in events:
        by[tuple(event.data.get(k) for k in keys)].add(event.id)
    return by


async def _events(settings: Settings, topic: TopicSpec) -> list[Event]:
    """Every event on `topic`, to its true end, redelivered copies included."""
    codec = AvroCodec()
    return [decode_event(record.value, record.headers, codec) async for record in read_topic(settings, topic.name)]


async def test_workflow_runs_survive_a_worker_kill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the workers import demo_steps (the tally) from the demo agent's folder
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TEST_AGENTS / "workflow_demo"),
                                                                     os.environ.get("PYTHONPATH")])))
    settings = embedded_settings(tmp_path, workers={"count": 2, "agent_dirs": [TEST_AGENTS]})
    tally = tmp_path / "executions.log"
    stack = EmbeddedStack(settings)
    runs: dict[str, tuple[str, int, int]] = {}  # session -> (run id, a, b)
    codec = AvroCodec()
    try:
        await stack.up()
        producer = make_producer(settings)
        await producer.start()

        async def start_runs() -> None:
            for i in range(RUNS):
                run_id, session = str(uuid.uuid4()), f"kw-{uuid.uuid4().hex[:8]}"
                runs[session] = (run_id, i, i + 1)
                event = request_event(run_id, "demo_tally", {"a": i, "b": i + 1, "log": str(tally)},
                                      requester="sleepy",
                                      reply_to=REPLIES.name, reply_key=session, source="/tests/kill-workflow")
                record = encode_event(event, codec)
                await producer.send_and_wait(catalog.WORKFLOW_REQUESTS.name, record.value, key=record.key,
                                             headers=record.headers)
                await asyncio.sleep(1 / RATE)

        try:
            load = asyncio.create_task(start_runs())
            await asyncio.sleep(KILL_AFTER_S)  # the scenario: a crash with runs in flight
            victim = next(r for r in stack.records() if r.name == "worker-1")
            os.killpg(victim.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await asyncio.to_thread(psutil.Process(victim.pid).wait, 10)
            await stack.up()  # restarts the dead worker
            await load
        finally:
            await producer.stop()
        results = await await_all(settings, REPLIES, set(runs), lambda e: str(e.data["session_id"]), timeout_s=180)
        finished_s = time.monotonic() - killed_at
        # Everything the runs did is on the bus before their results (published in the same step): read it all.
        transitions = await _events(settings, catalog.WORKFLOW_TRANSITIONS)
        commands = await _events(settings, catalog.WORKFLOW_TASKS)
        outcomes = await _events(settings, catalog.WORKFLOW_RESULTS)
    finally:
        stack.down()

    executions = [line.split() for line in tally.read_text(encoding="utf-8").splitlines()]
    reused = sum(log.read_text(errors="replace").count("without running it again")
                 for log in (tmp_path / "logs").glob("worker-*.log"))
    print(f"\nworkflow kill test: {RUNS} runs, all finished {finished_s:.1f}s after the kill; "
          f"{len(transitions)} transitions and {len(commands)} task commands read (redelivered copies included); "
          f"{len(executions)} executions for {RUNS * len(TASKS)} tasks; {reused} command(s) delivered again were "
          "answered from object storage")
    _check(runs, results, transitions, commands, outcomes, executions)
    _check_executions(runs, executions, victim.pid)


def _story(run_id: str, transitions: list[Event], commands: list[Event], outcomes: list[Event],
           executions: list[list[str]]) -> str:
    """What the bus and the tally hold of one run: where an unanswered run stopped."""
    def mine(events: list[Event]) -> list[Event]:
        return [e for e in events if e.data["run_id"] == run_id]
    lines = [f"run {run_id}:"]
    lines += [f"  transition {e.data['task']} {e.data['from_state']}->{e.data['to_state']} id={e.id}"
              for e in mine(transitions)]
    lines += [f"  command {e.data['task']}/{e.data['attempt']} id={e.id}" for e in mine(commands)]
    lines += [f"  result {e.data['task']}/{e.data['attempt']} {e.data['status']} id={e.id}" for e in mine(outcomes)]
    lines += [f"  executed {key} by pid {pid}" for key, pid in executions if key.startswith(f"{run_id}/")]
    return "\n".join(lines)


def _check(runs: dict[str, tuple[str, int, int]], results: dict[str, list[Event]], transitions: list[Event],
           commands: list[Event], task_results: list[Event], executions: list[list[str]]) -> None:
    """One right result per run; each task commanded once; each state change once."""
    missing = sorted(set(runs) - set(results))
    stories = "\n".join(_story(runs[s][0], transitions, commands, task_results, executions) for s in missing[:3])
    assert not missing, f"{len(missing)} runs never answered, e.g. {missing[:3]}\n{stories}"
    wrong = {}
    for session, (run_id, a, b) in runs.items():
        outcomes = {e.id: json.loads(e.data["data"]) for e in results[session]}
        expected = {"run_id": run_id, "status": "succeeded", "error": None,
                    "output": {"total": (a + b) * 2 + (a + b) + 10, "started_with": a + b}}
        if list(outcomes.values()) != [expected]:
            wrong[session] = list(outcomes.values())
    assert not wrong, f"{len(wrong)} runs without exactly their one right result, e.g. {list(wrong.items())[:2]}"
    run_ids = {run_id for run_id, _, _ in runs.values()}
    commands = [c for c in commands if c.data["run_id"] in run_ids]
    twice = {k: ids for k, ids in _distinct_ids(commands, ("run_id", "task", "attempt")).items() if len(ids) > 1}
    assert not twice, f"task commanded twice (different ids): {list(twice)[:3]}"
    per_task = _distinct_ids(commands, ("run_id", "task"))
    assert len(per_task) == RUNS * len(TASKS), f"{RUNS * len(TASKS) - len(per_task)} tasks never commanded"
    changes = _distinct_ids([t for t in transitions if t.data["run_id"] in run_ids], ("run_id", "task", "to_state"))
    doubled = {k: ids for k, ids in changes.items() if len(ids) > 1}
    assert not doubled, f"state changes that happened twice: {list(doubled)[:3]}"
    assert len(changes) == RUNS * (2 + 2 * len(TASKS)), "state changes missing from the audit trail"


def _check_executions(runs: dict[str, tuple[str, int, int]], executions: list[list[str]], killed: int) -> None:
    """Every task ran; none ran again after it succeeded (only a run cut off by the kill may be repeated)."""
    by_task: dict[str, list[int]] = defaultdict(list)
    for key, pid in executions:
        by_task[key].append(int(pid))
    wanted = {f"{run_id}/{task}" for run_id, _, _ in runs.values() for task in TASKS}
    assert not wanted - set(by_task), f"tasks that never ran: {sorted(wanted - set(by_task))[:3]}"
    twice = {key: pids for key, pids in by_task.items() if key in wanted and any(p != killed for p in pids[:-1])}
    assert not twice, f"tasks run again after they succeeded (pids of each execution): {list(twice.items())[:3]}"


async def test_a_run_goes_on_where_it_was_after_the_stack_goes_down_and_up(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`switchboard down` while a run's middle task works, then `up`: the run finishes with the right output, and
    the task that had succeeded before the restart is not run again."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TEST_AGENTS / "workflow_demo"),
                                                                     os.environ.get("PYTHONPATH")])))
    settings = embedded_settings(tmp_path, workers={"agent_dirs": [TEST_AGENTS]})
    tally = tmp_path / "executions.log"
    stack = EmbeddedStack(settings)
    run_id, session = str(uuid.uuid4()), f"restart-{uuid.uuid4().hex[:8]}"
    try:
        await stack.up()
        request = request_event(run_id, "demo_restart", {"a": 20, "seconds": 4, "log": str(tally)},
                                requester="sleepy", reply_to=REPLIES.name, reply_key=session, source="/tests/restart")
        producer = make_producer(settings)
        await producer.start()
        try:
            record = encode_event(request, AvroCodec())
            await producer.send_and_wait(catalog.WORKFLOW_REQUESTS.name, record.value, key=record.key,
                                         headers=record.headers)
        finally:
            await producer.stop()
        # The nap has been commanded: `first` is done and recorded, the run is in the middle.
        await collect_events(settings, catalog.WORKFLOW_TASKS,
                             lambda e: e.data["run_id"] == run_id and e.data["task"] == "nap", count=1, timeout_s=60)
        stack.down()
        await stack.up()
        results = await await_all(settings, REPLIES, {session}, lambda e: str(e.data["session_id"]), timeout_s=120)
    finally:
        stack.down()
    assert session in results, "the run did not finish after the restart"
    outcome = json.loads(results[session][0].data["data"])
    assert outcome["status"] == "succeeded" and outcome["output"] == {"result": 42, "nap": "rested"}, outcome
    runs = [line.split()[0] for line in tally.read_text().splitlines()]
    assert runs.count(f"{run_id}/first") == 1, f"`first` ran {runs.count(f'{run_id}/first')} times"
    assert runs.count(f"{run_id}/last") == 1
