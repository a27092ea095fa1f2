"""The sql_query executor, and the issue's psycopg2 plugin example, against a real PostgreSQL server that this module
starts under tmp_path (the `pgserver` wheel ships the binaries) and stops afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.workflows import BaseExecutor, Task, Workflow
from agents.workflows.executors import run_executor
from agents.workflows.offline import run_offline
from agents.workflows.sql import SqlQueryExecutor
from infra.testing import embedded_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh PostgreSQL with a small `orders` table; its connection URI."""
    try:
        import pgserver
    except ImportError:
        pytest.skip("no PostgreSQL to test against: `pip install pgserver` (in the test extra) ships one")
    try:
        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    except Exception as exc:  # e.g. a platform without pgserver's binaries
        pytest.skip(f"pgserver could not start PostgreSQL here: {type(exc).__name__}: {exc}")
    try:
        server.psql("create table orders (id text primary key, status text, total numeric(8,2), placed date);"
                    "insert into orders values ('A1', 'shipped', 12.50, '2024-05-01'),"
                    " ('B2', 'packing', 7.00, '2024-05-03');")
        yield str(server.get_uri())
    finally:
        server.cleanup()


async def test_a_query_with_parameters_returns_json_rows(postgres: str) -> None:
    outcome = await run_executor(SqlQueryExecutor(), {
        "connection_string": postgres, "query": "select id, status, total, placed from orders where id = %(id)s",
        "parameters": {"id": "A1"}}, 10)
    assert outcome.succeeded, outcome.error
    assert outcome.output == {"columns": ["id", "status", "total", "placed"], "rowcount": 1,
                              "rows": [{"id": "A1", "status": "shipped", "total": 12.5, "placed": "2024-05-01"}]}


async def test_a_named_connection_from_settings_and_a_committed_change(postgres: str, tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, workflows={"sql_connections": {"shop": postgres}})
    sql = SqlQueryExecutor(settings)
    changed = await run_executor(sql, {"connection": "shop", "query": "insert into orders values (%s, %s, 1, null)",
                                       "parameters": ["C3", "lost"]}, 10)
    assert changed.succeeded and changed.output == {"columns": [], "rows": [], "rowcount": 1}
    read = await run_executor(sql, {"connection": "shop", "query": "delete from orders where id = 'C3' returning id"},
                              10)
    assert read.output == {"columns": ["id"], "rows": [{"id": "C3"}], "rowcount": 1}  # the insert was committed
    unknown = await run_executor(sql, {"connection": "nope", "query": "select 1"}, 10)
    assert not unknown.succeeded and "no connection named 'nope' (known: shop)" in (unknown.error or "")


async def test_bad_sql_is_permanent_and_an_unreachable_server_transient(postgres: str) -> None:
    bad = await run_executor(SqlQueryExecutor(), {"connection_string": postgres, "query": "selec 1"}, 10)
    assert not bad.succeeded and not bad.transient and "SyntaxError" in (bad.error or "")
    gone = await run_executor(SqlQueryExecutor(), {"connection_string": "postgresql://u@127.0.0.1:1/db",
                                                   "query": "select 1"}, 10)
    assert not gone.succeeded and gone.transient and "cannot reach the database" in (gone.error or "")


async def test_a_workflow_queries_and_transforms(postgres: str) -> None:
    flow = Workflow("order_totals", tasks=[
        Task("query", "sql_query", {"connection_string": postgres, "query": "select status, total from orders"}),
        Task("sum", "pandas_processor", {"data": "{{tasks.query.output.rows}}", "steps": [
            {"aggregate": {"by": ["status"], "values": {"total": ["total", "sum"]}}}]}, depends_on=["query"]),
    ])
    run = await run_offline(flow, {})
    assert run.status == "succeeded", run.state.get("error")
    assert run.output["rows"] == [{"status": "packing", "total": 7.0}, {"status": "shipped", "total": 12.5}]


class DatabaseQueryExecutor(BaseExecutor):  # the issue's plugin example, as written
    def execute(self, params):  # type: ignore[no-untyped-def]
        import psycopg2  # type: ignore[import-untyped]
        conn = psycopg2.connect(params["connection_string"])
        cursor = conn.cursor()
        cursor.execute(params["query"])
        return {"data": cursor.fetchall()}


async def test_the_issue_psycopg2_plugin_runs_as_written(postgres: str) -> None:
    pytest.importorskip("psycopg2", reason="psycopg2-binary (in the test extra) is not installed")
    params: dict[str, Any] = {"connection_string": postgres, "query": "select id, status from orders order by id"}
    outcome = await run_executor(DatabaseQueryExecutor(), params, 10)
    assert outcome.succeeded, outcome.error
    assert json.loads(json.dumps(outcome.output)) == {"data": [["A1", "shipped"], ["B2", "packing"]]}
