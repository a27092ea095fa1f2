"""The true end of a partition, on the embedded broker, whose reported ends are wrong when producers batch.

Everything that reads "to the end" (tail, replay, lag, a worker recovering a table from its changelog) relies on
`infra.bus.reading`; an end found too early makes a recovered table miss its last state changes.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from infra.bus.admin import ensure_topics
from infra.bus.clients import producer as make_producer
from infra.bus.reading import read_topic, topic_ends
from infra.config import Settings
from topics.spec import TopicSpec

pytestmark = pytest.mark.integration


async def test_ends_are_exact_with_batching_and_single_record_producers(stack: Settings) -> None:
    spec = TopicSpec(name=f"test.ends-{uuid.uuid4().hex[:8]}", value_schema="switchboard.bus.DeadLetter",
                     key="n", owner="this test", description="ends", partitions=2)
    await ensure_topics(stack, [spec])
    producer = make_producer(stack, linger_ms=20)
    await producer.start()
    try:
        for _ in range(20):  # batches of 10 records each: the case Tansu's reported end gets wrong
            await asyncio.gather(*[await producer.send(spec.name, b"batched", partition=0) for _ in range(10)])
        for _ in range(30):  # one record per batch
            await producer.send_and_wait(spec.name, b"single", partition=0)
        await producer.send_and_wait(spec.name, b"single", partition=1)
    finally:
        await producer.stop()

    ends = await topic_ends(stack, spec.name)
    records = [record async for record in read_topic(stack, spec.name)]

    assert {p: e.end for p, e in ends.items()} == {0: 230, 1: 1}, {p: (e.reported, e.end) for p, e in ends.items()}
    assert sorted((r.partition, r.offset) for r in records) == [(0, o) for o in range(230)] + [(1, 0)]
