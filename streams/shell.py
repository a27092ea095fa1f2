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
- a stateful processor's inputs are pipelined (`StatefulPipeline`): many subjects' effects await acknowledgement at
  once, while each input's acknowledgement, state write and input acknowledgement still happen in input order, and
  one subject's inputs never overlap;
- a processor can have subjects fall due without input (idle sessions): a timer asks it every `timeout_sweep_s`
  and publishes what is due to its own inbox, so the change is an ordinary, replayable input;
- a stateless processor with `concurrency` above 1 handles inputs side by side; with `ordered_by_subject` its
  effects still leave in input order per subject (`streams/ordering.py`), while other subjects do not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnsupportedForMessageFormatError,
)
from faust.exceptions import ProducerSendError
from faust.streams import _current_event

from streams.ordering import Place, SubjectOrder
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
#: Inputs of one stateful agent whose effects may await their acknowledgement at once (1: one input at a time).
#: On Tansu over S3 an acknowledged produce takes ~16 ms; waiting for each in turn caps an agent at ~60 inputs/s.
PIPELINE_DEPTH = 64
#: Errors about the record itself: sending it again cannot succeed.
_REFUSED = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, CorruptRecordException,
            InvalidTopicError, UnsupportedForMessageFormatError)


def sources_of(processor: Processor | StatefulProcessor) -> tuple[TopicSpec, ...]:
    """The topics a processor reads: its `sources` if it declares several, else its `source`."""
    sources: tuple[TopicSpec, ...] | None = getattr(processor, "sources", None)
    return tuple(sources) if sources else (processor.source,)


def _kafka_error(exc: BaseException) -> KafkaError | None:
    """The Kafka client's error behind `exc`: Faust wraps what the producer raises in `ProducerSendError`."""
    if isinstance(exc, KafkaError):
        return exc
    cause = exc.__cause__
    return cause if isinstance(cause, KafkaError) else None


def _headers(raw: Any) -> list[tuple[str, bytes | None]]:
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return list(raw.items())
    return [(str(k), v) for k, v in raw]


def _key_text(key: bytes | str | None) -> str | None:
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else key


def _as_json(state: State) -> Any:
    return json.loads(json.dumps(state))


