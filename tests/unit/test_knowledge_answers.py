"""FAQ retrieval in the dialogue: the pure decision on the `knowledge` field of an `understood` event, the event
schema, and the recogniser stage with a retriever (keyword path unchanged, a failing retrieval never fails the turn).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from agents.dialogue import core
from agents.dialogue.effects import RecordTransition, SendReply
from agents.dialogue.loader import load_policy_text
from agents.dialogue.processor import RecogniserStage
from agents.dialogue.recognise import KeywordRecogniser
from agents.dialogue.retrieval import KnowledgeMatch, Retrieval
from agents.registry import discover_agents
from infra.config import load_settings
from serving.client import IntentClient
from serving.recogniser import ServedRecogniser
from serving.retrieval import KnowledgeClient, ServedRetriever, served_retrievers
from topics import catalog
from topics.binding import decode_event, encode_event
from topics.codec import AvroCodec
from topics.event import Event

POLICIES = {agent.name: agent.policy for agent in discover_agents()}
CS = POLICIES["customer_service"]
RETURNS = "You can return any item within 30 days of delivery for a full refund."


def _understood(text: str, knowledge: dict[str, Any] | None, intent: str | None = None) -> Event:
    data = {"session_id": "s-1", "agent": "customer_service", "turn_id": "t-1", "text": text, "channel": "api",
            "locale": None, "intent": intent, "confidence": 0.9 if intent else 0.0, "entities": [],
            "model": "served:test", "knowledge": knowledge}
    return Event(type=core.UNDERSTOOD, source="/test", data=data, subject="s-1", id=f"u-{text}",
                 time=datetime(2026, 12, 2, 9, tzinfo=UTC))


def _hits(*hits: tuple[str, float]) -> dict[str, Any]:
    return {"model": "served:knowledge:customer_service@v", "hits": [{"id": i, "score": s, "answer": f"answer {i}"}
                                                                      for i, s in hits]}


def _replies(effects: Sequence[Any]) -> list[str]:
    return [effect.text for effect in effects if isinstance(effect, SendReply)]


def test_a_turn_nothing_matched_is_answered_by_the_best_entry_above_the_threshold() -> None:
    state, effects = core.step(None, _understood("is the return label free", _hits(("returns", 0.67),
                                                                                   ("shipping", 0.28))), CS)
    assert len(_replies(effects)) == 1 and _replies(effects)[0].startswith(RETURNS)
    reasons = [e.reason for e in effects if isinstance(e, RecordTransition)]
    assert any(r.startswith("knowledge base: entry returns scored 0.670") for r in reasons), reasons
    assert state["fallbacks"] == 0


def test_below_the_threshold_or_without_hits_it_is_a_fallback() -> None:
    fallback = "Sorry, I did not understand that."
    for knowledge in (_hits(("returns", 0.49)), None, _hits(), {"model": "none (fallback: timed out)", "hits": []}):
        state, effects = core.step(None, _understood("tell me a joke", knowledge), CS)
        assert _replies(effects)[0].startswith(fallback), knowledge
        assert state["fallbacks"] == 1


def test_an_entry_the_policy_no_longer_has_is_a_fallback() -> None:
    _, effects = core.step(None, _understood("tell me a joke", _hits(("gone", 0.9))), CS)
    assert _replies(effects)[0].startswith("Sorry, I did not understand that.")


def test_a_matched_intent_wins_over_the_knowledge_base() -> None:
    _, effects = core.step(None, _understood("goodbye", _hits(("returns", 0.99)), intent="goodbye"), CS)
    assert not any(RETURNS in reply for reply in _replies(effects))


def test_the_threshold_is_a_policy_setting_and_replay_is_exact() -> None:
    text = ("agent: strict\nknowledge: faq.yaml\nsettings: {knowledge_min_score: 0.8}\n"
            "dialogues:\n  - {id: hi, trigger: {regex: 'hi'}, actions: [{type: reply, content: hello}]}\n")
    strict = load_policy_text(text, file=CS.file)
    assert strict.settings.knowledge_min_score == 0.8
    event = _understood("is the return label free", _hits(("returns", 0.67)))
    first = core.step(None, event, strict)
    assert not any(RETURNS in reply for reply in _replies(first[1]))
    assert core.step(None, event, CS) == core.step(None, event, CS), "a pure decision on the event's data"
    with pytest.raises(Exception, match="knowledge_min_score must be between 0 and 1"):
        load_policy_text(text.replace("0.8", "1.5"), file=CS.file)


def test_the_understood_schema_carries_knowledge_and_old_events_read_as_none() -> None:
    codec = AvroCodec()
    schema = catalog.agent_topics("customer_service").understood.value_schema
    with_hits = _understood("x", _hits(("returns", 0.67)))
    decoded = decode_event(encode_event(with_hits, codec).value, encode_event(with_hits, codec).headers, codec, schema)
    assert decoded.data["knowledge"] == _hits(("returns", 0.67))
    without = _understood("x", None)
    del without.data["knowledge"]  # what the keyword path and older writers send
    record = encode_event(without, codec)
    assert decode_event(record.value, record.headers, codec, schema).data["knowledge"] is None


class NoIntentHandle:
    """Answers like the intents deployment, with no intent for any text."""

    def __init__(self) -> None:
        self.recognise = self

    async def remote(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        return [{"intent": None, "confidence": 0.0, "similarity": 0.2, "alternatives": [],
                 "model": "all-MiniLM-L6-v2@int8"} for _ in pairs]


class FakeKnowledgeHandle:
    """Answers like the knowledge deployment's `search`; `delay_s` slows it down."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.requests: list[list[tuple[str, str, int]]] = []
        self.search = self

    def remote(self, queries: Sequence[tuple[str, str, int]]) -> Any:
        self.requests.append(list(queries))
        return self._answer(list(queries))

    async def _answer(self, queries: list[tuple[str, str, int]]) -> list[Any]:
        await asyncio.sleep(self.delay_s)
        return [[{"id": "returns", "score": 0.67, "answer": RETURNS}][:k] if agent == "customer_service"
                else {"error": f"no knowledge base is served for agent {agent!r}"} for agent, _, k in queries]


