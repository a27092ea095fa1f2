"""Reading topics to their end, correctly, on any Kafka-protocol broker.

Tansu 0.6.0 reports the log-end offset as the *base offset of the last record batch + 1*: with batching producers
it is too low (a 10-record batch at 1..10 reports 2). So no code here trusts `end_offsets()` alone: the true end is
the last fetched offset + 1 after reading the final batch, found by fetching from the reported end until the broker
has nothing more. On a correct broker this costs one empty fetch.

On S3 storage Tansu's reported end can lag far behind (it stayed at 1 while a partition grew to 10), which would
mean reading the whole partition. The fetch response's high watermark was right there (and with batching producers
too: 500 where `end_offsets()` said 485), so after the first fetch we jump to it, and a partition's end is confirmed
once its records up to that high watermark have been read. Waiting for "nothing more for a while" instead declared
ends too early when a fetch was slow (on S3 a fetch lists every batch object of the partition: seconds on a busy
machine), and a table recovered to such an end lost its last state changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from infra.bus.clients import consumer as make_consumer
from infra.config import Settings
from topics.errors import BusError


@dataclass(frozen=True)
class PartitionEnd:
    """A partition's end: `end` the next offset to be written as found by reading, `reported` what the broker's
    ListOffsets said. `confirmed` is False when the search ran out of time before reading up to the fetch high
    watermark (`highwater`): `end` is then what could be read. On Tansu that is a hole: a produce whose object write
    failed (object storage down) advanced the watermark, and its records will never exist (docs/bus-facts.md)."""

    partition: TopicPartition
    end: int
    reported: int
    confirmed: bool = True
    highwater: int | None = None

    @property
    def broker_was_wrong(self) -> bool:
        return self.end != self.reported


_JUMP_MIN = 500  # records; below this, reading on is cheaper than a seek and a new fetch


def _quiet_ms(settings: Settings) -> int:
    # Long enough for one fetch round trip at the end of a partition, including the broker's long-poll wait. A
    # consumer behind asks for longer waits (infra.bus.fetch_wait); ends do not depend on this window when the
    # broker sends high watermarks, and an empty getmany only means "ask again".
    return settings.kafka.effective_fetch_max_wait_ms + 300


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of `topic`; `BusError` when the topic does not exist."""
    await consumer.topics()  # refreshes metadata, so a topic created a moment ago is seen
    ids = consumer.partitions_for_topic(topic)
    if not ids:
        raise BusError(f"topic {topic} does not exist on the bus (create it: `switchboard topics create`)")
    return [TopicPartition(topic, p) for p in sorted(ids)]


async def find_ends(consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition], settings: Settings,
                    timeout_s: float = 30.0, quiet_ms: int | None = None) -> dict[TopicPartition, PartitionEnd]:
    """The true end of each partition (next offset to be written), as of now.

    A partition's end is known once its records up to the high watermark of a fetch response have been read. For a
    broker that sends no high watermark, the end is declared once a fetch round brings nothing more for `quiet_ms`
    (default: one fetch wait + 300 ms). After `timeout_s` the end is what has been read, marked unconfirmed (a
    hole Tansu left, or a very slow fetch). Uses (and re-assigns) `consumer`, which must not be in a group.
    """
    reported = await consumer.end_offsets(list(partitions))
    ends = {tp: PartitionEnd(tp, off, off) for tp, off in reported.items()}
    pending = [tp for tp, off in reported.items() if off > 0]
    if not pending:
        return ends
    consumer.assign(pending)
    for tp in pending:
        consumer.seek(tp, reported[tp] - 1)  # the last batch starts here; read it and whatever follows
    last: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + timeout_s
    quiet = quiet_ms if quiet_ms is not None else _quiet_ms(settings)
    while pending and time.monotonic() < deadline:
        batch = await consumer.getmany(*pending, timeout_ms=quiet)
        for tp, records in batch.items():
            if records:
                last[tp] = max(last.get(tp, -1), records[-1].offset)
                highwater = consumer.highwater(tp)
                if highwater is not None and highwater - 1 > last[tp] + _JUMP_MIN:
                    consumer.seek(tp, highwater - 1)  # skip ahead; the loop still reads to the real end
        done = set()
        for tp in pending:
            highwater = consumer.highwater(tp)
            if tp not in last:
                continue  # its final batch has not come yet
            if highwater is not None:
                if last[tp] + 1 >= highwater:
                    done.add(tp)
            elif not batch:  # no high watermark from this broker: nothing more for a quiet round is the end
                done.add(tp)
        pending = [tp for tp in pending if tp not in done]
    for tp, offset in last.items():
        ends[tp] = PartitionEnd(tp, max(offset + 1, reported[tp]), reported[tp], confirmed=tp not in pending,
                                highwater=consumer.highwater(tp))
    for tp in pending:
        if tp not in last:
            # Nothing came from the reported end's batch although the broker's high watermark is past it: on Tansu
            # that batch is a hole (its object write failed), so the records end before it. Waiting for it would
            # wait forever; a reader that trusted the reported end would too.
            highwater = consumer.highwater(tp)
            end = reported[tp] - 1 if highwater is not None and highwater >= reported[tp] else reported[tp]
            ends[tp] = PartitionEnd(tp, end, reported[tp], confirmed=False, highwater=highwater)
    return ends


async def topic_ends(settings: Settings, topic: str) -> dict[int, PartitionEnd]:
    """True end of every partition of `topic`, with a throwaway consumer."""
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        ends = await find_ends(consumer, await topic_partitions(consumer, topic), settings)
    finally:
        await consumer.stop()
    return {tp.partition: end for tp, end in ends.items()}


async def read_topic(settings: Settings, topic: str, *, follow: bool = False, from_end: bool = False,
                     idle_timeout_s: float | None = None) -> AsyncIterator[ConsumerRecord]:
    """Records of `topic` in per-partition order, from the beginning (or the true end), without a group.

    Without `follow` it stops at the end as of the start of the call; with `follow` it waits for new records
    until cancelled (or until `idle_timeout_s` passes with nothing new).
    """
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, topic)
        # Following from the beginning needs no end; finding one is also unreliable there, because a topic that is
        # written more often than every `_quiet_ms` never goes quiet.
        ends: dict[TopicPartition, int] = {}
        if from_end or not follow:
            ends = {tp: e.end for tp, e in (await find_ends(consumer, partitions, settings)).items()}
        consumer.assign(partitions)
        if from_end:
            for tp in partitions:
                consumer.seek(tp, ends[tp])
        else:
            await consumer.seek_to_beginning(*partitions)
        remaining = set() if follow else {tp for tp in partitions if not from_end and ends[tp] > 0}
        idle_since = time.monotonic()
        while follow or remaining:
            batch = await consumer.getmany(timeout_ms=_quiet_ms(settings))
            if batch:
                idle_since = time.monotonic()
            elif idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                return
            for tp, records in batch.items():
                for record in records:
                    if not follow and record.offset >= ends[tp]:
                        remaining.discard(tp)
                        break
                    yield record
                    if not follow and record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await asyncio.shield(consumer.stop())
