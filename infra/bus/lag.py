"""Consumer-group lag against the *true* end of each partition (see `infra.bus.reading` for why)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import TopicPartition

from infra.bus.clients import consumer as make_consumer
from infra.bus.reading import topic_ends
from infra.config import Settings


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


async def group_lag(settings: Settings, group_id: str, topics: Iterable[str]) -> list[PartitionLag]:
    """Committed offset, true end and lag for every partition of `topics` in `group_id`.

    Reads commits through a consumer that never joins the group (Tansu 0.6 closes the connection on the admin
    client's OffsetFetch version), so asking does not trigger a rebalance.
    """
    ends = {topic: await topic_ends(settings, topic) for topic in topics}
    consumer = make_consumer(settings, group_id=group_id)
    await consumer.start()
    try:
        lags = []
        for topic, partitions in ends.items():
            for partition, end in sorted(partitions.items()):
                committed = await consumer.committed(TopicPartition(topic, partition))
                lags.append(PartitionLag(topic, partition, committed, end.end))
        return lags
    finally:
        await consumer.stop()
