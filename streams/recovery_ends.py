"""True partition ends for Faust's table recovery.

Faust recovers a table by reading its changelog up to the broker's reported end ("highwater") and refuses to
start when its local store is ahead of that end (ConsistencyError). Tansu 0.6.0 reports ends that are too low when
producers batch (and on S3 storage, far too low), so a restarted worker either crashes or stops recovering early
and silently loses state. Here the ends come from `infra.bus.reading.find_ends`, which confirms them by reading.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from aiokafka import TopicPartition

from infra.bus.clients import consumer as make_consumer
from infra.bus.reading import find_ends
from infra.config import Settings

log = logging.getLogger(__name__)
# Ends are confirmed by the fetch high watermark; this quiet window only matters for a broker that sends none.
# Recovery happens once per rebalance and a short end would lose state, so it waits longer than interactive readers.
RECOVERY_QUIET_MS = 1500


async def true_highwaters(settings: Settings, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
    """The next offset to be written in each partition, confirmed by reading (never below the reported end)."""
    if not partitions:
        return {}
    consumer = make_consumer(settings)  # a private, group-less consumer: the worker's own must not move
    await consumer.start()
    try:
        ends = await find_ends(consumer, list(partitions), settings, quiet_ms=RECOVERY_QUIET_MS)
    finally:
        await consumer.stop()
    wrong = {f"{tp.topic}/{tp.partition}": (end.reported, end.end) for tp, end in ends.items() if end.broker_was_wrong}
    if wrong:
        log.info("partition ends corrected (broker reported, true): %s", wrong)
    return {tp: end.end for tp, end in ends.items()}