def _stage(knowledge: FakeKnowledgeHandle, **serving: Any) -> RecogniserStage:
    settings = load_settings(serving={"enabled": True, "request_timeout_s": 0.2, **serving})
    intents = IntentClient(settings, handle_factory=NoIntentHandle)
    retriever = ServedRetriever(CS, KnowledgeClient(settings, handle_factory=lambda: knowledge), k=3)
    return RecogniserStage({"customer_service": ServedRecogniser(CS, intents)},
                           retrievers={"customer_service": retriever}, concurrency=8)


def _turn(text: str, session: str = "s-1") -> Event:
    return Event(type="switchboard.dialogue.Turn", source="/test", subject=session, id=f"turn-{session}-{text}",
                 data={"session_id": session, "agent": "customer_service", "text": text, "channel": "api"})


async def test_the_stage_puts_the_retrieved_entries_in_the_event_batched() -> None:
    handle = FakeKnowledgeHandle()
    stage = _stage(handle)
    emitted = await asyncio.gather(*(stage.handle(_turn(text, f"s-{i}")) for i, text in
                                     enumerate(("is the return label free", "tell me a joke"))))
    knowledge = [emits[0].event.data["knowledge"] for emits in emitted]
    assert [k["hits"][0]["id"] for k in knowledge] == ["returns", "returns"]
    assert knowledge[0]["model"].startswith("served:knowledge:customer_service@")
    assert len(handle.requests) == 1 and len(handle.requests[0]) == 2, "concurrent turns: one request"


async def test_a_slow_retrieval_times_out_into_no_hits_and_says_why() -> None:
    stage = _stage(FakeKnowledgeHandle(delay_s=5.0))
    started = asyncio.get_running_loop().time()
    (emit,) = await stage.handle(_turn("is the return label free"))
    assert asyncio.get_running_loop().time() - started < 2.0, "never waits past the timeout"
    knowledge = emit.event.data["knowledge"]
    assert knowledge["hits"] == [] and knowledge["model"].startswith("none (fallback: the served FAQ retrieval "
                                                                     "did not answer within 0.2s")
    state, effects = core.step(None, emit.event, CS)  # the turn goes on: an ordinary fallback
    assert _replies(effects)[0].startswith("Sorry, I did not understand that.") and state["fallbacks"] == 1


async def test_the_keyword_path_retrieves_nothing_and_runs_one_turn_at_a_time() -> None:
    stage = RecogniserStage({"customer_service": KeywordRecogniser(CS)})
    assert stage.concurrency == 1 and stage.ordered_by_subject
    (emit,) = await stage.handle(_turn("is the return label free"))
    assert "knowledge" not in emit.event.data


def test_workers_retrieve_only_for_agents_with_a_knowledge_base_and_batch_by_settings() -> None:
    from streams.app import default_processors

    settings = load_settings(serving={"enabled": True, "stream_concurrency": 12})
    assert set(served_retrievers(list(POLICIES.values()), settings)) == {"customer_service"}
    stage = default_processors(settings)[1]
    assert isinstance(stage, RecogniserStage) and stage.concurrency == 12 and set(stage.retrievers) == {
        "customer_service"}
    keyword = default_processors(load_settings())[1]
    assert isinstance(keyword, RecogniserStage) and keyword.concurrency == 1 and not keyword.retrievers
    no_knowledge = default_processors(load_settings(serving={"enabled": True, "knowledge": False}))[1]
    assert isinstance(no_knowledge, RecogniserStage) and not no_knowledge.retrievers


def test_retrieval_as_event_data() -> None:
    retrieval = Retrieval("m", (KnowledgeMatch("a", 0.5, "x"),))
    assert retrieval.as_data() == {"model": "m", "hits": [{"id": "a", "score": 0.5, "answer": "x"}]}
