"""The workflow model: the issue's code example, YAML with the same model, and validation with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.workflows import Task, Workflow, WorkflowDefinitionError, load_workflow, load_workflow_text
from agents.workflows.loader import check_workflow_file, discover_workflow_files
from agents.workflows.model import RetryPolicy

EXECUTORS = ("http_client", "python", "pandas_processor", "s3_uploader")


class DataProcessingFlow(Workflow):  # the issue's example, as written
    def __init__(self):  # type: ignore[no-untyped-def]
        super().__init__(name="data_processing")

    def define(self):  # type: ignore[no-untyped-def]
        fetch = Task("fetch_data", executor="http_client", params={"url": "{{input.url}}"})
        transform = Task("transform_data", executor="pandas_processor", depends_on=[fetch])
        store = Task("store_result", executor="s3_uploader", depends_on=[transform])
        self.add_tasks([fetch, transform, store])


YAML = """\
workflow: data_processing
description: the issue's example, as YAML
tasks:
  - name: fetch_data
    executor: http_client
    params: {url: "{{input.url}}"}
  - name: transform_data
    executor: pandas_processor
    depends_on: [fetch_data]
  - name: store_result
    executor: s3_uploader
    depends_on: [transform_data]
"""


def test_the_issue_example_builds_and_checks() -> None:
    flow = DataProcessingFlow()
    assert [task.name for task in flow.tasks] == ["fetch_data", "transform_data", "store_result"]
    assert flow.task("store_result").depends_on == ("transform_data",)
    assert flow.problems(EXECUTORS) == []
    assert flow.order() == ["fetch_data", "transform_data", "store_result"]


def test_yaml_gives_the_same_model_as_code() -> None:
    from_yaml = load_workflow_text(YAML, "flow.yaml", EXECUTORS)
    code = DataProcessingFlow().spec()
    assert {**from_yaml.spec(), "description": ""} == code


def test_spec_round_trips() -> None:
    flow = Workflow("w", tasks=[Task("a", "python", {"function": "m:f"}, retry=RetryPolicy(max_attempts=5),
                                     timeout_s=3, condition="input.x > 1"),
                                Task("b", "python", {"function": "m:g", "kwargs": {"v": "{{tasks.a.output}}"}},
                                     depends_on=["a"])], fail_fast=False, output="{{tasks.b.output}}")
    again = Workflow.from_spec(flow.spec())
    assert again.spec() == flow.spec()
    assert again.digest() == flow.digest()


def test_code_problems_point_at_the_line_that_built_the_task() -> None:
    line = __import__("inspect").currentframe().f_lineno + 1  # type: ignore[union-attr]
    flow = Workflow("w", tasks=[Task("a", "nope")])
    [problem] = flow.problems(EXECUTORS)
    assert problem.file == __file__ and problem.line == line
    assert "unknown executor 'nope'" in problem.message and "switchboard.executors" in problem.message


BAD = """\
workflow: broken
tasks:
  - name: a
    executor: http_clinet
    params: {url: "{{input.url"}
    depends_on: [c]
  - name: b
    executor: python
    params: {function: "m:f", kwargs: {x: "{{tasks.zz.output}}", y: "{{tasks.c.output}}"}}
    depends_on: [a, ghost]
  - name: c
    executor: python
    params: {function: "m:f"}
    depends_on: [b]
    retry: {max_attempts: 0, jitter: 3}
    condition: "secret > 1"
  - name: d
    executor: python
    timeout_s: -1
    bogus: 1
