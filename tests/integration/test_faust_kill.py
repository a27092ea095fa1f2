"""Regression test for `streams.faust_fixes`: no input is lost when a Faust worker with a Table dies under load.

Two workers of `faust_kill/app.py` (a Table, Switchboard's `switchboard://` transport, the fixes applied) share a
4-partition topic on a Tansu broker (memory storage, free port); 1,500 messages arrive at 200/s and one worker is
killed with SIGKILL after 2 s. Every input must produce an output once the survivor has taken over. Duplicates are
expected (at-least-once: up to the commit interval's worth) and only reported. Stock Faust 0.15.3 loses messages in
this scenario (`python tests/integration/faust_kill/loop.py --unfixed`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from faust_kill.scenario import RUN_MARK, run_scenario

pytestmark = pytest.mark.integration
MESSAGES = 1500


def _processes_of(run_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["environ"]):
        try:
            env = proc.info["environ"] or {}
        except psutil.Error:
            continue
        if env.get(RUN_MARK) == str(run_dir):
            found.append(proc)
    return found


@pytest.mark.timeout(90)
async def test_no_input_lost_when_a_worker_is_killed(tmp_path: Path,
                                                     record_property: Callable[[str, Any], None]) -> None:
    run_dir = tmp_path / "run"
    outcome = await run_scenario(run_dir, fixes=True, n=MESSAGES, rate=200.0, kill_after_s=2.0,
                                 settle_timeout_s=40.0)
    print(outcome.summary())
    record_property("duplicates", outcome.verdict.duplicates)
    record_property("seconds", round(outcome.seconds, 1))

    leftovers = _processes_of(run_dir)
    assert not leftovers, f"processes left running: {[(p.pid, p.name()) for p in leftovers]}"
    assert outcome.verdict.inputs == MESSAGES, outcome.summary()
    assert outcome.verdict.lost == 0, f"{outcome.summary()}; logs in {outcome.logs}"


def test_apply_is_idempotent_and_refuses_another_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    import faust

    from streams import faust_fixes

    faust_fixes.apply()
    faust_fixes.apply()
    assert faust_fixes.applied()
    monkeypatch.setattr(faust, "__version__", "0.16.0")
    with pytest.raises(faust_fixes.FaustVersionError, match=r"0\.15\.3 internals, but 0\.16\.0 is installed"):
        faust_fixes.apply()
