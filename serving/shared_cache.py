"""The shared level of the served recogniser's cache: answers of the served intent model on the compacted topic
`serving.answers`, mirrored in memory by every worker.

An answer is reusable only for the same model (name and precision), the same agent, the same policy version and the
same normalised text, so all four make its key: a redeployed model or a changed policy looks up other keys and never
gets a stale answer. Each worker reads the topic from the beginning when it starts and then follows it; a lookup
only looks at the mirror in memory, so a turn never waits on the bus (an entry not loaded yet is a miss). Publishing
is best effort: a failed or slow publish is logged and dropped, never retried and never in a turn's way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from infra.bus.clients import consumer as make_consumer
from infra.bus.clients import producer as make_producer
from infra.bus.reading import find_ends, topic_partitions
from infra.config import Settings
from serving.answers import IntentPrediction
from serving.cache import LRUCache
from topics import catalog
from topics.binding import decode_event, encode_event
from topics.codec import AvroCodec
from topics.errors import BusError, SwitchboardError
from topics.event import Event, derived_id

log = logging.getLogger(__name__)
SCHEMA = catalog.SERVING_ANSWERS.value_schema
SOURCE = "/switchboard/recogniser"
RETRY_S = 5.0  # wait between attempts to reach the bus when the mirror cannot start or lost its connection
MAX_IN_FLIGHT = 256  # publishes awaiting their acknowledgement; more are dropped (the bus is slow or down)


@dataclass(frozen=True)
class AnswerKey:
    """What makes an answer reusable. `model` is "" while the worker does not know the deployed model yet, which
    nothing is stored under."""

    model: str
    agent: str
    policy_version: str
    text: str

    @property
    def subject(self) -> str:
        """The Kafka key: readable prefix, digest of all four parts (texts can be long)."""
        digest = hashlib.sha256("\x1f".join((self.model, self.agent, self.policy_version, self.text)).encode())
        return f"{self.agent}@{self.policy_version}/{self.model}/{digest.hexdigest()[:32]}"


def answer_datum(key: AnswerKey, prediction: IntentPrediction) -> dict[str, Any]:
    """The `switchboard.serving.CachedAnswer` payload of an answer."""
    return {"model": key.model, "agent": key.agent, "policy_version": key.policy_version, "text": key.text,
            "intent": prediction.intent, "confidence": prediction.confidence, "similarity": prediction.similarity,
            "alternatives": [{"intent": name, "confidence": score} for name, score in prediction.alternatives]}


def answer_of(datum: Mapping[str, Any]) -> tuple[AnswerKey, IntentPrediction]:
    """Key and answer back from a payload."""
    key = AnswerKey(str(datum["model"]), str(datum["agent"]), str(datum["policy_version"]), str(datum["text"]))
    alternatives = tuple((str(pair["intent"]), float(pair["confidence"])) for pair in datum["alternatives"])
    return key, IntentPrediction(datum["intent"], float(datum["confidence"]), alternatives,
                                 float(datum["similarity"]), key.model)


def answer_event(key: AnswerKey, prediction: IntentPrediction, worker: str) -> Event:
    """The event a worker publishes; its id depends only on what it says, so copies are recognisable."""
    datum = answer_datum(key, prediction)
    return Event(type=SCHEMA, source=f"{SOURCE}/{worker}", data=datum, subject=key.subject,
                 id=derived_id(key.subject, f"{prediction.intent}/{prediction.confidence!r}"))


@dataclass(frozen=True)
class LevelStats:
    """Lookups of a worker's recognisers per cache level: each lookup is an LRU hit, a shared hit or a miss (the
    model was called)."""

    lru_hits: int
    shared_hits: int
    misses: int
    lru_entries: int
    shared_entries: int | None  # None: no shared level
    publishes: int = 0
    publish_failures: int = 0
    loaded: bool = False

    @property
    def lookups(self) -> int:
        return self.lru_hits + self.shared_hits + self.misses

    def rate(self, count: int) -> float:
        return count / self.lookups if self.lookups else 0.0

    def __str__(self) -> str:
        text = (f"{self.lookups} lookups: LRU {self.lru_hits} hits ({self.rate(self.lru_hits):.1%}, "
                f"{self.lru_entries} entries)")
        if self.shared_entries is not None:
            text += (f", shared {self.shared_hits} hits ({self.rate(self.shared_hits):.1%}, {self.shared_entries} "
                     f"entries{'' if self.loaded else ', loading'}, {self.publishes} published, "
                     f"{self.publish_failures} failed)")
        return text + f", {self.misses} misses ({self.rate(self.misses):.1%})"


def level_stats(lru: LRUCache[IntentPrediction], shared: SharedAnswerCache | None) -> LevelStats:
    """The per-level figures: with a shared level, every LRU miss is a shared lookup."""
    if shared is None:
        return LevelStats(lru.hits, 0, lru.misses, len(lru), None)
    return LevelStats(lru.hits, shared.entries.hits, shared.entries.misses, len(lru), len(shared.entries),
                      shared.publishes, shared.publish_failures, shared.loaded.is_set())


class SharedAnswerCache:
    """A worker's mirror of `serving.answers` (`start` it in the worker's event loop, `close` it at exit)."""

    def __init__(self, settings: Settings, *, worker: str = "worker", codec: AvroCodec | None = None) -> None:
        self.settings = settings
        self.worker = worker
        self.codec = codec or AvroCodec()
        self.topic = catalog.SERVING_ANSWERS.name
        self.publish_timeout_s = settings.serving.shared_cache_publish_timeout_s
        self.entries: LRUCache[IntentPrediction] = LRUCache(settings.serving.shared_cache_size)
        self.loaded = asyncio.Event()  # set once the topic was read to its end as of the start
        self.publishes = 0
        self.publish_failures = 0
        self.skipped = 0  # records that could not be decoded
        self._producer: AIOKafkaProducer | None = None
        self._follower: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._waiters: dict[AnswerKey, list[asyncio.Future[IntentPrediction]]] = {}
        self._closed = False

    # -- the turn's side: memory only ----------------------------------------------------------------------------
    def get(self, key: AnswerKey) -> IntentPrediction | None:
        return self.entries.get(key)

    def publish(self, key: AnswerKey, prediction: IntentPrediction) -> None:
        """Keep the answer locally and send it to the topic in the background."""
        if not key.model:
            return
        self.entries.put(key, prediction)
        if self._closed or self._producer is None or len(self._in_flight) >= MAX_IN_FLIGHT:
            self.publish_failures += 1
            return
        try:
            record = encode_event(answer_event(key, prediction, self.worker), self.codec)
        except SwitchboardError as exc:
            self.publish_failures += 1
            log.warning("shared cache: not publishing the answer for %s: %s", key.subject, exc)
            return
        task = asyncio.get_running_loop().create_task(self._send(record.key, record.value, record.headers))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        assert self._producer is not None
        try:
            await asyncio.wait_for(self._producer.send_and_wait(self.topic, value, key=key, headers=headers),
                                   self.publish_timeout_s)
            self.publishes += 1
        except (KafkaError, TimeoutError, OSError) as exc:
            self.publish_failures += 1
            log.warning("shared cache: a publish to %s failed (%s: %s); the answer stays in this worker only",
                        self.topic, type(exc).__name__, exc)

    async def wait_for(self, key: AnswerKey, timeout_s: float) -> IntentPrediction:
        """The answer for `key` once the mirror holds it (tests and benchmarks); TimeoutError otherwise."""
        known = self.entries.peek(key)
        if known is not None:
            return known
        future: asyncio.Future[IntentPrediction] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            waiting = self._waiters.get(key, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiters.pop(key, None)

    async def flush(self) -> None:
        """Wait for the publishes in flight (tests and benchmarks; turns never do)."""
        if self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    # -- the background side -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the producer and the follower; if the bus is not reachable the follower keeps trying, and lookups
        are misses meanwhile."""
        if self._follower is not None:
            return
        producer = make_producer(self.settings, linger_ms=5)
        try:
            await producer.start()
            self._producer = producer
        except KafkaError as exc:
            await producer.stop()
            log.warning("shared cache: cannot reach the bus to publish answers (%s); this worker's answers stay "
                        "its own", exc)
        self._follower = asyncio.get_running_loop().create_task(self._follow_forever(), name="shared-cache-mirror")

    async def _follow_forever(self) -> None:
        while not self._closed:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except (KafkaError, BusError, OSError) as exc:
                log.warning("shared cache: mirroring %s failed (%s: %s); retrying in %gs", self.topic,
                            type(exc).__name__, exc, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def _follow(self) -> None:
        consumer = make_consumer(self.settings)
        try:
            await consumer.start()
            partitions = await topic_partitions(consumer, self.topic)
            ends = {tp: end.end for tp, end in (await find_ends(consumer, partitions, self.settings)).items()}
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            loading = {tp for tp, end in ends.items() if end > 0}
            if not loading and not self.loaded.is_set():
                self.loaded.set()
                log.info("shared cache: %s is empty so far", self.topic)
            while True:
                batch = await consumer.getmany(timeout_ms=self.settings.kafka.effective_fetch_max_wait_ms + 300)
                for tp, records in batch.items():
                    for record in records:
                        self._apply(record.value, record.headers)
                        if tp in loading and record.offset + 1 >= ends[tp]:
                            loading.discard(tp)
                    if not loading and not self.loaded.is_set():
                        self.loaded.set()
                        log.info("shared cache: %d answers loaded from %s", len(self.entries), self.topic)
        finally:
            await asyncio.shield(consumer.stop())

    def _apply(self, value: bytes | None, headers: Any) -> None:
        try:
            key, prediction = answer_of(decode_event(value, headers, self.codec, expected_type=SCHEMA).data)
        except (SwitchboardError, KeyError, TypeError, ValueError) as exc:
            self.skipped += 1
            log.warning("shared cache: skipped a record of %s that is not a cached answer: %s", self.topic, exc)
            return
        self.entries.put(key, prediction)
        for future in self._waiters.pop(key, []):
            if not future.done():
                future.set_result(prediction)

    async def close(self) -> None:
        """Give the publishes in flight a moment, then stop following and publishing."""
        self._closed = True
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=self.publish_timeout_s)
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follower
        if self._producer is not None:
            with contextlib.suppress(KafkaError, OSError):
                await self._producer.stop()
            self._producer = None
