"""Executors: what a task runs. Built in: `python` (a callable by import path), `http_client`, `pandas_processor`
(`agents.workflows.frames`), `s3_uploader` (`agents.workflows.uploads`) and `sql_query` (`agents.workflows.sql`);
more come from plugins, as `BaseExecutor` subclasses registered in the `switchboard.executors` entry-point group,
so installing a pip package adds skills:

    [project.entry-points."switchboard.executors"]
    database_query = "mypkg.executors:DatabaseQueryExecutor"

`execute(params)` may be sync or async. `run_executor` runs it under the task's timeout, a sync one in a thread so
it never blocks the worker's event loop, and turns what happened into an `Outcome`: output, or an error marked
transient (worth retrying: `TransientError`, connection errors, timeouts) or not.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Final

from agents.workflows.base import BaseExecutor, resolve
from agents.workflows.errors import PermanentError, TransientError, WorkflowError
from agents.workflows.frames import PandasProcessorExecutor
from agents.workflows.sql import SqlQueryExecutor
from agents.workflows.uploads import S3UploaderExecutor
from infra.config import Settings

__all__ = ["BUILTIN_EXECUTORS", "ENTRY_POINT_GROUP", "BaseExecutor", "HttpClientExecutor", "Outcome",
           "PythonExecutor", "discover_executors", "executor_params", "failed_outcome", "resolve", "run_executor",
           "with_defaults"]

ENTRY_POINT_GROUP: Final = "switchboard.executors"
#: Exception types retried as transient besides `TransientError` (a subclass of either counts too).
_TRANSIENT: Final = (TransientError, ConnectionError, TimeoutError)


class PythonExecutor(BaseExecutor):
    """`function: "package.module:name"` called with `args` (a list) and `kwargs` (a mapping).

    A coroutine function is awaited; a plain function runs in a thread.
    """

    required_params = ("function",)

    async def execute(self, params: Mapping[str, Any]) -> Any:
        function = resolve(str(params["function"]))
        args = params.get("args") or []
        kwargs = params.get("kwargs") or {}
        if not isinstance(args, list) or not isinstance(kwargs, Mapping):
            raise PermanentError("python executor: `args` must be a list and `kwargs` a mapping")
        if inspect.iscoroutinefunction(function):
            return await function(*args, **kwargs)
        result = await asyncio.to_thread(function, *args, **kwargs)
        return await result if inspect.isawaitable(result) else result


class HttpClientExecutor(BaseExecutor):
    """An HTTP request: `url`, `method` (GET), `headers`, `query`, `json` or `data`, `timeout_s` (30).

    Output: `{status, headers, body, json}` (`json` when the body is JSON). A 5xx or 429 answer, a refused or
    dropped connection, and a timeout are transient (retried by the task's policy); another 4xx is permanent.
    """

    required_params = ("url",)

    async def execute(self, params: Mapping[str, Any]) -> Any:
        import aiohttp

        url = str(params["url"])
        method = str(params.get("method", "GET")).upper()
        timeout = aiohttp.ClientTimeout(total=float(params.get("timeout_s", 30)))
        request: dict[str, Any] = {"headers": params.get("headers") or None, "params": params.get("query") or None}
        if params.get("json") is not None:
            request["json"] = params["json"]
        elif params.get("data") is not None:
            request["data"] = params["data"]
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.request(method, url, **request) as response:
                body = await response.text()
                status = response.status
                headers = dict(response.headers)
        except aiohttp.ClientConnectionError as exc:
            raise TransientError(f"{method} {url}: connection failed ({exc})") from exc
        except TimeoutError as exc:
            raise TransientError(f"{method} {url}: no answer within {timeout.total}s") from exc
        except aiohttp.ClientError as exc:
            raise PermanentError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if status >= 500 or status == 429:
            raise TransientError(f"{method} {url} answered {status}: {body[:200]}")
        if status >= 400:
            raise PermanentError(f"{method} {url} answered {status}: {body[:200]}")
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        return {"status": status, "headers": headers, "body": body, "json": parsed}


BUILTIN_EXECUTORS: Final[Mapping[str, type[BaseExecutor]]] = {
    "python": PythonExecutor, "http_client": HttpClientExecutor, "pandas_processor": PandasProcessorExecutor,
    "s3_uploader": S3UploaderExecutor, "sql_query": SqlQueryExecutor,
}


def discover_executors(settings: Settings | None = None) -> dict[str, BaseExecutor]:
    """The built-in executors and every plugin in the `switchboard.executors` entry-point group, instantiated.

    An entry point may name a `BaseExecutor` subclass (instantiated without arguments) or an instance. Built-ins
    that use settings (S3, named SQL connections) get `settings`, or load them from the environment when needed.
    """
    found: dict[str, BaseExecutor] = {name: cls(settings) if cls in _USE_SETTINGS else cls()  # type: ignore[call-arg]
                                      for name, cls in BUILTIN_EXECUTORS.items()}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in BUILTIN_EXECUTORS:
            raise WorkflowError(f"plugin executor {point.name!r} ({point.value}) has the name of a built-in one; "
                                "rename it in its package's entry points")
        try:
            loaded = point.load()
        except Exception as exc:
            raise WorkflowError(f"cannot load executor plugin {point.name!r} ({point.value}): "
                                f"{type(exc).__name__}: {exc}; fix or uninstall the package") from exc
        executor = loaded() if isinstance(loaded, type) else loaded
        if not callable(getattr(executor, "execute", None)):
            raise WorkflowError(f"executor plugin {point.name!r} ({point.value}) has no execute(params); "
                                "subclass agents.workflows.BaseExecutor")
        found[point.name] = executor
    return found


_USE_SETTINGS: Final = frozenset({S3UploaderExecutor, SqlQueryExecutor})


def with_defaults(spec: Mapping[str, Any], executors: Mapping[str, BaseExecutor]) -> dict[str, Any]:
    """A workflow spec whose tasks also have their executors' default params (a task's own params win)."""
    tasks = []
    for task in spec["tasks"]:
        executor = executors.get(task["executor"])
        defaults = executor.defaults(task["name"], tuple(task["depends_on"])) if executor is not None else {}
        tasks.append({**task, "params": {**defaults, **(task.get("params") or {})}} if defaults else dict(task))
    return {**spec, "tasks": tasks}


def executor_params(executors: Mapping[str, BaseExecutor]) -> dict[str, tuple[str, ...]]:
    """Each executor's required params: what workflow validation needs to know about executors."""
    return {name: tuple(getattr(executor, "required_params", ())) for name, executor in executors.items()}


