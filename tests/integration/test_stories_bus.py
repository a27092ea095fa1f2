"""Every shipped conversation test through the real bus: turns to dialogue.turns, people and events to the agents'
inboxes, the worker's recogniser stage, dialogue processors and inline workflows in between. All stories run at once,
each on its own session, so the whole set costs about as long as the longest story."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from agents.dialogue.stories import collect_stories, load_stories_text, run_on_bus
from agents.registry import AGENTS_DIR
from infra.config import Settings

pytestmark = pytest.mark.integration

SHIPPED = collect_stories(sorted(path.parent for path in AGENTS_DIR.glob("*/stories")))


async def test_every_shipped_story_passes_on_the_bus(stack: Settings) -> None:
    started = time.monotonic()
    results = await run_on_bus(stack, SHIPPED, timeout_s=30.0)
    failed = [result.report() for result in results if not result.ok]
    assert not failed, f"{len(failed)} of {len(results)} stories failed on the bus:\n\n" + "\n\n".join(failed)
    assert {result.story.agent for result in results} == {"customer_service", "helpdesk", "smart_office"}
    assert time.monotonic() - started < 60, "the stories should run concurrently"


async def test_a_wrong_story_fails_on_the_bus_with_what_arrived(stack: Settings) -> None:
    (story,) = load_stories_text("""\
stories:
  - name: wrong on the bus
    steps:
      - user: hi
        bot: "您好,我是您的数字助理,请描述您的需求"
      - user: Track my parcel CD5678
        bot: [{matches: "Order CD5678 was delivered .*"}]
        state: idle
      - user: never sent
""", "wrong.yaml", "customer_service")
    (result,) = await run_on_bus(stack, [story], timeout_s=10.0)
    assert not result.ok and len(result.steps) == 2
    report = result.report()
    assert ('! reply 1: expected matches /Order CD5678 was delivered .*/, got "Order CD5678 is in transit; UPS '
            'expects to deliver it on 2026-11-28."') in report
    assert "transition order_status/lookup -> order_status/on_its_way" in report


def test_cli_runs_stories_on_the_bus(cli_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "infra.cli", "test-stories", str(AGENTS_DIR / "helpdesk"),
                           "--timeout", "30"], env=cli_env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS helpdesk: password reset for a known user" in done.stdout
    assert " 0 failed (on the bus)" in done.stdout