"""


def test_yaml_validation_reports_every_problem_with_its_line() -> None:
    with pytest.raises(WorkflowDefinitionError) as caught:
        load_workflow_text(BAD, "bad.yaml", {"http_client": ("url",), "python": ("function",)})
    text = str(caught.value)
    lines = {(p.line, p.message.split(":")[0]) for p in caught.value.problems}
    assert all(p.file == "bad.yaml" for p in caught.value.problems)
    assert (20, "a task") in lines  # unknown key `bogus`, at its line
    assert "unknown executor 'http_clinet' (did you mean 'http_client'?)" in text
    assert "bad.yaml:3: task 'a' params.url: '{{' is never closed" in text
    assert "depends on unknown task 'ghost'" in text
    assert "reads tasks.zz, which is not a task of this workflow" in text
    assert "dependency cycle" in text and "remove one of these depends_on entries" in text
    assert "retry max_attempts must be at least 1" in text and "jitter is a fraction" in text
    assert "task 'c' condition: unknown name 'secret'" in text
    assert "timeout_s must be positive" in text
    assert "executor 'python' needs params function" in text


def test_reading_an_output_that_is_not_a_dependency_is_refused() -> None:
    flow = Workflow("w", tasks=[Task("a", "python", {"function": "m:f"}),
                                Task("b", "python", {"function": "m:f", "kwargs": {"x": "{{tasks.a.output}}"}})])
    [problem] = flow.problems(EXECUTORS)
    assert "add 'a' to depends_on" in problem.message


@pytest.mark.parametrize(("text", "expected"), [
    ("", "the file is empty"),
    ("workflow: [x\n", "not valid YAML"),
    ("tasks: []\n", "missing `workflow: <name>`"),
    ("workflow: W!\ntasks:\n  - {name: a, executor: python, params: {function: 'm:f'}}\n", "lower-case letters"),
    ("workflow: w\ntasks:\n  - {name: a-b, executor: python}\n", "must be letters, digits and '_'"),
    ("workflow: w\ntasks:\n  - {name: a, executor: python}\n  - {name: a, executor: python}\n", "defined twice"),
    ("workflow: w\ntasks:\n  - {name: a}\n", "needs an `executor:`"),
    ("workflow: w\ntasks:\n  - {name: a, executor: python, retry: {max_attempts: 1.5}}\n", "whole number"),
])
def test_yaml_problems_say_what_to_do(text: str, expected: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        load_workflow_text(text, "w.yaml")


def test_files_are_discovered_and_checked(tmp_path: Path) -> None:
    folder = tmp_path / "shop" / "workflows"
    folder.mkdir(parents=True)
    (folder / "flow.yaml").write_text(YAML, encoding="utf-8")
    (folder / "bad.yaml").write_text("workflow: w\ntasks:\n  - {name: a, executor: nope}\n", encoding="utf-8")
    assert discover_workflow_files(tmp_path) == [folder / "bad.yaml", folder / "flow.yaml"]
    assert load_workflow(folder / "flow.yaml", EXECUTORS).name == "data_processing"
    [problem] = check_workflow_file(folder / "bad.yaml", EXECUTORS)
    assert str(problem).startswith(f"{folder / 'bad.yaml'}:3: task 'a': unknown executor 'nope'")
    assert check_workflow_file(tmp_path / "missing.yaml")[0].message.startswith("cannot read")


def test_backoff_is_exponential_capped_and_deterministic() -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay_s=1, multiplier=2, max_delay_s=5, jitter=0.2)
    delays = [policy.delay_s(attempt, "run/task") for attempt in range(2, 8)]
    for attempt, delay in zip(range(2, 8), delays, strict=True):
        base = min(5, 2 ** (attempt - 2))
        assert base * 0.8 <= delay <= base * 1.2
    assert delays == [policy.delay_s(attempt, "run/task") for attempt in range(2, 8)]
    assert policy.delay_s(2, "run/task") != policy.delay_s(2, "run/other")
    assert policy.retries(("TransientError", "ExecutorError"), True)
    assert not policy.retries(("ValueError",), False)
    assert RetryPolicy(retry_on=("ValueError",)).retries(("ValueError",), False)
    assert not RetryPolicy(retry_on=("PermanentError",)).retries(("PermanentError",), True)
