"""The workflow engine on the real stack: the session worker runs the demo workflows of
tests/agents/workflow_demo/workflows (a diamond, a flaky HTTP fetch, a poison task, an output too large for the
bus)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp import web

from agents.workflows.claims import marker, resolve_markers
from agents.workflows.processors import request_event
from agents.workflows.storage import OutputStore, S3Store
from infra.bus.clients import producer as make_producer
from infra.config import Settings
from infra.testing import collect_events, wait_for_event
from topics import AvroCodec, Event, catalog, encode_event

pytestmark = pytest.mark.integration
REPLIES = catalog.agent_topics("sleepy").signals  # any agent's inbox will do; the result's shape is what counts


async def _request(settings: Settings, workflow: str, payload: Mapping[str, Any]) -> tuple[str, str]:
    run_id, session = str(uuid.uuid4()), f"wf-{uuid.uuid4().hex[:8]}"
    event = request_event(run_id, workflow, payload, requester="sleepy", reply_to=REPLIES.name, reply_key=session,
                          source="/tests/workflows")
    record = encode_event(event, AvroCodec())
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(catalog.WORKFLOW_REQUESTS.name, record.value, key=record.key,
                                     headers=record.headers)
    finally:
        await producer.stop()
    return run_id, session


async def _result(settings: Settings, session: str, timeout_s: float = 90) -> dict[str, Any]:
    signal = await wait_for_event(settings, REPLIES, lambda e: e.data["session_id"] == session, timeout_s=timeout_s)
    assert signal.data["kind"] == "workflow_result" and signal.data["agent"] == "sleepy"
    return dict(json.loads(signal.data["data"]))


async def _transitions(settings: Settings, run_id: str, count: int) -> list[Event]:
    return await collect_events(settings, catalog.WORKFLOW_TRANSITIONS, lambda e: e.data["run_id"] == run_id,
                                count=count, timeout_s=30)


async def test_a_diamond_runs_to_completion(stack: Settings) -> None:
    run_id, session = await _request(stack, "demo_diamond", {"a": 2, "b": 3})
    result = await _result(stack, session)
    assert result == {"run_id": run_id, "status": "succeeded", "output": {"total": 10 + 15, "started_with": 5},
                      "error": None}
    # the audit trail: run started and succeeded; each of the 4 tasks went waiting -> running -> succeeded
    trail = await _transitions(stack, run_id, 2 + 4 * 2)
    changes = [(t.data["task"], t.data["to_state"]) for t in trail]
    assert changes[0] == (None, "running") and changes[-1] == (None, "succeeded")
    assert sorted(c for c in changes if c[0]) == sorted(
        (task, state) for task in ("start", "double", "plus_ten", "join") for state in ("running", "succeeded"))
    # both branches were commanded by the same step (start's result): parallel, not one after the other
    commands = await collect_events(stack, catalog.WORKFLOW_TASKS, lambda e: e.data["run_id"] == run_id, count=4)
    by_task = {c.data["task"]: c for c in commands}
    assert by_task["double"].causationid == by_task["plus_ten"].causationid


@pytest.fixture
async def flaky_server() -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP server that fails twice (503) and then answers."""
    calls: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(request.path)
        if len(calls) <= 2:
            return web.Response(status=503, text="warming up")
        return web.json_response({"answer": 42, "calls": len(calls)})

    app = web.Application()
    app.router.add_get("/data", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/data", calls
    await runner.cleanup()


async def test_a_flaky_server_fails_twice_and_the_run_completes_after_retries(
        stack: Settings, flaky_server: tuple[str, list[str]]) -> None:
    url, calls = flaky_server
    run_id, session = await _request(stack, "demo_flaky_fetch", {"url": url})
    result = await _result(stack, session)
    assert result["status"] == "succeeded" and result["output"] == {"answer": 42, "calls": 3}
    assert len(calls) == 3
    retries = await collect_events(stack, catalog.WORKFLOW_TRANSITIONS,
                                   lambda e: e.data["run_id"] == run_id and e.data["to_state"] == "retry_wait",
                                   count=2)
    assert [r.data["attempt"] for r in retries] == [1, 2]
    assert all("answered 503" in r.data["reason"] for r in retries)
    waits = [json.loads(r.data["detail"]) for r in retries]
    assert waits[1]["delay_s"] > waits[0]["delay_s"]  # exponential backoff (0.2s, then 0.4s, ±10%)


async def test_a_poison_task_ends_in_the_dead_letter_topic_with_its_history(stack: Settings) -> None:
    run_id, session = await _request(stack, "demo_poison", {"text": "{not json"})
    result = await _result(stack, session)
    assert result["status"] == "failed" and "task parse failed" in result["error"]
    dead = await wait_for_event(stack, catalog.WORKFLOW_DEADLETTERS, lambda e: e.data["run_id"] == run_id)
    assert dead.data["task"] == "parse" and dead.data["executor"] == "python"
    assert json.loads(dead.data["params"]) == {"function": "json:loads", "args": ["{not json"]}
    assert [(h["attempt"], h["status"]) for h in dead.data["history"]] == [(1, "failed"), (2, "failed")]
    assert all("JSONDecodeError" in h["error"] and "ValueError" in h["error_types"] for h in dead.data["history"])
    assert dead.correlationid == (await _transitions(stack, run_id, 1))[0].correlationid


async def test_a_large_output_rides_as_a_uri_and_the_next_task_still_gets_the_data(stack: Settings) -> None:
    text = "switchboard " * 10_000  # 120,000 characters: over the 64 KiB claim-check limit
    run_id, session = await _request(stack, "demo_big_output", {"text": "switchboard ", "times": 10_000})
    result = await _result(stack, session)
    assert result["status"] == "succeeded", result
    assert result["output"]["length"] == len(text)  # `measure` got the text itself
    # the result event carried the URI only, and so did the command of the task that used it
    made = await wait_for_event(stack, catalog.WORKFLOW_RESULTS,
                                lambda e: e.data["run_id"] == run_id and e.data["task"] == "make")
    uri = made.data["output_uri"]
    assert made.data["output"] is None and uri == f"s3://{stack.s3.bucket}/workflows/demo_big_output/{run_id}/make/1.json"
    command = await wait_for_event(stack, catalog.WORKFLOW_TASKS,
                                   lambda e: e.data["run_id"] == run_id and e.data["task"] == "measure")
    assert json.loads(command.data["params"])["args"] == [marker(uri)]
    # the run's result keeps the reference too; the requester reads it from object storage
    assert result["output"]["text"] == marker(uri)
    store = S3Store.from_settings(stack, wait_s=10)
    try:
        assert await resolve_markers(result["output"], OutputStore(store).load_output) == \
            {"length": len(text), "text": text}
    finally:
        await store.close()


SWITCHBOARD = [sys.executable, "-m", "infra.cli"]


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SWITCHBOARD, "workflow", *args], env=env, capture_output=True, text=True, timeout=150,
                          check=False)


