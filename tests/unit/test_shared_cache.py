"""The shared cache level without a bus: keys (what makes an answer reusable), the payload on serving.answers, the
mirror's bounded memory, the per-level hit counts, and lookups through the recogniser's two levels."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from agents.registry import discover_agents
from infra.config import load_settings
from serving.answers import IntentPrediction
from serving.cache import LRUCache
from serving.client import IntentClient
from serving.recogniser import ServedRecogniser, answer_key, served_recognisers
from serving.shared_cache import (
    SCHEMA,
    AnswerKey,
    LevelStats,
    SharedAnswerCache,
    answer_datum,
    answer_event,
    answer_of,
    level_stats,
)
from topics import catalog
from topics.binding import decode_event, encode_event
from topics.codec import AvroCodec

POLICY = next(agent.policy for agent in discover_agents() if agent.name == "customer_service")
PREDICTION = IntentPrediction("order_status", 0.93, (("ticket", 0.04), ("deny", 0.01)), 0.71, "all-MiniLM-L6-v2@int8")
SETTINGS = load_settings(serving={"enabled": True, "request_timeout_s": 0.5, "shared_cache_size": 3})


class CountingHandle:
    """Answers every text with `PREDICTION` under model `model`, counting the turns it was asked."""

    def __init__(self, model: str = PREDICTION.model) -> None:
        self.model = model
        self.turns = 0
        self.recognise = self

    def remote(self, pairs: Sequence[tuple[str, str]]) -> Any:
        self.turns += len(pairs)
        return self._answer(len(pairs))

    async def _answer(self, count: int) -> list[dict[str, Any]]:
        return [replace(PREDICTION, model=self.model).as_dict() for _ in range(count)]


def test_the_key_holds_model_agent_policy_version_and_normalised_text() -> None:
    key = answer_key("all-MiniLM-L6-v2@int8", POLICY, "  Where is   my ORDER ")
    assert key == AnswerKey("all-MiniLM-L6-v2@int8", "customer_service", POLICY.version, "where is my order")
    assert answer_key("all-MiniLM-L6-v2@int8", POLICY, "where is my order") == key
    others = [answer_key("all-MiniLM-L6-v2@fp32", POLICY, "where is my order"),
              answer_key("all-MiniLM-L6-v2@int8", replace(POLICY, version="other"), "where is my order"),
              answer_key("all-MiniLM-L6-v2@int8", replace(POLICY, agent="helpdesk"), "where is my order"),
              answer_key("all-MiniLM-L6-v2@int8", POLICY, "where is my parcel")]
    assert len({key, *others}) == 5
    assert len({key.subject, *(other.subject for other in others)}) == 5, "every part changes the Kafka key"
    assert key.subject.startswith(f"customer_service@{POLICY.version}/all-MiniLM-L6-v2@int8/")
    assert answer_key(None, replace(POLICY, version=""), "x") == AnswerKey("", "customer_service", "unversioned", "x")


def test_an_answer_survives_the_trip_through_the_topic_codec() -> None:
    key = answer_key(PREDICTION.model, POLICY, "where is my order")
    codec = AvroCodec()
    record = encode_event(answer_event(key, PREDICTION, "worker-0"), codec)
    assert record.key == key.subject.encode()
    event = decode_event(record.value, record.headers, codec, expected_type=catalog.SERVING_ANSWERS.value_schema)
    assert event.type == SCHEMA and event.source == "/switchboard/recogniser/worker-0"
    assert answer_of(event.data) == (key, PREDICTION)
    assert answer_event(key, PREDICTION, "worker-1").id == answer_event(key, PREDICTION, "worker-0").id
    assert answer_datum(key, replace(PREDICTION, intent=None))["intent"] is None


def test_the_topic_is_compacted_and_kept() -> None:
    spec = catalog.SERVING_ANSWERS
    assert spec.config() == {"cleanup.policy": "compact"} and spec in catalog.ALL


def test_the_mirror_keeps_at_most_its_size_dropping_the_least_recently_used() -> None:
    shared = SharedAnswerCache(SETTINGS)  # never started: memory only, publishes are counted as failed
    keys = [answer_key(PREDICTION.model, POLICY, f"text {i}") for i in range(4)]
    for key in keys[:3]:
        shared.publish(key, PREDICTION)
    assert shared.get(keys[0]) == PREDICTION  # now the most recently used
    shared.publish(keys[3], PREDICTION)
    assert shared.get(keys[1]) is None and shared.get(keys[0]) == PREDICTION and shared.get(keys[3]) == PREDICTION
    assert len(shared.entries) == 3 and (shared.publishes, shared.publish_failures) == (0, 4)
    shared.publish(answer_key(None, POLICY, "unknown model"), PREDICTION)
    assert len(shared.entries) == 3, "nothing is stored without the model's identity"


def test_level_stats_count_each_lookup_once() -> None:
    lru: LRUCache[IntentPrediction] = LRUCache(10)
    lru.hits, lru.misses = 6, 4
    assert level_stats(lru, None) == LevelStats(6, 0, 4, 0, None)
    shared = SharedAnswerCache(SETTINGS)
    shared.entries.hits, shared.entries.misses, shared.publishes = 3, 1, 1
    stats = level_stats(lru, shared)
    assert (stats.lru_hits, stats.shared_hits, stats.misses, stats.lookups) == (6, 3, 1, 10)
    assert str(stats) == ("10 lookups: LRU 6 hits (60.0%, 0 entries), shared 3 hits (30.0%, 0 entries, loading, "
                          "1 published, 0 failed), 1 misses (10.0%)")
    assert str(LevelStats(0, 0, 0, 0, None)) == "0 lookups: LRU 0 hits (0.0%, 0 entries), 0 misses (0.0%)"


async def test_lookups_go_lru_then_shared_then_model() -> None:
    handle = CountingHandle()
    shared = SharedAnswerCache(SETTINGS)
    first = ServedRecogniser(POLICY, IntentClient(SETTINGS, handle_factory=lambda: handle), LRUCache(10), shared)
    assert (await first.recognise("where is my order")).intent == "order_status"
    assert (await first.recognise("Where is my order")).intent == "order_status"
    assert handle.turns == 1 and (first.stats.misses, first.stats.lru_hits) == (1, 1)
    # Another recogniser on the same shared level, whose client already knows the model: a shared hit.
    second_client = IntentClient(SETTINGS, handle_factory=lambda: handle)
    second_client.model = PREDICTION.model
    second = ServedRecogniser(POLICY, second_client, LRUCache(10), shared)
    understood = await second.recognise("where is my order")
    assert understood.intent == "order_status" and understood.model.startswith(f"served:{PREDICTION.model}:")
    assert handle.turns == 1 and second.stats.shared_hits == 1
    await second.recognise("where is my order")
    assert second.stats.lru_hits == 1, "a shared hit is kept in the LRU"


async def test_another_model_or_policy_version_misses() -> None:
    handle = CountingHandle()
    shared = SharedAnswerCache(SETTINGS)
    client = IntentClient(SETTINGS, handle_factory=lambda: handle)
    await ServedRecogniser(POLICY, client, LRUCache(10), shared).recognise("where is my order")
    changed = ServedRecogniser(replace(POLICY, version="changed"), client, LRUCache(10), shared)
    await changed.recognise("where is my order")
    assert handle.turns == 2, "a new policy version is answered by the model"
    fp32 = CountingHandle("all-MiniLM-L6-v2@fp32")
    redeployed = IntentClient(SETTINGS, handle_factory=lambda: fp32)
    redeployed.model = fp32.model
    understood = await ServedRecogniser(POLICY, redeployed, LRUCache(10), shared).recognise("where is my order")
    assert fp32.turns == 1 and understood.model.startswith("served:all-MiniLM-L6-v2@fp32:")


class DescribedHandle(CountingHandle):
    """Also answers `info`, as the intents deployment does."""

    def __init__(self) -> None:
        super().__init__()
        self.info = self.Info()

    class Info:
        def remote(self) -> Any:
            return asyncio.sleep(0, {"model": "all-MiniLM-L6-v2@int8", "batches": 0})


async def test_the_model_is_learnt_from_the_deployment_or_its_first_answer() -> None:
    client = IntentClient(SETTINGS, handle_factory=DescribedHandle)
    assert await client.identify() == "all-MiniLM-L6-v2@int8" == client.model
    plain = IntentClient(SETTINGS, handle_factory=CountingHandle)
    assert await plain.identify() is None and plain.model is None  # a handle without `info`: logged, not raised
    await plain.recognise("customer_service", "where is my order")
    assert plain.model == PREDICTION.model


def test_served_recognisers_share_one_shared_level_when_enabled() -> None:
    recognisers = served_recognisers([POLICY, replace(POLICY, agent="helpdesk")], SETTINGS,
                                     IntentClient(SETTINGS, handle_factory=CountingHandle))
    levels = [r.shared for r in recognisers.values() if isinstance(r, ServedRecogniser)]
    assert len(levels) == 2 and levels[0] is levels[1] is not None
    off = load_settings(serving={"enabled": True, "shared_cache": False})
    assert [r.shared for r in served_recognisers([POLICY], off).values() if isinstance(r, ServedRecogniser)] == [None]


def test_a_worker_app_runs_one_shared_cache_service_when_serving_is_on(tmp_path: Path) -> None:
    from streams.app import create_app, default_processors
    from streams.recognisers import SharedCacheService, shared_caches

    served = load_settings(data_dir=tmp_path, serving={"enabled": True})
    services = list(shared_caches(default_processors(served)).values())
    assert len(services) == 1 and {r.policy.agent for r in services[0].recognisers} >= {"customer_service",
                                                                                         "helpdesk"}
    app = create_app(served)
    assert [type(child) for child in app._children if isinstance(child, SharedCacheService)] == [SharedCacheService]
    assert not shared_caches(default_processors(load_settings(data_dir=tmp_path, serving={"enabled": True,
                                                                                          "shared_cache": False})))
    assert not shared_caches(default_processors(load_settings(data_dir=tmp_path)))


async def test_closing_a_mirror_that_never_reached_the_bus_ends_its_tasks(tmp_path: Path) -> None:
    unreachable = load_settings(data_dir=tmp_path, kafka={"bootstrap_servers": "127.0.0.1:9"},
                                serving={"enabled": True})
    shared = SharedAnswerCache(unreachable)
    await shared.start()  # the producer cannot connect: logged; the follower keeps trying in the background
    key = answer_key(PREDICTION.model, POLICY, "where is my order")
    shared.publish(key, PREDICTION)
    assert shared.get(key) == PREDICTION and shared.publish_failures == 1 and not shared.loaded.is_set()
    await shared.close()
    assert shared._follower is not None and shared._follower.done()


async def test_the_worker_service_starts_and_closes_its_shared_cache(tmp_path: Path) -> None:
    from streams.recognisers import SharedCacheService

    unreachable = load_settings(data_dir=tmp_path, kafka={"bootstrap_servers": "127.0.0.1:9"},
                                serving={"enabled": True, "request_timeout_s": 0.5})
    shared = SharedAnswerCache(unreachable)
    client = IntentClient(unreachable, handle_factory=DescribedHandle)
    service = SharedCacheService(shared, [ServedRecogniser(POLICY, client, LRUCache(10), shared)])
    await service.start()
    assert shared._follower is not None and not shared._follower.done()
    await asyncio.gather(*service.identifying)
    await service.stop()
    assert shared._closed and shared._follower.done()
    assert client.model == "all-MiniLM-L6-v2@int8", "the service asked the deployment which model it serves"
