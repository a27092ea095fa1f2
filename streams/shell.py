"""The one stream-processing shell every processor runs in: decode, handle, publish, then acknowledge.

The guarantees are made here, once:
- bad input (undecodable, invalid, or a handler that raises) goes to `bus.deadletters` with the reason, the original
  bytes and topic/partition/offset; the worker goes on with the next message;
- effects are published and acknowledged by the broker before the input message is acknowledged, so a committed
  offset never runs ahead of its effects (at-least-once);
- effect ids derive from the input's id, so a redelivered input produces identical events, which readers drop
  (effectively once);
- a stateful processor's state lives in a Faust Table together with the offset of the last input applied to it
  (per input topic),
  written after the effects are acknowledged: a redelivered input (offset not after the recorded one) is skipped,
  so state is never applied twice and a restart resumes exactly where the state says.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import faust
from aiokafka.errors import KafkaError

from topics import catalog
from topics.binding import KafkaRecord, decode_event, encode_event
from topics.codec import AvroCodec
from topics.deadletter import dead_letter
from topics.errors import DecodeError, TopicError
from topics.processor import Processor, State, StatefulProcessor
from topics.spec import TopicSpec

log = logging.getLogger(__name__)
_MAX_BACKOFF_S = 5.0


def sources_of(processor: Processor | StatefulProcessor) -> tuple[TopicSpec, ...]:
    """The topics a processor reads: its `sources` if it declares several, else its `source`."""
    sources: tuple[TopicSpec, ...] | None = getattr(processor, "sources", None)
    return tuple(sources) if sources else (processor.source,)


def _headers(raw: Any) -> list[tuple[str, bytes | None]]:
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return list(raw.items())
    return [(str(k), v) for k, v in raw]


class StreamShell:
    """Registers processors as Faust agents on `app` and runs them under the guarantees above."""

    def __init__(self, app: faust.App, codec: AvroCodec | None = None) -> None:
        self.app = app
        self.codec = codec or AvroCodec()
        self._topics: dict[str, Any] = {}

    def topic(self, spec: TopicSpec) -> Any:
        if spec.name not in self._topics:
            self._topics[spec.name] = self.app.topic(
                spec.name, key_serializer="raw", value_serializer="raw", partitions=spec.partitions
            )
        return self._topics[spec.name]

    def register(self, processor: Processor) -> None:
        async def run(stream: Any) -> None:
            async for record in stream.events():
                await self.process(processor, record.message)

        run.__qualname__ = run.__name__ = processor.name
        self.app.agent(self.topic(processor.source), name=f"switchboard.{processor.name}")(run)

    def register_stateful(self, processor: StatefulProcessor) -> Any:
        """Run `processor` with its per-subject state in a changelog-backed table; returns the table.

        A processor with `sources` reads several topics; they must be co-partitioned (same partition count, keyed by
        the same subject), so that one worker holds every event of a subject and the one table partition for it.
        """
        sources = sources_of(processor)
        partitions = {spec.partitions for spec in sources}
        if len(partitions) != 1:
            raise TopicError(f"processor {processor.name} reads {', '.join(s.name for s in sources)}, which have "
                             f"different partition counts ({sorted(partitions)}); declare them co-partitioned")
        # str keys, JSON values (the app's default value serializer).
        table = self.app.Table(f"{processor.name}-state", default=None, partitions=partitions.pop(), key_type=str)
        if len(sources) == 1:
            channel = self.topic(sources[0])
        else:
            channel = self.app.topic(*(spec.name for spec in sources), key_serializer="raw",
                                     value_serializer="raw")

        async def run(stream: Any) -> None:
            async for record in stream.events():
                await self.process_stateful(processor, table, record.message)

        run.__qualname__ = run.__name__ = processor.name
        self.app.agent(channel, name=f"switchboard.{processor.name}")(run)
        return table

    def register_all(self, processors: Iterable[Processor | StatefulProcessor]) -> None:
        for processor in processors:
            if isinstance(processor, StatefulProcessor):
                self.register_stateful(processor)
            else:
                self.register(processor)

    async def process(self, processor: Processor, message: Any) -> None:
        """Handle one Kafka message; never raises for bad input."""
        headers = _headers(message.headers)
        try:
            event = decode_event(message.value, headers, self.codec, processor.source.value_schema)
        except DecodeError as exc:
            await self._dead_letter(processor, message, headers, str(exc), "DecodeError")
            return
        try:
            emits = processor.handle(event)
            if inspect.isawaitable(emits):  # a stage that calls a model is async
                emits = await emits
            records = [(emit.topic, encode_event(emit.event, self.codec)) for emit in emits]
        except Exception as exc:  # a failing handler must not stop the other sessions
            log.exception("processor %s failed on event %s", processor.name, event.id)
            reason = f"processor {processor.name} failed on event {event.id}: {type(exc).__name__}: {exc}"
            await self._dead_letter(processor, message, headers, reason, type(exc).__name__)
            return
        await self.publish(records)

    async def process_stateful(self, processor: StatefulProcessor, table: Any, message: Any) -> None:
        """Handle one message for a stateful processor; never raises for bad input."""
        headers = _headers(message.headers)
        schema = next((spec.value_schema for spec in sources_of(processor) if spec.name == message.topic),
                      processor.source.value_schema)
        try:
            event = decode_event(message.value, headers, self.codec, schema)
        except DecodeError as exc:
            await self._dead_letter(processor, message, headers, str(exc), "DecodeError")
            return
        subject = event.subject
        if not subject:
            await self._dead_letter(processor, message, headers,
                                    f"processor {processor.name} keeps state per subject, and event {event.id} "
                                    "has none (set the CloudEvents subject / Kafka key)", "MissingSubject")
            return
        record = table.get(subject)
        applied: dict[str, list[int]] = dict(record["at"]) if record is not None else {}
        last = applied.get(message.topic)
        if last is not None and last[0] == message.partition and message.offset <= last[1]:
            log.info("skipping %s/%s/%s: already applied to %s", message.topic, message.partition,
                     message.offset, subject)
            return
        applied[message.topic] = [message.partition, message.offset]
        state: State = record["state"] if record is not None else processor.initial(subject)
        try:
            new_state, emits = processor.step(state, event)
            stored = json.loads(json.dumps(new_state))  # fail here, not in the table, if it is not JSON
            records = [(emit.topic, encode_event(emit.event, self.codec)) for emit in emits]
        except Exception as exc:  # a failing step must not stop the other subjects
            log.exception("processor %s failed on event %s", processor.name, event.id)
            reason = f"processor {processor.name} failed on event {event.id}: {type(exc).__name__}: {exc}"
            await self._dead_letter(processor, message, headers, reason, type(exc).__name__)
            table[subject] = {"state": dict(state), "at": applied}
            return
        await self.publish(records)
        table[subject] = {"state": stored, "at": applied}

    async def publish(self, records: Sequence[tuple[TopicSpec, KafkaRecord]]) -> None:
        """Send and wait for every broker acknowledgement; retry while the bus is unreachable (back-pressure)."""
        futures = [await self._send(spec, record) for spec, record in records]
        for future in futures:
            await future

    async def _send(self, spec: TopicSpec, record: KafkaRecord) -> Any:
        delay = 0.1
        while True:
            try:
                return await self.topic(spec).send(key=record.key, value=record.value, headers=record.headers)
            except KafkaError as exc:
                log.warning("publishing to %s failed (%s); retrying in %.1fs", spec.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)

    async def _dead_letter(self, processor: Processor | StatefulProcessor, message: Any,
                           headers: list[tuple[str, bytes | None]], reason: str, error: str) -> None:
        log.warning("dead-lettering %s/%s/%s: %s", message.topic, message.partition, message.offset, reason)
        timestamp = getattr(message, "timestamp", None)
        letter = dead_letter(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value,
            headers=headers,
            timestamp_ms=int(timestamp * 1000) if timestamp else None,
            reason=reason,
            error=error,
            processor=processor.name,
        )
        await self.publish([(catalog.DEAD_LETTERS, encode_event(letter, self.codec))])
