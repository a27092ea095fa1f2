"""The `sql_query` executor: one statement on PostgreSQL through psycopg 3.

    params:
      connection: orders                     # a name from workflows.sql_connections (no password in the params)
      # or connection_string: "postgresql://user:pass@host/db"
      query: "select id, status from orders where customer = %(customer)s"
      parameters: {customer: "{{input.customer}}"}   # a mapping for %(name)s, a list for %s

Parameters are sent separately from the query (never formatted into it), so template values cannot inject SQL.
Output: `{"columns": [...], "rows": [{column: value}], "rowcount": n}`; values become JSON (numerics as numbers,
times as ISO 8601 text, UUIDs as text, bytes as hex). A statement that changes data is committed.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Mapping
from typing import Any

from agents.workflows.base import BaseExecutor
from agents.workflows.errors import PermanentError, TransientError
from infra.config import Settings, load_settings

__all__ = ["SqlQueryExecutor", "json_value"]


class SqlQueryExecutor(BaseExecutor):
    """A PostgreSQL query. A connection that cannot be made or is lost is transient (retried by the task's
    policy); an error in the statement is permanent."""

    required_params = ("query",)

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings

    def _dsn(self, params: Mapping[str, Any]) -> str:
        if params.get("connection_string"):
            return str(params["connection_string"])
        name = params.get("connection")
        if not name:
            raise PermanentError("sql_query: give `connection` (a name from workflows.sql_connections) or "
                                 "`connection_string`")
        if self._settings is None:
            self._settings = load_settings()
        named = self._settings.workflows.sql_connections
        if name not in named:
            raise PermanentError(f"sql_query: no connection named {name!r} (known: {', '.join(sorted(named)) or 'none'}"
                                 "); add it to workflows.sql_connections (SWITCHBOARD_WORKFLOWS__SQL_CONNECTIONS, a "
                                 "JSON object of name to connection string)")
        return named[name].get_secret_value()

    async def execute(self, params: Mapping[str, Any]) -> Any:
        import psycopg

        dsn = self._dsn(params)
        query = str(params["query"])
        parameters = params.get("parameters")
        if parameters is not None and not isinstance(parameters, list | Mapping):
            raise PermanentError("sql_query: `parameters` must be a list (for %s) or a mapping (for %(name)s)")
        try:
            async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=10) as conn, \
                    conn.cursor() as cursor:
                await cursor.execute(query, parameters)
                columns = [column.name for column in cursor.description or ()]
                rows = await cursor.fetchall() if cursor.description is not None else []
                count = cursor.rowcount
        except psycopg.OperationalError as exc:
            raise TransientError(f"sql_query: cannot reach the database: {exc}".strip()) from exc
        except psycopg.Error as exc:
            raise PermanentError(f"sql_query: {type(exc).__name__}: {exc}".strip()) from exc
        return {"columns": columns, "rows": [{name: json_value(value) for name, value in zip(columns, row,
                                                                                         strict=True)}
                                             for row in rows], "rowcount": count}


def json_value(value: Any) -> Any:
    """A database value as JSON."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    return value