class StreamShell:
    """Registers processors as Faust agents on `app` and runs them under the guarantees above."""

    def __init__(self, app: faust.App, codec: AvroCodec | None = None, *, timeout_sweep_s: float = 5.0,
                 remembered_ids: int = REMEMBERED_IDS, pipeline_depth: int = PIPELINE_DEPTH) -> None:
        self.app = app
        self.codec = codec or AvroCodec()
        self.timeout_sweep_s = timeout_sweep_s
        self.remembered_ids = remembered_ids
        if pipeline_depth < 1:
            raise ValueError("pipeline_depth must be >= 1")
        self.pipeline_depth = pipeline_depth
        self._topics: dict[str, Any] = {}
        self._orders: dict[str, SubjectOrder] = {}  # processor name -> its subjects' queues (ordered_by_subject)

    def topic(self, spec: TopicSpec) -> Any:
        if spec.name not in self._topics:
            self._topics[spec.name] = self.app.topic(
                spec.name, key_serializer="raw", value_serializer="raw", partitions=spec.partitions
            )
        return self._topics[spec.name]

    def register(self, processor: Processor) -> None:
        """Run a stateless processor; with a `concurrency` attribute above 1, that many actors share its input
        (the workflow task worker: attempts that wait on I/O run side by side). Inputs then finish out of order,
        and Faust commits only offsets below every unfinished one, so the guarantees hold. A processor that also sets
        `ordered_by_subject` (the recogniser stage) gets its effects published in input order per subject."""

        async def run(stream: Any) -> None:
            async for event in stream.events():
                await self._until_done(processor.name, event.message, self.process, processor, event.message)
                del event  # hold nothing while waiting for the next one (streams/faust_fixes.py, FIX(a'))

        run.__qualname__ = run.__name__ = processor.name
        concurrency = int(getattr(processor, "concurrency", 1))
        if concurrency > 1 and getattr(processor, "ordered_by_subject", False):
            self._orders[processor.name] = SubjectOrder()
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
            if self.pipeline_depth == 1:
                async for event in stream.events():
                    await self._until_done(processor.name, event.message, self.process_stateful, processor, table,
                                           event.message)
                    del event  # hold nothing while waiting for the next one (streams/faust_fixes.py, FIX(a'))
                return
            pipeline = StatefulPipeline(self, processor, table, self.pipeline_depth)
            try:
                async for event in stream.events():
                    await self._until_done(processor.name, event.message, pipeline.take, event)
                    del event
            finally:
                await pipeline.stop()

        run.__qualname__ = run.__name__ = processor.name
        self.app.agent(channel, name=f"switchboard.{processor.name}")(run)
        if isinstance(processor, Sweeping):
            sweeping = processor

            async def sweep() -> None:
                await self.sweep(sweeping, table)

            sweep.__qualname__ = sweep.__name__ = f"{processor.name}_sweep"
            self.app.timer(self.timeout_sweep_s, name=f"switchboard.{processor.name}.sweep")(sweep)
        return table

    async def _until_done(self, name: str, message: Any, step: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run `step` for one input until it completes, however often it fails.

        Bad input and failing handlers are dead-lettered inside the step, and publishing waits out the broker, so
        what reaches here is unexpected (a bug, a state store that cannot be written). Letting it escape would crash
        the agent, and Faust would then acknowledge the input as its stream closes: the input would be lost. Trying
        again holds up this partition, visibly (log and lag), and loses nothing; effects of a partial try are sent
        again with the same ids, which readers drop.
        """
        delay = 0.5
        while True:
            try:
                await step(*args)
                return
            except Exception:
                log.exception("processor %s could not finish %s/%s/%s; trying again in %.1fs (the input stays "
                              "unacknowledged)", name, message.topic, message.partition, message.offset, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S * 6)

    async def sweep(self, processor: Sweeping, table: Any) -> int:
        """Publish what `processor.sweep` says is due for the subjects in this worker's active table partitions.

        Runs between inputs on the worker's event loop; what it publishes is consumed and applied like any input, so
        state only ever changes in `process_stateful`. A subject whose sweep raises is logged and skipped.
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
        """Handle one Kafka message: decode, handle, publish the effects (or a dead letter) and wait for the broker.
        Never raises for bad input or a failing handler.

        For an `ordered_by_subject` processor the input takes its place in its subject's queue right after decoding
        (no await before it, so places follow the input order) and publishes only after the input before it."""
        headers = _headers(message.headers)
        letter = functools.partial(self._letter, processor, message, headers)
        try:
            event = decode_event(message.value, headers, self.codec, processor.source.value_schema)
        except DecodeError as exc:
            await self.publish([letter(str(exc), "DecodeError")])
            return
        order = self._orders.get(processor.name)
        subject = event.subject or _key_text(message.key)  # the key partitions the topic, so it orders too
        place = order.enter(subject) if order is not None and subject else None
        try:
            await self._handle_and_publish(processor, event, letter, place)
        finally:
            if place is not None:
                place.leave()  # also when cancelled or failing: the subject's next input must not wait forever

    async def _handle_and_publish(self, processor: Processor, event: Any,
                                  letter: Callable[..., tuple[TopicSpec, KafkaRecord]], place: Place | None) -> None:
        try:
            emits = processor.handle(event)
            if inspect.isawaitable(emits):  # a stage that calls a model is async
                emits = await emits
            records = [(emit.topic, encode_event(emit.event, self.codec)) for emit in emits]
        except Exception as exc:  # a failing handler must not stop the other sessions
            log.exception("processor %s failed on event %s", processor.name, event.id)
            reason = f"processor {processor.name} failed on event {event.id}: {type(exc).__name__}: {exc}"
            records = [letter(reason, type(exc).__name__)]
        if place is not None:
            await place.ready()
        await self.publish(records, letter=letter)

    async def process_stateful(self, processor: StatefulProcessor, table: Any, message: Any) -> None:
        """Handle one Kafka message of a stateful processor: step from the subject's state, publish the effects and
        wait for the broker, and only then write the new state record. A crash before the write redelivers the
        input, which steps again from the same state to the same effects (same ids), so it is harmless."""
        subject, records, record = self._apply(processor, table, message)
        headers = _headers(message.headers)
        await self.publish(records, letter=functools.partial(self._letter, processor, message, headers))
        if subject is not None:
            table[subject] = record

    def _apply(self, processor: StatefulProcessor, table: Any,
               message: Any) -> tuple[str | None, list[tuple[TopicSpec, KafkaRecord]], dict[str, Any] | None]:
        """One input: the subject whose record to write (None: write nothing), the effects (or dead letter) to
        publish, and the subject's new record."""
        headers = _headers(message.headers)
        schema = next((spec.value_schema for spec in sources_of(processor) if spec.name == message.topic),
                      processor.source.value_schema)
        try:
            event = decode_event(message.value, headers, self.codec, schema)
        except DecodeError as exc:
            return None, [self._letter(processor, message, headers, str(exc), "DecodeError")], None
        subject = event.subject
        if not subject:
            return None, [self._letter(processor, message, headers,
                                       f"processor {processor.name} keeps state per subject, and event {event.id} "
                                       "has none (set the CloudEvents subject / Kafka key)", "MissingSubject")], None
        record = table.get(subject)
        applied: dict[str, list[int]] = dict(record["at"]) if record is not None else {}
        last = applied.get(message.topic)
        if last is not None and last[0] == message.partition and message.offset <= last[1]:
            log.info("skipping %s/%s/%s: already applied to %s", message.topic, message.partition,
                     message.offset, subject)
            return None, [], None
        applied[message.topic] = [message.partition, message.offset]
        seen: list[str] = list(record.get("seen", ())) if record is not None else []
        if record is not None and event.id in seen:
            # The same event again at a new offset: an upstream processor was restarted and re-emitted what it had
            # already sent (same derived id). Its effects are out already; applying it again would be a second turn.
            log.info("skipping %s/%s/%s: event %s was already applied to %s", message.topic, message.partition,
                     message.offset, event.id, subject)
            return subject, [], {**record, "at": applied}
        seen = [*seen, event.id][-self.remembered_ids:]
        state: State = record["state"] if record is not None else processor.initial(subject)
        try:
            new_state, emits = processor.step(state, event)
            stored = _as_json(new_state)  # fail here, not in the table, if it is not JSON
            out = [(emit.topic, encode_event(emit.event, self.codec)) for emit in emits]
        except Exception as exc:  # a failing step must not stop the other subjects
            log.exception("processor %s failed on event %s", processor.name, event.id)
            reason = f"processor {processor.name} failed on event {event.id}: {type(exc).__name__}: {exc}"
            return subject, [self._letter(processor, message, headers, reason, type(exc).__name__)], \
                {"state": dict(state), "at": applied, "seen": seen}
        if not out and stored == (record["state"] if record is not None else _as_json(processor.initial(subject))):
            # Nothing happened (an input addressed to someone else, a stale signal): no changelog record. Should the
            # input come again, the step again does nothing.
            return None, [], None
        return subject, out, {"state": stored, "at": applied, "seen": seen}

    async def publish(self, records: Sequence[tuple[TopicSpec, KafkaRecord]], *,
                      letter: Callable[..., tuple[TopicSpec, KafkaRecord]] | None = None) -> None:
        """Send `records` in order and wait until the broker has acknowledged every one.

        A send that fails is sent again, the same record, until acknowledged, with backoff: the input stays
        unacknowledged meanwhile, which is the back-pressure (an unreachable broker, object storage down behind
        Tansu, which answers UnknownError, a Kafka client that gives up on a request). At worst a record goes out
        twice, and readers drop the second by its id. A record the broker refuses for what it is (too large, say)
        would fail forever: it is replaced by `letter(reason, error)`, the input's dead letter, or, with no input
        to blame (a sweep), logged and dropped.
        """
        await self.confirm([(spec, record, await self._send(spec, record)) for spec, record in records], letter=letter)

    async def confirm(self, pending: Sequence[tuple[TopicSpec, KafkaRecord, Any]], *,
                      letter: Callable[..., tuple[TopicSpec, KafkaRecord]] | None = None) -> None:
        """Wait until every sent record of `pending` (spec, record, future of its acknowledgement) is acknowledged,
        sending again what fails; see `publish`."""
        lettered = False
        for spec, record, future in pending:
            refused = await self._acknowledged(spec, record, future)
            if refused is None:
                continue
            reason = (f"the broker refused an effect for topic {spec.name}: {type(refused).__name__}: {refused}; "
                      "the input's effects are incomplete")
            if letter is None or lettered:
                log.error("%s; dropped (%s)", reason, "already dead-lettered" if lettered else "no input to blame")
                continue
            log.error("%s; dead-lettering the input", reason)
            lettered = True
            dead = letter(reason, type(refused).__name__)
            if await self._acknowledged(*dead, await self._send(*dead)) is None:
                continue
            # The input itself is as large as the effect: keep its position, not its bytes.
            dead = letter(f"{reason}; the input's value is left out of this letter (too large), read it at the "
                          "topic, partition and offset given here", type(refused).__name__, keep_value=False)
            if await self._acknowledged(*dead, await self._send(*dead)) is not None:
                log.error("the dead letter was refused too; dropped")

    async def _acknowledged(self, spec: TopicSpec, record: KafkaRecord, future: Any) -> KafkaError | None:
        """Wait for `future`, sending `record` again while it fails; None once acknowledged, or the error if the
        broker refuses the record itself."""
        delay = 0.1
        while True:
            try:
                await future
                return None
            except (KafkaError, ProducerSendError) as exc:
                error = _kafka_error(exc)
                if isinstance(error, _REFUSED):
                    return error
                if error is None:
                    raise
                log.warning("publishing to %s failed (%s: %s); sending it again in %.1fs", spec.name,
                            type(error).__name__, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)
                future = await self._send(spec, record)

    async def _send(self, spec: TopicSpec, record: KafkaRecord) -> Any:
        """Hand `record` to the producer; the future of its acknowledgement (failed at once if the producer refuses
        the record itself, e.g. over `max_request_size`). Waits while the producer cannot take it."""
        delay = 0.1
        while True:
            try:
                return await self.topic(spec).send(key=record.key, value=record.value, headers=record.headers)
            except (KafkaError, ProducerSendError) as exc:
                error = _kafka_error(exc)
                if isinstance(error, _REFUSED):
                    refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                    refused.set_exception(error)
                    return refused
                if error is None:
                    raise
                log.warning("publishing to %s failed (%s: %s); retrying in %.1fs", spec.name, type(error).__name__,
                            error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)

    def _letter(self, processor: Processor | StatefulProcessor, message: Any,
                headers: list[tuple[str, bytes | None]], reason: str, error: str, *,
                keep_value: bool = True) -> tuple[TopicSpec, KafkaRecord]:
        """The dead letter for `message` (with its original bytes unless `keep_value` is false)."""
        log.warning("dead-lettering %s/%s/%s: %s", message.topic, message.partition, message.offset, reason)
        timestamp = getattr(message, "timestamp", None)
        letter = dead_letter(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value if keep_value else None,
            headers=headers,
            timestamp_ms=int(timestamp * 1000) if timestamp else None,
            reason=reason,
            error=error,
            processor=processor.name,
        )
        return catalog.DEAD_LETTERS, encode_event(letter, self.codec)


@dataclass(eq=False)
class _InFlight:
    """An input whose effects are sent and not yet all acknowledged, with the state record to write after them."""

    event: Any
    subject: str | None
    record: dict[str, Any] | None
    sent: list[tuple[TopicSpec, KafkaRecord, Any]]
    letter: Callable[..., tuple[TopicSpec, KafkaRecord]]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class _StateView:
    """The table as the next input must see it: records not yet written (their effects are in flight) first."""

    def __init__(self, table: Any, unwritten: Mapping[str, dict[str, Any]]) -> None:
        self.table = table
        self.unwritten = unwritten

    def get(self, subject: str) -> Any:
        record = self.unwritten.get(subject)
        return record if record is not None else self.table.get(subject)


class StatefulPipeline:
    """One stateful agent's inputs, handled without waiting for each one's acknowledgements in turn.

    An input is stepped at once from the state its subject will have (`_StateView`), its effects are handed to the
    producer, and the agent takes the next input. A drain task then, strictly in input order: waits until the
    input's effects are acknowledged (sending again what fails, as `publish` does), writes its state record, and
    only then acknowledges the input, so the committed offset still never runs ahead of effects or state. Inputs of
    one subject never overlap: an input whose subject has one in flight is sent only after that one is confirmed,
    so a session's effects keep their order even when the broker fails a request and a send is repeated.

    A crash loses only unwritten records and unacknowledged inputs; those inputs come again and step from the last
    written state to the same effects (same ids), exactly as without the pipeline.
    """

    def __init__(self, shell: StreamShell, processor: StatefulProcessor, table: Any, depth: int) -> None:
        self.shell = shell
        self.processor = processor
        self.table = table
        self.depth = depth
        self.items: deque[_InFlight] = deque()
        self.unwritten: dict[str, dict[str, Any]] = {}
        self.latest: dict[str, _InFlight] = {}  # per subject, its last input in flight
        self.view = _StateView(table, self.unwritten)
        self._drainer: asyncio.Task[None] | None = None

    async def take(self, event: Any) -> None:
        """Step one input and send its effects; returns once the agent may take the next input."""
        message = event.message
        subject, records, record = self.shell._apply(self.processor, self.view, message)
        before = self.latest.get(subject) if subject is not None else None
        if before is not None:
            await asyncio.shield(before.done)  # keep the subject's effects in order
        sent = [(spec, rec, await self.shell._send(spec, rec)) for spec, rec in records]
        headers = _headers(message.headers)
        item = _InFlight(event, subject, record, sent,
                         functools.partial(self.shell._letter, self.processor, message, headers))
        message.incref()  # acknowledged by the drain, once its effects and state are stored (not by the iterator)
        self.items.append(item)
        if subject is not None:
            self.latest[subject] = item
            if record is not None:
                self.unwritten[subject] = record
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain(), name=f"{self.processor.name}-drain")
        while len(self.items) >= self.depth:
            await asyncio.shield(self.items[0].done)

    async def _drain(self) -> None:
        while self.items:
            item = self.items[0]
            await self._finish(item)
            self.items.popleft()
            if item.subject is not None:
                if self.latest.get(item.subject) is item:
                    del self.latest[item.subject]
                if item.record is not None and self.unwritten.get(item.subject) is item.record:
                    del self.unwritten[item.subject]
            item.event.message.ack(self.shell.app.consumer)
            item.done.set_result(None)

    async def _finish(self, item: _InFlight) -> None:
        """Effects acknowledged, then the state record written; tried again (logged) until it succeeds."""
        await self.shell._until_done(self.processor.name, item.event.message, self._store, item)

    async def _store(self, item: _InFlight) -> None:
        if item.sent:
            await self.shell.confirm(item.sent, letter=item.letter)
            item.sent = []  # a retry writes the state record only
        if item.subject is not None and item.record is not None:
            # Faust puts a table write in the changelog partition of the current event: the input's own.
            token = _current_event.set(weakref.ref(item.event))
            try:
                self.table[item.subject] = item.record
            finally:
                _current_event.reset(token)

    async def stop(self) -> None:
        """The agent stops: drop what is in flight, unacknowledged, so that it is delivered again."""
        if self._drainer is not None and not self._drainer.done():
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
        self.items.clear()
        self.unwritten.clear()
        self.latest.clear()