def test_the_cli_runs_watches_and_cancels_runs(cli_env: dict[str, str]) -> None:
    listed = _cli(["list"], cli_env)
    assert listed.returncode == 0 and "demo_diamond: 4 task(s)" in listed.stdout, listed.stderr
    ran = _cli(["run", "demo_diamond", "--input", '{"a": 1, "b": 1}'], cli_env)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["status"] == "succeeded" and result["output"] == {"total": 16, "started_with": 2}
    shown = _cli(["status", result["run_id"]], cli_env)
    assert shown.returncode == 0 and shown.stdout.rstrip().endswith(f"run {result['run_id']}: succeeded")
    assert "task join (attempt 1): running -> succeeded" in shown.stdout

    started = _cli(["run", "demo_slow", "--input", '{"seconds": 30}', "--no-wait"], cli_env)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    cancelled = _cli(["cancel", run_id, "--reason", "test is done"], cli_env)
    assert cancelled.returncode == 0, cancelled.stderr
    shown = _cli(["status", run_id], cli_env)
    deadline = time.monotonic() + 60
    while not shown.stdout.rstrip().endswith("cancelled") and time.monotonic() < deadline:
        shown = _cli(["status", run_id], cli_env)  # each call reads the topic to its end: no sleep needed
    assert shown.stdout.rstrip().endswith(f"run {run_id}: cancelled"), shown.stdout
    assert "cancelled: test is done" in shown.stdout
