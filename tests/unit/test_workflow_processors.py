"""The run processor and the task worker, driven through the Avro codec in memory (agents.workflows.offline): the
same events as on the bus, without a broker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from agents.workflows import Task, Workflow, load_workflow_text
from agents.workflows.offline import run_offline
from agents.workflows.processors import TaskWorker, WorkflowRunner, cancel_event, request_event
from topics import catalog
from topics.binding import encode_event
from topics.codec import AvroCodec

DIAMOND = Workflow("diamond", tasks=[
    Task("start", "python", {"function": "operator:add", "args": ["{{input.a}}", "{{input.b}}"]}),
    Task("double", "python", {"function": "operator:mul", "args": ["{{tasks.start.output}}", 2]},
         depends_on=["start"]),
    Task("plus_ten", "python", {"function": "operator:add", "args": ["{{tasks.start.output}}", 10]},
         depends_on=["start"]),
    Task("join", "python", {"function": "operator:add",
                            "args": ["{{tasks.double.output}}", "{{tasks.plus_ten.output}}"]},
         depends_on=["double", "plus_ten"]),
])


async def test_a_diamond_runs_to_completion_through_the_codec() -> None:
    run = await run_offline(DIAMOND, {"a": 1, "b": 2})
    assert run.status == "succeeded" and run.state["output"] == (1 + 2) * 2 + (1 + 2 + 10)
    transitions = run.published["workflow.transitions"]
    assert [t.data["to_state"] for t in transitions if t.data["task"] is None] == ["running", "succeeded"]
    assert json.loads(transitions[-1].data["detail"]) == {"output": 19, "error": None}
    assert len(run.published["workflow.tasks"]) == 4


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[str, list[int]]]:
    calls: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) <= 2:
            return web.Response(status=503, text="try later")
        return web.json_response({"value": 42})

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/", calls
    await runner.cleanup()


FLAKY = """\
workflow: flaky_fetch
tasks:
  - name: fetch
    executor: http_client
    params: {url: "{{input.url}}"}
    retry: {max_attempts: 4, initial_delay_s: 0.1}
output: "{{tasks.fetch.output.json.value}}"
"""


async def test_a_flaky_server_is_retried_until_it_answers(flaky: tuple[str, list[int]]) -> None:
    url, calls = flaky
    run = await run_offline(load_workflow_text(FLAKY), {"url": url})
    assert run.status == "succeeded" and run.state["output"] == 42 and len(calls) == 3
    assert [h["status"] for h in run.state["tasks"]["fetch"]["history"]] == ["failed", "failed", "succeeded"]
    retries = [json.loads(t.data["detail"]) for t in run.published["workflow.transitions"]
               if t.data["to_state"] == "retry_wait"]
    assert len(retries) == 2 and all(r["delay_s"] > 0 for r in retries)


async def test_a_poison_task_is_dead_lettered_with_its_history() -> None:
    poison = Workflow("poison", tasks=[Task("parse", "python", {"function": "json:loads", "args": ["{"]},
                                            retry={"max_attempts": 2, "initial_delay_s": 0.01,
                                                   "retry_on": ("ValueError",)})])
    run = await run_offline(poison, {})
    assert run.status == "failed"
    [dead] = run.published["workflow.deadletters"]
    assert dead.data["task"] == "parse" and [h["attempt"] for h in dead.data["history"]] == [1, 2]
    assert all("JSONDecodeError" in h["error"] for h in dead.data["history"])


def test_the_result_goes_back_to_the_requester_like_the_inline_runner() -> None:
    runner = WorkflowRunner({"diamond": DIAMOND})
    request = request_event("run-9", "diamond", {"a": 1, "b": 1}, requester="customer_service",
                            reply_to="agent.customer_service.signals", reply_key="session-1")
    state, emits = runner.step({}, request)
    assert [e.topic for e in emits] == [catalog.WORKFLOW_TRANSITIONS, catalog.WORKFLOW_TRANSITIONS,
                                        catalog.WORKFLOW_TASKS]
    assert emits[2].event.subject == "run-9/start" and emits[2].event.causationid == request.id
    assert runner.step(state, request) == (state, [])  # the same request again: the same run, nothing new
    state, emits = runner.step(state, cancel_event("run-9", "changed my mind"))
    [reply] = [e for e in emits if e.topic.name == "agent.customer_service.signals"]
    assert reply.event.subject == "session-1"
    assert reply.event.data["kind"] == "workflow_result" and reply.event.data["agent"] == "customer_service"
    assert json.loads(reply.event.data["data"]) == {"run_id": "run-9", "status": "cancelled", "output": None,
                                                    "error": "cancelled: changed my mind"}
    for emit in emits:
        encode_event(emit.event, AvroCodec())  # valid against its schema


def test_unknown_workflows_are_left_to_the_inline_runner_or_answered() -> None:
    request = request_event("run-1", "nope", {}, reply_to="agent.helpdesk.signals", reply_key="s")
    assert WorkflowRunner({}, answer_unknown=False).step({}, request) == ({}, [])
    state, [emit] = WorkflowRunner({"diamond": DIAMOND}).step({}, request)
    assert state == {} and "no workflow named 'nope'; known: diamond" in emit.event.data["data"]


def test_an_input_that_is_not_a_json_object_is_refused() -> None:
    request = request_event("run-1", "diamond", {}, reply_to="agent.helpdesk.signals", reply_key="s")
    request = request.with_data({**request.data, "input": "[1, 2"})
    state, [emit] = WorkflowRunner({"diamond": DIAMOND}).step({}, request)
    assert state == {} and "input is not a JSON object: '[1, 2'" in emit.event.data["data"]


def test_a_reply_to_that_is_not_a_signals_topic_is_not_used() -> None:
    request = request_event("run-1", "diamond", {}, reply_to="dialogue.turns", reply_key="s")
    state, _ = WorkflowRunner({"diamond": DIAMOND}).step({}, request)
    assert state["reply_to"] is None


async def test_the_worker_remembers_results_and_reports_unknown_executors() -> None:
    worker = TaskWorker({}, worker="w1")
    command = WorkflowRunner({"diamond": DIAMOND}).step({}, request_event("r", "diamond", {"a": 1, "b": 1}))[1][2]
    [first] = await worker.handle(command.event)
    [again] = await worker.handle(command.event)
    assert first.event == again.event and first.topic == catalog.WORKFLOW_RESULTS
    data: Any = first.event.data
    assert data["status"] == "failed" and "no executor 'python'" in data["error"] and not data["transient"]
