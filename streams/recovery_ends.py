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


def search_timeout_s(settings: Settings) -> float:
    """How long the end search may take. Faust waits `broker_request_timeout` (kafka.request_timeout_ms) for each
    recovery step and, when a step takes longer, gave up recovering for good (fix (g) in `streams.faust_fixes` now
    starts it again instead): the search, with its consumer's start and stop, must end well inside that."""
    request_s = settings.kafka.request_timeout_ms / 1000
    return max(request_s / 2, request_s - 10)


async def true_highwaters(settings: Settings, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
    """The next offset to be written in each partition as found by reading (see `find_ends`). A partition whose end
    could not be confirmed within `search_timeout_s` ends where its records end: on Tansu that is a hole a failed
    object write left at the end of the partition, and recovering up to the broker's watermark would wait forever
    for records that do not exist."""
    if not partitions:
        return {}
    consumer = make_consumer(settings)  # a private, group-less consumer: the worker's own must not move
    await consumer.start()
    try:
        ends = await find_ends(consumer, list(partitions), settings, timeout_s=search_timeout_s(settings),
                               quiet_ms=RECOVERY_QUIET_MS)
    finally:
        await consumer.stop()
    wrong = {f"{tp.topic}/{tp.partition}": (end.reported, end.end) for tp, end in ends.items() if end.broker_was_wrong}
    if wrong:
        log.info("partition ends corrected (broker reported, true): %s", wrong)
    cut = {f"{tp.topic}/{tp.partition}": (end.end, end.highwater) for tp, end in ends.items() if not end.confirmed}
    if cut:
        log.warning("partition ends not confirmed within %gs (records end at, broker's high watermark): %s; the "
                    "records in between could not be read (a hole the broker left when an object-storage write "
                    "failed, or a very slow broker): recovering up to where the records end",
                    search_timeout_s(settings), cut)
    return {tp: end.end for tp, end in ends.items()}
