"""A consumer behind on a partition reads it although the broker needs longer than the fetch wait to find records
(`infra.bus.fetch_wait`).

Tansu 0.6.0 on S3 gives a fetch its `max_wait` to find records, and finding them starts with a listing of every
batch object of the partition. With a wait shorter than that, a fetch comes back empty every time, and a plain
consumer behind on the partition never reads another record; that is how catch-up after a kill stalled once
partitions had grown (docs/bus-facts.md). Here a 1 ms wait stands in for a wait shorter than the listing.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import Fetcher

from infra.bus import fetch_wait
from infra.bus.admin import ensure_topics
from infra.bus.clients import consumer as make_consumer
from infra.bus.clients import producer as make_producer
from infra.config import Settings
from topics.spec import TopicSpec

pytestmark = pytest.mark.integration

BATCHES = 150
SHORT_WAIT_MS = 1


async def _read(consumer: AIOKafkaConsumer, tp: TopicPartition, count: int, timeout_s: float) -> int:
    """How many records `consumer` reads from `tp` (up to `count`) within `timeout_s`."""
    got = 0

    async def read() -> None:
        nonlocal got
        while got < count:
            got += len((await consumer.getmany(tp, timeout_ms=500)).get(tp, []))

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), timeout_s)
    return got


async def test_a_consumer_behind_reads_on_although_a_short_fetch_wait_starves_on_the_broker(
        stack: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TopicSpec(name=f"test.fetch-wait-{uuid.uuid4().hex[:8]}", value_schema="switchboard.bus.DeadLetter",
                     key="n", owner="this test", description="fetch wait", partitions=1)
    await ensure_topics(stack, [spec])
    tp = TopicPartition(spec.name, 0)
    producer = make_producer(stack)
    await producer.start()
    try:
        for _ in range(BATCHES):  # one batch object each, as a worker that awaits each publish writes them
            await (await producer.send(spec.name, b"x" * 100, partition=0))

        plain = make_consumer(stack, fetch_max_wait_ms=SHORT_WAIT_MS)  # installs the patch, so undo it after
        with monkeypatch.context() as undone:  # as aiokafka does without the patch: the configured wait, always
            undone.setattr(Fetcher, "_get_actions_per_node", fetch_wait._original_actions)
            await plain.start()
            try:
                plain.assign([tp])
                plain.seek(tp, 0)
                starved = await _read(plain, tp, BATCHES, timeout_s=5)
            finally:
                await plain.stop()
        assert starved < BATCHES, (
            f"the broker answered {starved} records to a {SHORT_WAIT_MS} ms fetch wait: it no longer starves short "
            "waits, so infra.bus.fetch_wait may no longer be needed (docs/bus-facts.md)")

        assert fetch_wait.installed()
        reader = make_consumer(stack, fetch_max_wait_ms=SHORT_WAIT_MS)
        await reader.start()
        try:
            reader.assign([tp])
            reader.seek(tp, 0)
            assert await _read(reader, tp, BATCHES, timeout_s=30) == BATCHES
            # At the end, a new record still arrives: the short wait first, the catch-up wait once it is behind.
            await (await producer.send(spec.name, b"y", partition=0))
            assert await _read(reader, tp, 1, timeout_s=30) == 1
            # And at the end the fetches ask for the short wait again (a long one would delay each new record).
            assert await _read(reader, tp, 1, timeout_s=1) == 0
            assert reader._fetcher._switchboard_fetch_wait.last_wait_ms == SHORT_WAIT_MS
        finally:
            await reader.stop()
    finally:
        await producer.stop()
