"""The pandas_processor executor: declarative steps, a named function, the shapes of data it takes, its errors;
and the default params that let the issue's example run without any."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from agents.workflows.executors import discover_executors, executor_params, run_executor, with_defaults
from agents.workflows.frames import PandasProcessorExecutor
from examples.data_processing import DataProcessingFlow

ROWS = [{"name": "ann", "team": "red", "score": 12}, {"name": "bob", "team": "blue", "score": 7},
        {"name": "cid", "team": "red", "score": 30}, {"name": "dee", "team": "blue", "score": None}]


async def _run(params: dict[str, Any]) -> Any:
    outcome = await run_executor(PandasProcessorExecutor(), params, 10)
    assert outcome.succeeded, outcome.error
    return outcome.output


async def test_steps_select_rename_filter_sort_and_limit() -> None:
    out = await _run({"data": ROWS, "steps": [
        {"select": ["name", "score"]}, {"rename": {"score": "points"}}, {"filter": "row.points >= 10"},
        {"sort": {"by": "points", "descending": True}}, {"limit": 1}]})
    assert out == {"columns": ["name", "points"], "rows": [{"name": "cid", "points": 30.0}]}


async def test_aggregate_by_group_and_over_everything() -> None:
    grouped = await _run({"data": ROWS, "steps": [
        {"aggregate": {"by": ["team"], "values": {"total": ["score", "sum"], "players": ["name", "count"]}}}]})
    assert grouped["rows"] == [{"team": "blue", "total": 7.0, "players": 2}, {"team": "red", "total": 42.0,
                                                                              "players": 2}]
    whole = await _run({"data": ROWS, "steps": [{"aggregate": {"values": {"best": ["score", "max"]}}}]})
    assert whole["rows"] == [{"best": 30.0}]


async def test_a_named_function_gets_the_frame() -> None:
    out = await _run({"data": {"a": [1, 2], "b": [3, 4]}, "function": "pandas:DataFrame.transpose"})
    assert out["rows"] == [{"0": 1, "1": 2}, {"0": 3, "1": 4}]
    assert await _run({"data": ROWS, "function": "builtins:len"}) == 4  # a value of its own


async def test_http_client_output_and_paths() -> None:
    answer = {"status": 200, "headers": {}, "body": "...", "json": {"items": ROWS[:2]}}
    out = await _run({"data": answer, "path": "json.items", "steps": [{"select": "name"}]})
    assert out == {"columns": ["name"], "rows": [{"name": "ann"}, {"name": "bob"}]}
    direct = await _run({"data": {**answer, "json": ROWS[:1]}})
    assert direct["rows"] == [ROWS[0]]
    again = await _run({"data": direct})  # its own output reads back
    assert again == direct


@pytest.mark.parametrize(("params", "message"), [
    ({"data": "text"}, "`data` must be records"),
    ({"data": ROWS, "steps": [{"explode": "x"}]}, "step 1: unknown step 'explode'"),
    ({"data": ROWS, "steps": [{"select": ["nope"]}]}, "no column 'nope'"),
    ({"data": ROWS, "steps": [{"filter": "import os"}]}, "filter `import os`"),
    ({"data": ROWS, "steps": [{"aggregate": {"values": {"x": ["score", "eval"]}}}]}, "function one of sum"),
])
async def test_bad_specs_fail_for_good_saying_what_to_fix(params: dict[str, Any], message: str) -> None:
    outcome = await run_executor(PandasProcessorExecutor(), params, 10)
    assert not outcome.succeeded and not outcome.transient and message in (outcome.error or "")


def test_the_issue_example_gets_default_params_from_its_executors() -> None:
    spec = with_defaults(DataProcessingFlow().spec(), discover_executors())
    params = {task["name"]: task["params"] for task in spec["tasks"]}
    assert params == {
        "fetch_data": {"url": "{{input.url}}"},
        "transform_data": {"data": "{{tasks.fetch_data.output}}"},
        "store_result": {"data": "{{tasks.transform_data.output}}",
                         "key": "results/{{run.workflow}}/{{run.id}}/store_result.json"},
    }
    assert DataProcessingFlow().problems(executor_params(discover_executors())) == []


def test_frames_with_times_become_iso_text() -> None:
    from agents.workflows.frames import records

    frame = pd.DataFrame({"at": pd.to_datetime(["2024-01-02T03:04:05"]), "v": [float("nan")]})
    assert records(frame)["rows"] == [{"at": "2024-01-02T03:04:05.000", "v": None}]
