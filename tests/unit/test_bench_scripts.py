"""The dialogue benchmark's scripts expect what the agents really answer (checked through the pure core, no bus), so
a wrong answer counted by `python -m bench.dialogue_turns` is the bus's doing, not the script's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agents.dialogue.stories import Expected, Story, StoryStep, run_offline
from bench.dialogue_turns import CONVERSATION, customer_service_turn, echo_turn


def test_customer_service_conversation_repeats_with_the_expected_replies() -> None:
    turns = [customer_service_turn(index) for index in range(3 * len(CONVERSATION))]
    steps = tuple(StoryStep("bench", index + 1, "user", text=turn.text, replies=(Expected(text=turn.reply),))
                  for index, turn in enumerate(turns))
    result = run_offline(Story("bench conversation, three times", "customer_service", "bench", 1, steps))
    assert result.ok, result.report()


def test_the_conversation_covers_every_kind_of_turn() -> None:
    assert {turn.kind for turn in CONVERSATION} == {"greeting", "faq", "form: ask", "form: fill + workflow",
                                                   "fallback", "workflow", "goodbye"}


def test_echo_script_counts_turns() -> None:
    assert echo_turn(0).reply.startswith("Hello!")
    assert echo_turn(1).reply == "You said: message 2 (turn 2)"
    assert echo_turn(10).reply == "Hello again! This is turn 11 of our conversation."


async def test_the_workflow_benchmarks_check_what_their_workflows_compute() -> None:
    """bench.workflow_steps and the chaos benchmark's workflow load count a run as wrong unless its output is what
    they expect; run offline, the workflows give exactly that."""
    from agents.workflows.offline import run_offline
    from agents.workflows.registry import discover_workflows
    from bench.loads import BENCH_AGENTS
    from bench.workflow_steps import WORKFLOW, expected_result

    workflows = discover_workflows([BENCH_AGENTS], plugins=False)
    for a in (0, 7):
        ten = await run_offline(workflows[WORKFLOW], {"a": a})
        assert ten.status == "succeeded" and ten.output == {"result": expected_result(a)}, ten
        diamond = await run_offline(workflows["bench_diamond"], {"a": a, "b": a + 1})
        assert diamond.output == {"total": (2 * a + 1) * 3 + 10}, diamond


def test_a_benchmark_stopped_by_sigterm_runs_its_cleanup() -> None:
    """`timeout` or `kill` ends a benchmark with SIGTERM: its throwaway stack must still be stopped (`finally`)."""
    import os
    import signal

    import pytest

    from bench.loads import run_stopping_on_sigterm

    cleaned: list[str] = []

    async def bench() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.Event().wait()  # runs until stopped
        finally:
            cleaned.append("stack stopped")

    with pytest.raises(SystemExit) as stopped:
        run_stopping_on_sigterm(bench())
    assert stopped.value.code == 128 + signal.SIGTERM
    assert cleaned == ["stack stopped"]


def test_the_chaos_benchmark_refuses_a_data_dir_an_earlier_run_left(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Its figures count from an empty bus: a reused directory showed state errors that were only the earlier
    run's turns."""
    from bench.chaos import parse_args

    assert parse_args(["--data-dir", str(tmp_path / "new")]).data_dir == tmp_path / "new"
    assert parse_args(["--data-dir", str(tmp_path)]).data_dir == tmp_path  # empty
    (tmp_path / "tansu").mkdir()
    with pytest.raises(SystemExit):
        parse_args(["--data-dir", str(tmp_path)])
    assert "is not empty" in capsys.readouterr().err


def test_the_chaos_summary_counts_the_kills_caught_up_within_the_target() -> None:
    from bench.chaos import CycleFigures, Report

    report = Report(load="dialogue", workers=2, rate=30, late_ms=1000, cycles=[
        CycleFigures(1, "worker-0", 0.0, caught_up_s=5.8), CycleFigures(2, "worker-1", 0.0, caught_up_s=10.0),
        CycleFigures(3, "worker-0", 0.0, caught_up_s=14.0), CycleFigures(4, "worker-1", 0.0, caught_up_s=None),
        CycleFigures(5, "tansu", 0.0, caught_up_s=30.0),  # the broker's cycle is not a worker kill
    ])
    summary = report.summary()
    assert "(1 cycles not caught up); within 10s (the target): 2 of 4" in summary, summary