@dataclass(frozen=True)
class Outcome:
    """What one attempt gave: `output` (succeeded) or `error` with its types and whether it is transient."""

    succeeded: bool
    output: Any
    error: str | None
    error_types: tuple[str, ...]
    transient: bool
    started_ms: int
    finished_ms: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def run_executor(executor: BaseExecutor, params: Mapping[str, Any], timeout_s: float | None) -> Outcome:
    """Run one attempt under `timeout_s`; never raises for the executor's errors.

    A sync `execute` runs in a thread; on timeout the thread cannot be stopped and finishes in the background,
    its result dropped (write sync executors that give up by themselves if that matters).
    """
    started = _now_ms()
    try:
        work: Awaitable[Any]
        if inspect.iscoroutinefunction(executor.execute):
            work = executor.execute(params)
        else:
            work = asyncio.to_thread(executor.execute, params)
        result = await asyncio.wait_for(work, timeout_s)
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, timeout_s)
        output = _json(result)
    except TimeoutError as exc:
        return failed_outcome(exc, started, f"TimeoutError: the attempt took longer than its timeout of {timeout_s}s")
    except Exception as exc:  # an executor's failure is a task result, never a worker crash
        return failed_outcome(exc, started)
    return Outcome(True, output, None, (), False, started, _now_ms())


def _json(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"the executor's output is not JSON ({exc}): return dicts, lists, text and "
                             "numbers") from exc


def failed_outcome(exc: BaseException, started: int, message: str | None = None) -> Outcome:
    """The outcome of an attempt that raised `exc`: its types, and whether it is transient."""
    types = tuple(cls.__name__ for cls in type(exc).__mro__ if cls not in (object, BaseException, Exception))
    transient = isinstance(exc, _TRANSIENT) and not isinstance(exc, PermanentError)
    if message is None:
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ModuleNotFoundError):
            message += f" (install the package that provides {exc.name!r} on the workers)"
    return Outcome(False, None, message, types, transient, started, _now_ms())
