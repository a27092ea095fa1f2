"""The one stream-processing shell every processor runs in: decode, handle, publish, then acknowledge.

The guarantees are made here, once:
- bad input (undecodable, invalid, or a handler that raises) goes to `bus.deadletters` with the reason, the original
  bytes and topic/partition/offset; the worker goes on with the next message;
- effects are published and acknowledged by the broker before the input message is acknowledged, so a committed
  offset never runs ahead of its effects (at-least-once);
- effect ids derive from the input's id, so a redelivered input produces identical events, which readers drop
  (effectively once);
- a stateful processor's state lives in a Faust Table together with the offset of the last input applied to it
  (per input topic) and the ids of the last events applied, written after the effects are acknowledged: a
  redelivered input (offset not after the recorded one) is skipped, and so is the same event re-emitted at a new
  offset by a restarted upstream stage (id already applied), so state is never applied twice and a restart resumes
  exactly where the state says;
- a processor can have subjects fall due without input (idle sessions): a timer asks it every `timeout_sweep_s`
  and publishes what is due to its own inbox, so the change is an ordinary, replayable input.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.streams import _current_event

from topics import catalog
from topics.binding import KafkaRecord, decode_event, encode_event
from topics.codec import AvroCodec
from topics.deadletter import dead_letter
from topics.errors import DecodeError, TopicError
from topics.event import utcnow
from topics.processor import Processor, State, StatefulProcessor, Sweeping
from topics.spec import TopicSpec

log = logging.getLogger(__name__)
_MAX_BACKOFF_S = 5.0
#: Ids of the last events applied to a subject, kept in its state record. An upstream processor that restarts
#: re-emits at most what it sent since its last offset commit (`broker_commit_every` = 100 messages, or 1 s), and only
#: a subject's own events count here, so a subject never sees that many of its own events replayed.
REMEMBERED_IDS = 64


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


def _as_json(state: State) -> Any:
    return json.loads(json.dumps(state))


class StreamShell:
    """Registers processors as Faust agents on `app` and runs them under the guarantees above."""

    def __init__(self, app: faust.App, codec: AvroCodec | None = None, *, timeout_sweep_s: float = 5.0,
                 remembered_ids: int = REMEMBERED_IDS) -> None:
        self.app = app
        self.codec = codec or AvroCodec()
        self.timeout_sweep_s = timeout_sweep_s
        self.remembered_ids = remembered_ids
        self._topics: dict[str, Any] = {}

    def topic(self, spec: TopicSpec) -> Any:
        if spec.name not in self._topics:
            self._topics[spec.name] = self.app.topic(
                spec.name, key_serializer="raw", value_serializer="raw", partitions=spec.partitions
            )
        return self._topics[spec.name]

    def register(self, processor: Processor) -> None:
        """Run a stateless processor; with a `concurrency` attribute above 1, that many actors share its input
        (the workflow task worker: attempts that wait on I/O run side by side). Inputs then finish out of order,
        and Faust commits only offsets below every unfinished one, so the guarantees hold."""

        async def run(stream: Any) -> None:
            async for event in stream.events():
                await self.process_batch(processor, [event.message])
                del event  # hold nothing while waiting for the next one (streams/faust_fixes.py, FIX(a'))

        run.__qualname__ = run.__name__ = processor.name
        concurrency = int(getattr(processor, "concurrency", 1))
        self.app.agent(self.topic(processor.source), name=f"switchboard.{processor.name}",
                       concurrency=concurrency)(run)

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
            async for event in stream.events():
                await self.process_stateful_batch(processor, table, [event])
                del event  # hold nothing while waiting for the next one (streams/faust_fixes.py, FIX(a'))

        run.__qualname__ = run.__name__ = processor.name
        self.app.agent(channel, name=f"switchboard.{processor.name}")(run)
        if isinstance(processor, Sweeping):
            sweeping = processor

            async def sweep() -> None:
                await self.sweep(sweeping, table)

            sweep.__qualname__ = sweep.__name__ = f"{processor.name}_sweep"
            self.app.timer(self.timeout_sweep_s, name=f"switchboard.{processor.name}.sweep")(sweep)
        return table

    async def sweep(self, processor: Sweeping, table: Any) -> int:
        """Publish what `processor.sweep` says is due for the subjects in this worker's active table partitions.

        Runs between inputs on the worker's event loop; what it publishes is consumed and applied like any input, so
        state only ever changes in `process_stateful_batch`. A subject whose sweep raises is logged and skipped.
        """
        now = utcnow()
        records: list[tuple[TopicSpec, KafkaRecord]] = []
        for subject, record in list(table.items()):
            if not record:
                continue
            try:
                records.extend((emit.topic, encode_event(emit.event, self.codec))
                               for emit in processor.sweep(str(subject), record["state"], now))
            except Exception:
                log.exception("sweeping %s of %s failed", subject, getattr(processor, "name", processor))
        if records:
            log.info("%s: %d subject(s) due", getattr(processor, "name", processor), len(records))
            await self.publish(records)
        return len(records)

    def register_all(self, processors: Iterable[Processor | StatefulProcessor]) -> None:
        for processor in processors:
            if isinstance(processor, StatefulProcessor):
                self.register_stateful(processor)
            else:
                self.register(processor)

    async def process(self, processor: Processor, message: Any) -> None:
        """Handle one Kafka message; never raises for bad input."""
        await self.process_batch(processor, [message])

    async def process_batch(self, processor: Processor, messages: Sequence[Any]) -> None:
        """Handle messages fetched together: every handler runs (async ones concurrently, so a served model sees
        them as one batch), then all effects and dead letters are published and acknowledged at once."""
        handled = await asyncio.gather(*(self._handle(processor, message) for message in messages))
        await self.publish([record for records in handled for record in records])

    async def _handle(self, processor: Processor, message: Any) -> list[tuple[TopicSpec, KafkaRecord]]:
        headers = _headers(message.headers)
        try:
            event = decode_event(message.value, headers, self.codec, processor.source.value_schema)
        except DecodeError as exc:
            return [self._letter(processor, message, headers, str(exc), "DecodeError")]
        try:
            emits = processor.handle(event)
            if inspect.isawaitable(emits):  # a stage that calls a model is async
                emits = await emits
            return [(emit.topic, encode_event(emit.event, self.codec)) for emit in emits]
        except Exception as exc:  # a failing handler must not stop the other sessions
            log.exception("processor %s failed on event %s", processor.name, event.id)
            reason = f"processor {processor.name} failed on event {event.id}: {type(exc).__name__}: {exc}"
            return [self._letter(processor, message, headers, reason, type(exc).__name__)]

    async def process_stateful_batch(self, processor: StatefulProcessor, table: Any, events: Sequence[Any]) -> None:
        """Handle Faust events fetched together, in order: each step sees the state the previous one left (kept here
        until the batch is done), then all effects are published and acknowledged, and only then are the new state
        records written to the table. A crash before the writes redelivers the whole batch, which is harmless.

        Faust puts a table write in the changelog (and local store) partition of the *current event*; in a batch
        that is whichever came last, so each subject's write is made with one of its own events as the current one.
        """
        records: list[tuple[TopicSpec, KafkaRecord]] = []
        written: dict[str, dict[str, Any]] = {}
        carriers: dict[str, Any] = {}
        for event in events:
            subject, out = self._apply(processor, table, written, event.message)
            records.extend(out)
            if subject is not None:
                carriers[subject] = event
        await self.publish(records)
        token = _current_event.set(None)
        try:
            for subject, record in written.items():
                _current_event.set(weakref.ref(carriers[subject]))
                table[subject] = record
        finally:
            _current_event.reset(token)

    def _apply(self, processor: StatefulProcessor, table: Any, written: dict[str, dict[str, Any]],
               message: Any) -> tuple[str | None, list[tuple[TopicSpec, KafkaRecord]]]:
        """One input: its subject and effects (or dead letter) to publish; the subject's new record goes into
        `written`."""
        headers = _headers(message.headers)
        schema = next((spec.value_schema for spec in sources_of(processor) if spec.name == message.topic),
                      processor.source.value_schema)
        try:
            event = decode_event(message.value, headers, self.codec, schema)
        except DecodeError as exc:
            return None, [self._letter(processor, message, headers, str(exc), "DecodeError")]
        subject = event.subject
        if not subject:
            return None, [self._letter(processor, message, headers,
                                       f"processor {processor.name} keeps state per subject, and event {event.id} "
                                       "has none (set the CloudEvents subject / Kafka key)", "MissingSubject")]
        record = written[subject] if subject in written else table.get(subject)
        applied: dict[str, list[int]] = dict(record["at"]) if record is not None else {}
        last = applied.get(message.topic)
        if last is not None and last[0] == message.partition and message.offset <= last[1]:
            log.info("skipping %s/%s/%s: already applied to %s", message.topic, message.partition,
                     message.offset, subject)
            return None, []
        applied[message.topic] = [message.partition, message.offset]
        seen: list[str] = list(record.get("seen", ())) if record is not None else []
        if record is not None and event.id in seen:
            # The same event again at a new offset: an upstream processor was restarted and re-emitted what it had
            # already sent (same derived id). Its effects are out already; applying it again would be a second turn.
            log.info("skipping %s/%s/%s: event %s was already applied to %s", message.topic, message.partition,
                     message.offset, event.id, subject)
            written[subject] = {**record, "at": applied}
            return subject, []
        seen = [*seen, event.id][-self.remembered_ids:]
        state: State = record["state"] if record is not None else processor.initial(subject)
        try:
            new_state, emits = processor.step(state, event)
            stored = _as_json(new_state)  # fail here, not in the table, if it is not JSON
            out = [(emit.topic, encode_event(emit.event, self.codec)) for emit in emits]
        except Exception as exc:  # a failing step must not stop the other subjects
            log.exception("processor %s failed on event %s", processor.name, event.id)
            reason = f"processor {processor.name} failed on event {event.id}: {type(exc).__name__}: {exc}"
            written[subject] = {"state": dict(state), "at": applied, "seen": seen}
            return subject, [self._letter(processor, message, headers, reason, type(exc).__name__)]
        if not out and stored == (record["state"] if record is not None else _as_json(processor.initial(subject))):
            # Nothing happened (an input addressed to someone else, a stale signal): no changelog record. Should the
            # input come again, the step again does nothing.
            return None, []
        written[subject] = {"state": stored, "at": applied, "seen": seen}
        return subject, out

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

    def _letter(self, processor: Processor | StatefulProcessor, message: Any,
                headers: list[tuple[str, bytes | None]], reason: str, error: str) -> tuple[TopicSpec, KafkaRecord]:
        """The dead letter for `message`, to publish with the batch's effects."""
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
        return catalog.DEAD_LETTERS, encode_event(letter, self.codec)
