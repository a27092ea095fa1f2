"""Tools for people at a terminal: publish JSON as typed events, read topics readably, chat through the bus."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import getpass
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from infra.bus.clients import consumer as make_consumer
from infra.bus.clients import producer as make_producer
from infra.bus.reading import find_ends, read_topic
from infra.config import Settings
from topics import catalog
from topics.binding import decode_event, encode_event
from topics.codec import AvroCodec
from topics.errors import DecodeError, EncodeError
from topics.event import Event
from topics.spec import TopicSpec

CLI_SOURCE = "/switchboard/cli"


def _principal() -> str:
    try:
        return f"user:{getpass.getuser()}"
    except Exception:
        return "user:unknown"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


# -- produce ---------------------------------------------------------------------------------------------------
def parse_payloads(lines: Iterable[str]) -> Iterable[tuple[int, dict[str, Any]]]:
    """JSON objects, one per line (blank lines skipped); errors name the line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise EncodeError(f"line {number}: not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise EncodeError(f"line {number}: expected a JSON object with the fields of the topic's schema")
        yield number, value


async def produce(settings: Settings, spec: TopicSpec, payloads: Iterable[tuple[int, dict[str, Any]]], *,
                  subject_field: str | None, subject: str | None, principal: str | None,
                  correlation_id: str | None) -> list[Event]:
    """Validate every payload first (nothing is sent if one is bad), then publish them in order."""
    codec = AvroCodec()
    events = []
    for number, payload in payloads:
        key = subject or (str(payload.get(subject_field)) if subject_field and subject_field in payload else None)
        event = Event(type=spec.value_schema, source=CLI_SOURCE, data=payload, subject=key,
                      principal=principal or _principal(), correlationid=correlation_id or "")
        try:
            events.append((event, encode_event(event, codec)))
        except EncodeError as exc:
            raise EncodeError(f"line {number}: {exc}") from None
    producer = make_producer(settings)
    await producer.start()
    try:
        for _, record in events:
            await producer.send_and_wait(spec.name, record.value, key=record.key, headers=record.headers)
    finally:
        await producer.stop()
    return [event for event, _ in events]


def default_subject_field(spec: TopicSpec) -> str | None:
    """The payload field that is the key, when the key is described as one (e.g. 'session id' -> session_id)."""
    candidate = spec.key.replace(" ", "_")
    fields = {f["name"] for f in AvroCodec().store.current(spec.value_schema).definition["fields"]}
    return candidate if candidate in fields else None


# -- tail ------------------------------------------------------------------------------------------------------
def format_record(record: ConsumerRecord, codec: AvroCodec, *, as_json: bool) -> str:
    where = f"{record.topic}/{record.partition}@{record.offset}"
    try:
        event = decode_event(record.value, record.headers, codec)
    except DecodeError as exc:
        if as_json:
            return json.dumps({"position": where, "error": str(exc), "value": _jsonable(record.value)})
        return f"{where}  !! undecodable: {exc}"
    if as_json:
        return json.dumps({"position": where, **_jsonable(event.envelope()), "data": _jsonable(dict(event.data))},
                          ensure_ascii=False)
    stamp = event.time.strftime("%H:%M:%S.%f")[:-3]
    data = json.dumps(_jsonable(dict(event.data)), ensure_ascii=False)
    return (f"{where}  {stamp}  {event.type}  subject={event.subject}  id={event.id[:8]}  "
            f"corr={event.correlationid[:8]}  {data}")


async def tail(settings: Settings, spec: TopicSpec, out: TextIO, *, follow: bool, from_end: bool,
               as_json: bool, limit: int | None = None) -> int:
    codec = AvroCodec()
    count = 0
    async for record in read_topic(settings, spec.name, follow=follow, from_end=from_end):
        print(format_record(record, codec, as_json=as_json), file=out, flush=True)
        count += 1
        if limit is not None and count >= limit:
            break
    return count


# -- chat ------------------------------------------------------------------------------------------------------
@dataclass
class ChatSession:
    """A conversation through the bus: turns out on dialogue.turns, replies back from dialogue.replies.

    One reader takes every reply: those correlated with a turn (its answers, including those after a workflow it
    started or from a person it was handed to) go to that turn's `say`; other replies for this session (a person
    answering later, an idle timeout) are kept for `unprompted`. Replies are deduplicated by event id, so a
    redelivered turn never shows its reply twice.
    """

    settings: Settings
    agent: str
    session_id: str
    reply_timeout_s: float = 30.0
    quiet_s: float = 1.0

    def __post_init__(self) -> None:
        self.codec = AvroCodec()
        self.seen: set[str] = set()
        self.sent_at = 0.0
        self.first_reply_ms = 0.0
        self._producer = make_producer(self.settings)
        self._consumer: AIOKafkaConsumer = make_consumer(self.settings)
        self._answers: dict[str, asyncio.Queue[Event]] = {}
        self._unprompted: asyncio.Queue[Event] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ChatSession:
        await self._producer.start()
        await self._consumer.start()
        await self._consumer.topics()
        partitions = self._consumer.partitions_for_topic(catalog.DIALOGUE_REPLIES.name) or set()
        tps = [TopicPartition(catalog.DIALOGUE_REPLIES.name, p) for p in sorted(partitions)]
        # Start at the true end (the broker's reported one can lag far behind on Tansu); replies are matched by
        # correlation id anyway, so starting early would only cost reading.
        ends = await find_ends(self._consumer, tps, self.settings)
        self._consumer.assign(tps)
        for tp in tps:
            self._consumer.seek(tp, ends[tp].end)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._consumer.stop()
        await self._producer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for rec in records:
                    try:
                        event = decode_event(rec.value, rec.headers, self.codec)
                    except DecodeError:
                        continue
                    if event.id in self.seen:
                        continue
                    answers = self._answers.get(event.correlationid)
                    if answers is not None:
                        self.seen.add(event.id)
                        answers.put_nowait(event)
                    elif event.data.get("session_id") == self.session_id:
                        self.seen.add(event.id)
                        self._unprompted.put_nowait(event)

    async def say(self, text: str) -> tuple[Event, list[Event]]:
        """Send a turn and wait for its reply (or replies, when an agent answers with several)."""
        turn = Event(type=catalog.DIALOGUE_TURNS.value_schema, source=CLI_SOURCE, subject=self.session_id,
                     principal=_principal(),
                     data={"session_id": self.session_id, "agent": self.agent, "text": text, "channel": "cli"})
        answers: asyncio.Queue[Event] = asyncio.Queue()
        self._answers[turn.id] = answers
        try:
            record = encode_event(turn, self.codec)
            await self._producer.send_and_wait(catalog.DIALOGUE_TURNS.name, record.value, key=record.key,
                                               headers=record.headers)
            self.sent_at = time.monotonic()
            return turn, await self._collect(answers)
        finally:
            del self._answers[turn.id]

    async def _collect(self, answers: asyncio.Queue[Event]) -> list[Event]:
        try:
            first = await asyncio.wait_for(answers.get(), self.reply_timeout_s)
        except TimeoutError:
            raise TimeoutError(
                f"no reply from agent {self.agent!r} within {self.reply_timeout_s:.0f}s; is a worker running "
                "(`switchboard status`) and is the agent name right? (A session handed to a person stays quiet "
                "until they answer: `switchboard handoff list`.)"
            ) from None
        self.first_reply_ms = (time.monotonic() - self.sent_at) * 1000
        replies = [first]
        # After the first reply, wait a moment for more (a workflow's answer comes a few hops later).
        while True:
            try:
                replies.append(await asyncio.wait_for(answers.get(), self.quiet_s))
            except TimeoutError:
                return replies

    async def unprompted(self) -> AsyncIterator[Event]:
        """Replies for this session that answer no turn of ours: a person writing, an idle timeout; as they come."""
        while True:
            yield await self._unprompted.get()


async def _print_unprompted(conversation: ChatSession, out: TextIO) -> None:
    async for reply in conversation.unprompted():
        author = reply.data.get("author") or reply.data["agent"]
        print(f"\r{author}> {reply.data['text']}", file=out, flush=True)


async def chat(settings: Settings, agent: str, session_id: str | None, lines: Iterable[str] | None,
               out: TextIO, prompt: Callable[[], str | None] | None = None, timeout_s: float = 30.0) -> int:
    """Send each line as a turn and print the replies with their round-trip time; returns turns answered.

    Interactively, what arrives between turns (a person who took the conversation, an idle timeout) is printed as it
    comes.
    """
    session = session_id or f"cli-{uuid.uuid4().hex[:8]}"
    answered = 0
    async with ChatSession(settings, agent, session, timeout_s) as conversation:
        print(f"[session {session} with agent {agent!r}; the turn travels dialogue.turns -> worker -> "
              "dialogue.replies]", file=out, flush=True)
        source = iter(lines) if lines is not None else None
        printer = asyncio.create_task(_print_unprompted(conversation, out)) if source is None else None
        try:
            while True:
                if source is not None:
                    text = next(source, None)
                else:
                    assert prompt is not None
                    text = await asyncio.get_running_loop().run_in_executor(None, prompt)
                if text is None:
                    break
                text = text.strip()
                if not text:
                    continue
                if source is not None:
                    print(f"you> {text}", file=out, flush=True)
                turn, replies = await conversation.say(text)
                for reply in replies:
                    author = reply.data.get("author") or reply.data["agent"]
                    print(f"{author}> {reply.data['text']}   "
                          f"({conversation.first_reply_ms:.0f} ms round trip, turn {turn.id[:8]})",
                          file=out, flush=True)
                answered += 1
        finally:
            if printer is not None:
                printer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await printer
    return answered


def read_prompt() -> str | None:
    try:
        return input("you> ")
    except EOFError:
        return None


def stdin_lines() -> Iterable[str]:
    return sys.stdin
