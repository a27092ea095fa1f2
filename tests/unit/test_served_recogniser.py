"""The served recogniser without Ray: a stand-in deployment handle shows the batching of concurrent turns, the cache,
the timeout and the fallback to the keyword recogniser (named in the `model` field), and the selection by settings."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from agents.dialogue.processor import RecogniserStage
from agents.dialogue.recognise import KeywordRecogniser
from agents.registry import dialogue_processors, discover_agents
from infra.config import Settings, load_settings
from serving.answers import IntentPrediction
from serving.cache import LRUCache
from serving.client import IntentClient
from serving.errors import UnknownAgentModelError
from serving.recogniser import ServedRecogniser, served_recognisers
from streams.app import default_processors

POLICIES = {agent.name: agent.policy for agent in discover_agents()}


class FakeHandle:
    """Answers like the intents deployment: `intent_of` maps a text to an intent; `delay_s` slows it down."""

    def __init__(self, intent_of: dict[str, str], delay_s: float = 0.0, fail: Exception | None = None) -> None:
        self.intent_of = intent_of
        self.delay_s = delay_s
        self.fail = fail
        self.requests: list[list[tuple[str, str]]] = []
        self.recognise = self

    def remote(self, pairs: Sequence[tuple[str, str]]) -> Any:
        self.requests.append(list(pairs))
        return self._answer(list(pairs))

    async def _answer(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        answers: list[dict[str, Any]] = []
        for agent, text in pairs:
            if agent == "nobody":
                answers.append({"error": "not trained for agent 'nobody'"})
                continue
            intent = self.intent_of.get(text)
            answers.append(IntentPrediction(intent, 0.93 if intent else 0.0, (("deny", 0.01),), 0.7,
                                            "all-MiniLM-L6-v2@int8").as_dict())
        return answers


def _settings(**serving: Any) -> Settings:
    return load_settings(serving={"enabled": True, "request_timeout_s": 0.2, "retry_after_s": 30.0, **serving})


def _recogniser(handle: FakeHandle, settings: Settings | None = None, cache_size: int = 100) -> ServedRecogniser:
    client = IntentClient(settings or _settings(), handle_factory=lambda: handle)
    return ServedRecogniser(POLICIES["customer_service"], client, LRUCache(cache_size))


async def test_the_model_answers_the_intent_and_the_policy_the_entities() -> None:
    recogniser = _recogniser(FakeHandle({"has my parcel AB1234 shipped?": "order_status"}))
    understood = await recogniser.recognise("has my parcel AB1234 shipped?")
    assert understood.intent == "order_status" and understood.confidence == 0.93
    assert [(e.name, e.value) for e in understood.entities] == [("order_id", "AB1234")]
    assert understood.model.startswith("served:all-MiniLM-L6-v2@int8:customer_service@")


async def test_concurrent_turns_travel_as_one_request() -> None:
    handle = FakeHandle({"a": "affirm", "b": "deny", "c": "human"})
    recogniser = _recogniser(handle)
    results = await asyncio.gather(*(recogniser.recognise(text) for text in ("a", "b", "c")))
    assert [r.intent for r in results] == ["affirm", "deny", "human"]
    assert handle.requests == [[("customer_service", "a"), ("customer_service", "b"), ("customer_service", "c")]]


async def test_batches_are_cut_at_max_batch_size() -> None:
    handle = FakeHandle({})
    recogniser = _recogniser(handle, _settings(max_batch_size=2))
    await asyncio.gather(*(recogniser.recognise(f"text {i}") for i in range(5)))
    assert [len(request) for request in handle.requests] == [2, 2, 1]


async def test_the_cache_answers_repeated_texts_and_counts_hits() -> None:
    handle = FakeHandle({"where is my order": "order_status"})
    recogniser = _recogniser(handle)
    for text in ("where is my order", "Where is  my ORDER", "where is my order"):
        assert (await recogniser.recognise(text)).intent == "order_status"
    assert len(handle.requests) == 1
    stats = recogniser.cache.stats
    assert (stats.hits, stats.misses) == (2, 1) and stats.hit_rate == pytest.approx(2 / 3)
    assert "2 hits / 3 lookups" in str(stats)


def test_the_lru_cache_evicts_the_least_recently_used() -> None:
    cache: LRUCache[int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2
    nothing: LRUCache[int] = LRUCache(0)
    nothing.put("a", 1)
    assert nothing.get("a") is None


async def test_a_slow_model_times_out_and_the_keyword_recogniser_answers() -> None:
    handle = FakeHandle({"where is my order": "ticket"}, delay_s=5.0)
    recogniser = _recogniser(handle)
    started = asyncio.get_running_loop().time()
    understood = await recogniser.recognise("where is my order")
    assert asyncio.get_running_loop().time() - started < 2.0, "never waits past the timeout"
    keyword = KeywordRecogniser(POLICIES["customer_service"]).recognise_now("where is my order")
    assert (understood.intent, understood.confidence) == (keyword.intent, keyword.confidence) == ("order_status", 0.9)
    assert understood.model.startswith(keyword.model + " (fallback: ")
    assert "did not answer within 0.2s" in understood.model
    # The model is left alone for serving.retry_after_s: the next turn does not wait again.
    again = await recogniser.recognise("goodbye")
    assert again.intent == "goodbye" and "fallback" in again.model and "next try in" in again.model
    assert len(handle.requests) == 1
    assert recogniser.fallbacks == 2


async def test_ray_errors_fall_back_and_name_the_cause() -> None:
    handle = FakeHandle({}, fail=RuntimeError("ActorDiedError: the replica died"))
    understood = await _recogniser(handle).recognise("cancel")
    assert understood.intent == "cancel"
    assert "(fallback: the served intent model failed: RuntimeError: ActorDiedError" in understood.model


async def test_no_model_server_falls_back_at_once(tmp_path: Any) -> None:
    settings = load_settings(data_dir=tmp_path, serving={"enabled": True, "request_timeout_s": 1.0})
    recogniser = served_recognisers([POLICIES["customer_service"]], settings)["customer_service"]
    understood = await recogniser.recognise("bye")
    assert understood.intent == "goodbye"
    assert "fallback: no model server is running" in understood.model and "switchboard serve" in understood.model


async def test_an_agent_the_model_does_not_know_falls_back() -> None:
    client = IntentClient(_settings(), handle_factory=lambda: FakeHandle({}))
    with pytest.raises(UnknownAgentModelError, match="nobody"):
        await client.recognise("nobody", "hello")


def test_the_keyword_recogniser_stays_the_default() -> None:
    stage = default_processors(load_settings())[1]
    assert isinstance(stage, RecogniserStage)
    assert all(isinstance(r, KeywordRecogniser) for r in stage.recognisers.values())
    served = default_processors(load_settings(serving={"enabled": True}))[1]
    assert isinstance(served, RecogniserStage)
    assert all(isinstance(r, ServedRecogniser) for r in served.recognisers.values())
    assert set(served.recognisers) == set(POLICIES)


def test_dialogue_processors_take_given_recognisers() -> None:
    agents = discover_agents()
    mine = {agent.name: KeywordRecogniser(agent.policy) for agent in agents}
    stage = dialogue_processors(agents, recognisers=mine)[0]
    assert isinstance(stage, RecogniserStage) and stage.recognisers == mine


def test_up_starts_the_model_server_only_when_serving_is_enabled_and_local(tmp_path: Any) -> None:
    from infra.embedded.components import model_server
    from infra.embedded.stack import plan_names

    def names(**serving: Any) -> list[str]:
        return [name for name, _, _ in plan_names(load_settings(data_dir=tmp_path, serving=serving))]

    assert "serving" not in names()
    enabled = names(enabled=True)
    assert enabled.index("serving") < enabled.index("worker-0"), "before the workers, which call it"
    assert "serving" not in names(enabled=True, ray_address="ray://ray-head:10001")
    component = model_server(load_settings(data_dir=tmp_path, serving={"enabled": True, "start_timeout_s": 240}))
    assert component.command[1:] == ["-m", "serving"] and component.start_timeout_s == 240
    assert component.env["SWITCHBOARD_SERVING__ENABLED"] == "true"
