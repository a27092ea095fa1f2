"""Which workflows a deployment runs, how they sit beside the agents' inline workflows, and the CLI's offline side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.dialogue.errors import DialogueError
from agents.inline_workflows import InlineWorkflowRunner
from agents.registry import dialogue_processors, discover_agents
from agents.workflows import WorkflowDefinitionError, WorkflowError
from agents.workflows.processors import request_event
from agents.workflows.registry import discover_workflows
from infra.cli import cli

TESTS = Path(__file__).resolve().parents[1]
DEMO = TESTS / "agents" / "workflow_demo" / "workflows"


def test_the_demo_workflows_the_integration_stack_runs_are_valid() -> None:
    found = discover_workflows([TESTS / "agents"], plugins=False)
    assert set(found) == {"demo_diamond", "demo_flaky_fetch", "demo_poison", "demo_slow", "demo_tally",
                          "demo_big_output", "demo_restart"}
    assert found["demo_diamond"].order() == ["start", "double", "plus_ten", "join"]


def test_problems_of_every_file_are_reported_together(tmp_path: Path) -> None:
    for agent in ("a", "b"):
        (tmp_path / agent / "workflows").mkdir(parents=True)
        (tmp_path / agent / "workflows" / "w.yaml").write_text(
            f"workflow: w_{agent}\ntasks:\n  - {{name: t, executor: nope}}\n", encoding="utf-8")
    with pytest.raises(WorkflowDefinitionError) as caught:
        discover_workflows([tmp_path], plugins=False)
    assert [p.file for p in caught.value.problems] == [str(tmp_path / a / "workflows" / "w.yaml") for a in "ab"]


def test_two_workflows_may_not_share_a_name(tmp_path: Path) -> None:
    for agent in ("a", "b"):
        (tmp_path / agent / "workflows").mkdir(parents=True)
        (tmp_path / agent / "workflows" / "w.yaml").write_text(
            "workflow: same\ntasks:\n  - {name: t, executor: python, params: {function: 'm:f'}}\n",
            encoding="utf-8")
    with pytest.raises(WorkflowError, match="defined twice"):
        discover_workflows([tmp_path], plugins=False)


def test_the_inline_runner_leaves_engine_workflows_to_the_engine() -> None:
    runner = InlineWorkflowRunner({"order_status": lambda payload: {}}, others={"demo_diamond"})
    engine = request_event("r1", "demo_diamond", {}, requester="customer_service",
                           reply_to="agent.customer_service.signals", reply_key="s")
    inline = request_event("r2", "order_status", {}, requester="customer_service",
                           reply_to="agent.customer_service.signals", reply_key="s")
    assert runner.handle(engine) == ()
    [emit] = runner.handle(inline)
    assert json.loads(emit.event.data["data"])["status"] == "succeeded"


def test_an_engine_workflow_may_not_shadow_an_inline_one() -> None:
    agents = discover_agents()
    with pytest.raises(DialogueError, match="order_status"):
        dialogue_processors(agents, engine_workflows={"order_status"})


def test_cli_check_and_offline_run() -> None:
    runner = CliRunner()
    checked = runner.invoke(cli, ["workflow", "check", str(DEMO)], obj={})
    assert checked.exit_code == 0 and "7 file(s) valid" in checked.output
    ran = runner.invoke(cli, ["workflow", "run", str(DEMO / "diamond.yaml"), "--offline", "--input",
                              '{"a": 1, "b": 2}'], obj={})
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.output.splitlines()[-1])["output"] == {"total": 19, "started_with": 3}


def test_cli_check_reports_problems_with_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("workflow: w\ntasks:\n  - {name: t, executor: nope}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["workflow", "check", str(bad)], obj={})
    assert result.exit_code == 1 and f"{bad}:3: task 't': unknown executor 'nope'" in result.output


async def test_the_agents_python_workflows_run_on_the_engine_with_the_inline_results() -> None:
    """A worker runs an agent's `WORKFLOWS` function as a one-task engine workflow: same output, and an expected
    failure (`WorkflowFailed`) fails the run at once with its message (a dialogue's `on_error`)."""
    from agents.inline_workflows import run_inline
    from agents.registry import agent_engine_workflows
    from agents.workflows.offline import run_offline

    agents = discover_agents()
    engine = agent_engine_workflows(agents)
    assert {"order_status", "create_ticket", "reset_password"} <= set(engine)
    functions = next(a for a in agents if a.name == "customer_service").workflows
    found = await run_offline(engine["order_status"], {"order_id": "ab1234"})
    assert found.status == "succeeded"
    assert found.output == run_inline(functions, "order_status", {"order_id": "ab1234"})["output"]
    missing = await run_offline(engine["order_status"], {"order_id": "zz9"})
    assert missing.status == "failed" and "no order ZZ9" in str(missing.state["error"])
    assert len(missing.state["tasks"]["run"]["history"]) == 1, "an expected failure is not retried"


def test_a_worker_runs_the_agents_workflows_on_the_engine_and_no_inline_runner() -> None:
    from streams.app import default_processors

    processors = default_processors()
    assert not [p for p in processors if isinstance(p, InlineWorkflowRunner)]
    runner = next(p for p in processors if getattr(p, "name", "") == "workflow-runs")
    assert {"order_status", "create_ticket", "reset_password"} <= set(runner.workflows)  # type: ignore[attr-defined]
    assert "device_reading" in runner.others  # type: ignore[attr-defined]  # the device twin answers those
