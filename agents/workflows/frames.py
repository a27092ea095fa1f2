"""The `pandas_processor` executor: table data in, a transformed table out, as JSON records.

The transformation is a named function (`function: "pkg.module:name"`, called with the DataFrame and `kwargs`) or
a small declarative spec (`steps`), or both (the function first). Steps are data, not code: a filter is an
expression of the workflow expression language over `row`, never Python, so a definition cannot run anything.

    params:
      data: "{{tasks.fetch.output}}"   # default: the output of the task's dependencies
      path: json.items                 # optional: where in `data` the rows are
      steps:
        - select: [name, team, score]
        - rename: {score: points}
        - filter: "row.points >= 10"
        - sort: {by: [points], descending: true}
        - aggregate: {by: [team], values: {total: [points, sum], players: [name, count]}}
        - limit: 10

Output: `{"columns": [...], "rows": [{column: value, ...}, ...]}` (what another `pandas_processor` reads too).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from agents.workflows.base import BaseExecutor, resolve, upstream
from agents.workflows.claims import navigate
from agents.workflows.errors import PermanentError

__all__ = ["AGGREGATIONS", "STEPS", "PandasProcessorExecutor"]

AGGREGATIONS: Final = ("sum", "mean", "median", "min", "max", "count", "nunique", "first", "last", "std")
_WHO: Final = "pandas_processor"


class PandasProcessorExecutor(BaseExecutor):
    """Transform table data with pandas: `data` (records, columns, or an `http_client` output whose JSON holds
    them), optional `path` into it, then `function` and/or `steps`. Sync: it runs in a worker thread."""

    def defaults(self, task: str, depends_on: Sequence[str]) -> Mapping[str, Any]:
        return {"data": upstream(depends_on)} if depends_on else {}

    def execute(self, params: Mapping[str, Any]) -> Any:
        import pandas as pd

        data = params.get("data")
        if params.get("path"):
            data = navigate(data, str(params["path"]).split("."))
        frame = to_frame(data, params.get("columns"))
        if params.get("function"):
            kwargs = params.get("kwargs") or {}
            if not isinstance(kwargs, Mapping):
                raise PermanentError(f"{_WHO}: `kwargs` must be a mapping")
            result = resolve(str(params["function"]), _WHO)(frame, **kwargs)
            if isinstance(result, pd.Series):
                result = result.to_frame()
            if not isinstance(result, pd.DataFrame):
                return result  # a value of the function's own (checked to be JSON by the engine)
            frame = result
        steps = params.get("steps") or []
        if not isinstance(steps, list):
            raise PermanentError(f"{_WHO}: `steps` must be a list of single-key mappings, e.g. [{{select: [a, b]}}]")
        for index, step in enumerate(steps, 1):
            frame = apply_step(frame, step, index)
        return records(frame)


def to_frame(data: Any, columns: Any = None) -> Any:
    """A DataFrame from records, a mapping of columns, our own output, or an `http_client` output."""
    import pandas as pd

    if isinstance(data, Mapping) and {"status", "json"} <= set(data):  # an http_client output: its JSON body
        data = data["json"]
    if isinstance(data, Mapping) and isinstance(data.get("rows"), list) and "columns" in data:  # our own output
        return pd.DataFrame.from_records(data["rows"], columns=data["columns"] or None)
    try:
        if isinstance(data, list) and all(isinstance(row, Mapping) for row in data):
            return pd.DataFrame.from_records(data)
        if isinstance(data, list) and columns is not None:
            return pd.DataFrame(data, columns=list(columns))
        if isinstance(data, Mapping) and all(isinstance(column, list) for column in data.values()):
            return pd.DataFrame(dict(data))
    except ValueError as exc:
        raise PermanentError(f"{_WHO}: cannot make a table of `data`: {exc}") from exc
    raise PermanentError(f"{_WHO}: `data` must be records (a list of objects), columns (an object of lists), lists "
                         f"with `columns`, or an http_client output whose JSON is one of these, not "
                         f"{type(data).__name__}; use `path` to point at the rows (e.g. path: json.items)")


def records(frame: Any) -> dict[str, Any]:
    """The table as JSON: missing values are null, times ISO 8601."""
    rows = json.loads(frame.to_json(orient="records", date_format="iso"))
    return {"columns": [str(column) for column in frame.columns], "rows": rows}


def apply_step(frame: Any, step: Any, index: int) -> Any:
    if not isinstance(step, Mapping) or len(step) != 1:
        raise PermanentError(f"{_WHO}: step {index} must be a mapping with one key, one of {', '.join(STEPS)}")
    (name, arg), = step.items()
    if name not in STEPS:
        raise PermanentError(f"{_WHO}: step {index}: unknown step {name!r}; steps: {', '.join(STEPS)}")
    try:
        return STEPS[name](frame, arg)
    except PermanentError as exc:
        raise PermanentError(f"{_WHO}: step {index} ({name}): {exc}") from exc
    except (KeyError, ValueError, TypeError) as exc:
        raise PermanentError(f"{_WHO}: step {index} ({name}) failed: {type(exc).__name__}: {exc}") from exc


def _names(value: Any, what: str) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise PermanentError(f"{what} must be a column name or a list of them")
    return names


def _known(frame: Any, names: list[str]) -> list[str]:
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise PermanentError(f"no column {', '.join(map(repr, missing))}; columns: "
                             f"{', '.join(map(str, frame.columns))}")
    return names


def _select(frame: Any, arg: Any) -> Any:
    return frame[_known(frame, _names(arg, "select"))]


def _rename(frame: Any, arg: Any) -> Any:
    if not isinstance(arg, Mapping):
        raise PermanentError("rename takes a mapping of old name to new name")
    _known(frame, list(arg))
    return frame.rename(columns=dict(arg))


def _filter(frame: Any, arg: Any) -> Any:
    from agents.dialogue.errors import ExpressionError
    from agents.dialogue.expressions import compile_expression, truthy

    if not isinstance(arg, str):
        raise PermanentError("filter takes an expression over `row`, e.g. \"row.score >= 10\"")
    try:
        expression = compile_expression(arg, names=("row",))
        keep = [truthy(expression.evaluate({"row": row})) for row in records(frame)["rows"]]
    except ExpressionError as exc:
        raise PermanentError(f"filter `{arg}`: {exc}") from exc
    return frame[keep] if len(frame) else frame


def _sort(frame: Any, arg: Any) -> Any:
    descending = False
    if isinstance(arg, Mapping):
        descending = bool(arg.get("descending", False))
        arg = arg.get("by")
    return frame.sort_values(_known(frame, _names(arg, "sort (or its `by`)")), ascending=not descending,
                             kind="stable").reset_index(drop=True)


def _aggregate(frame: Any, arg: Any) -> Any:
    if not isinstance(arg, Mapping) or not isinstance(arg.get("values"), Mapping) or not arg["values"]:
        raise PermanentError("aggregate takes {by: [columns], values: {new_column: [column, function]}}")
    named: dict[str, tuple[str, str]] = {}
    for out, how in arg["values"].items():
        if not (isinstance(how, list) and len(how) == 2 and how[1] in AGGREGATIONS):
            raise PermanentError(f"values.{out} must be [column, function], function one of {', '.join(AGGREGATIONS)}")
        named[str(out)] = (_known(frame, [how[0]])[0], how[1])
    by = _known(frame, _names(arg["by"], "aggregate by")) if arg.get("by") else []
    if by:
        return frame.groupby(by, as_index=False, sort=True).agg(**named)
    import pandas as pd

    return pd.DataFrame([{out: frame[column].agg(function) for out, (column, function) in named.items()}])


def _limit(frame: Any, arg: Any) -> Any:
    if not isinstance(arg, int) or isinstance(arg, bool) or arg < 0:
        raise PermanentError("limit takes a whole number of rows")
    return frame.head(arg)


STEPS: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "select": _select, "rename": _rename, "filter": _filter, "sort": _sort, "aggregate": _aggregate,
    "limit": _limit,
}
