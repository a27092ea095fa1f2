"""Executors: python and http_client against real code and a real HTTP server, sync executors off the event loop,
timeouts, plugins discovered through real entry points, and the issue's DatabaseQueryExecutor shape."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agents.workflows import BaseExecutor, PermanentError, WorkflowError, discover_executors, run_executor
from agents.workflows.executors import HttpClientExecutor, PythonExecutor


async def test_python_executor_calls_sync_and_async_functions() -> None:
    python = PythonExecutor()
    done = await run_executor(python, {"function": "operator:add", "args": [2, 3]}, 5)
    assert (done.succeeded, done.output) == (True, 5)
    slept = await run_executor(python, {"function": "asyncio:sleep", "args": [0.01, "woke"]}, 5)
    assert slept.output == "woke"
    bad = await run_executor(python, {"function": "json:loads", "args": ["not json"]}, 5)
    assert not bad.succeeded and not bad.transient and "ValueError" in bad.error_types
    assert bad.error is not None and bad.error.startswith("JSONDecodeError")


@pytest.mark.parametrize(("function", "message"), [
    ("operator", "must look like 'package.module:name'"),
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("os:_exit", "private attribute"),
    ("os:nope", "has no 'nope'"),
    ("math:pi", "is not callable"),
])
async def test_python_executor_explains_bad_function_paths(function: str, message: str) -> None:
    outcome = await run_executor(PythonExecutor(), {"function": function}, 5)
    assert not outcome.succeeded and "PermanentError" in outcome.error_types and message in (outcome.error or "")


class Sleepy(BaseExecutor):
    def execute(self, params: Mapping[str, Any]) -> Any:
        time.sleep(params["s"])
        return {"slept": params["s"]}


async def test_a_sync_executor_never_blocks_the_event_loop() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    outcome = await run_executor(Sleepy(), {"s": 0.3}, 5)
    ticker.cancel()
    assert outcome.output == {"slept": 0.3}
    assert ticks >= 10  # the loop kept running while the executor slept in its thread


async def test_a_timeout_is_a_transient_failure() -> None:
    outcome = await run_executor(Sleepy(), {"s": 0.5}, 0.05)
    assert not outcome.succeeded and outcome.transient and "TimeoutError" in outcome.error_types
    assert "longer than its timeout of 0.05s" in (outcome.error or "")


async def test_output_must_be_json() -> None:
    class Bad(BaseExecutor):
        def execute(self, params: Mapping[str, Any]) -> Any:
            return {1, 2}

    outcome = await run_executor(Bad(), {}, 5)
    assert not outcome.succeeded and "not JSON" in (outcome.error or "")


# -- the issue's plugin example ----------------------------------------------------------------------------------
class DatabaseQueryExecutor(BaseExecutor):  # as written in the issue
    def execute(self, params):  # type: ignore[no-untyped-def]
        import psycopg2  # type: ignore[import-not-found]
        conn = psycopg2.connect(params["connection_string"])
        cursor = conn.cursor()
        cursor.execute(params["query"])
        return {"data": cursor.fetchall()}


class SqliteQueryExecutor(BaseExecutor):  # the same shape on a database every machine has
    def execute(self, params):  # type: ignore[no-untyped-def]
        conn = sqlite3.connect(params["connection_string"])
        cursor = conn.cursor()
        cursor.execute(params["query"])
        return {"data": cursor.fetchall()}


async def test_the_issue_executor_shape_runs(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table orders (id text, status text)")
        conn.execute("insert into orders values ('A1', 'shipped')")
    outcome = await run_executor(SqliteQueryExecutor(), {"connection_string": str(db),
                                                         "query": "select * from orders"}, 5)
    assert outcome.output == {"data": [["A1", "shipped"]]}
    try:
        import psycopg2  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        missing = await run_executor(DatabaseQueryExecutor(), {"connection_string": "x", "query": "select 1"}, 5)
        assert not missing.succeeded and "install the package that provides 'psycopg2'" in (missing.error or "")


def test_plugins_are_discovered_through_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "acme_skills.py").write_text(
        "from agents.workflows import BaseExecutor\n"
        "class Shout(BaseExecutor):\n"
        "    required_params = ('text',)\n"
        "    def execute(self, params):\n"
        "        return params['text'].upper()\n", encoding="utf-8")
    dist = tmp_path / "acme_skills-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-skills\nVersion: 1.0\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[switchboard.executors]\nshout = acme_skills:Shout\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    executors = discover_executors()
    assert {"python", "http_client", "shout"} <= set(executors)
    assert asyncio.run(run_executor(executors["shout"], {"text": "hi"}, 5)).output == "HI"
    (dist / "entry_points.txt").write_text("[switchboard.executors]\npython = acme_skills:Shout\n", encoding="utf-8")
    with pytest.raises(WorkflowError, match="has the name of a built-in one"):
        discover_executors()
    sys.modules.pop("acme_skills", None)


# -- http_client against a real server ---------------------------------------------------------------------------
@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"q": request.query.get("q"), "method": request.method})

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="nope")

    app = web.Application()
    app.router.add_route("*", "/ok", ok)
    app.router.add_get("/status/{code}", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_http_client_answers_and_classifies_errors(server: str) -> None:
    http = HttpClientExecutor()
    done = await run_executor(http, {"url": f"{server}/ok", "query": {"q": "x"}, "method": "post", "json": {}}, 5)
    assert done.succeeded and done.output["status"] == 200 and done.output["json"] == {"q": "x", "method": "POST"}
    busy = await run_executor(http, {"url": f"{server}/status/503"}, 5)
    assert not busy.succeeded and busy.transient and "answered 503" in (busy.error or "")
    gone = await run_executor(http, {"url": f"{server}/status/404"}, 5)
    assert not gone.succeeded and not gone.transient and "PermanentError" in gone.error_types
    refused = await run_executor(http, {"url": "http://127.0.0.1:9/"}, 5)
    assert not refused.succeeded and refused.transient and "connection failed" in (refused.error or "")


def test_permanent_error_is_an_executor_error() -> None:
    assert issubclass(PermanentError, WorkflowError)
