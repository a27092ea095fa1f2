"""Loads for the Switchboard benchmarks: events offered at a fixed rate through the real bus, and an observer that
follows their effects, so lost, duplicated and late effects can be counted.

A load sends events whose effects carry the cause's id (`ce_causationid`); `Observer` reads the effect topic from
the beginning and records, per cause, when its first effect arrived and which distinct effect ids it got. Two loads:
`DialogueLoad` (turns to the echo agent, replies back) and `WorkflowLoad` (runs of a four-task workflow, each
answered by its run's final transition).

Times are `time.monotonic()` in this process: the send timestamp is taken just before the send, the arrival time
when the observer's consumer hands the effect over, so a latency is "produced -> effect consumed".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from infra.bus.clients import producer as make_producer
from infra.bus.reading import read_topic
from infra.config import Settings
from infra.testing import embedded_settings, running_stack
from topics import AvroCodec, DecodeError, Event, catalog, decode_event, encode_event
from topics.binding import KafkaRecord
from topics.spec import TopicSpec

SEND_RETRY_S = 0.2


@dataclass
class Sent:
    """One event offered by a load."""

    id: str
    key: str           # its subject (session), for the state check
    number: int        # its position among its subject's events, from 1
    sent_at: float     # monotonic, just before the first send attempt
    produced_ms: int   # wall-clock ms of the first send attempt (the record's timestamp, if that attempt landed)
    acked_at: float | None = None
    attempts: int = 0


@dataclass
class Effect:
    """An effect as seen by the observer."""

    id: str
    cause: str
    arrived_at: float   # monotonic
    produced_ms: int    # the record's timestamp (set by the worker's producer)
    text: str


class Load(Protocol):
    """What the benchmarks need from a kind of load."""

    name: str
    input_topic: TopicSpec
    effect_topic: TopicSpec
    sent: dict[str, Sent]
    failed_attempts: int

    def next_record(self, index: int) -> tuple[str, str, int, KafkaRecord]:
        """Event `index` of the load: (event id, subject, number within the subject, record)."""
        ...

    def cause_of(self, effect: Event) -> str | None:
        """The id of the load event `effect` answers, if it is one of ours."""
        ...

    def state_errors(self, effects: dict[str, list[Effect]]) -> list[str]:
        """Where the processors' state disagrees with what it would be had nothing crashed."""
        ...

    def text_of(self, effect: Event) -> str:
        """What of `effect` the state check needs."""
        ...

    @property
    def workers(self) -> dict[str, Any]:
        """Worker settings the load needs deployed (e.g. extra agent folders with its workflows)."""
        ...


_TURN_NUMBER = re.compile(r"\(turn (\d+)\)$")


class DialogueLoad:
    """Dialogue turns for the echo agent, round-robin over `sessions`; the echo agent counts each session's turns,
    so its replies show whether session state stayed exact (numbers 1..N, none missing or repeated)."""

    name = "dialogue"
    input_topic = catalog.DIALOGUE_TURNS
    effect_topic = catalog.DIALOGUE_REPLIES

    def __init__(self, sessions: int = 40, prefix: str = "bench") -> None:
        self.sessions = sessions
        self.prefix = prefix
        self.codec = AvroCodec()
        self.sent: dict[str, Sent] = {}
        self.failed_attempts = 0

    def next_record(self, index: int) -> tuple[str, str, int, KafkaRecord]:
        session, number = f"{self.prefix}-{index % self.sessions}", index // self.sessions + 1
        event = Event(type=self.input_topic.value_schema, source="/bench/chaos", subject=session,
                      data={"session_id": session, "agent": "echo", "text": f"t{number}"})
        return event.id, session, number, encode_event(event, self.codec)

    def cause_of(self, effect: Event) -> str | None:
        return effect.causationid

    def text_of(self, effect: Event) -> str:
        return str(effect.data.get("text", ""))

    @property
    def workers(self) -> dict[str, Any]:
        return {}

    def state_errors(self, effects: dict[str, list[Effect]]) -> list[str]:
        numbers: dict[str, list[int]] = defaultdict(list)
        expected: dict[str, int] = defaultdict(int)
        for sent in self.sent.values():
            expected[sent.key] += 1
        for cause, seen in effects.items():
            turn = self.sent.get(cause)
            if turn is None:
                continue
            match = _TURN_NUMBER.search(seen[0].text)
            if match is None:
                return [f"reply {seen[0].id} does not carry a turn number: {seen[0].text!r}"]
            numbers[turn.key].append(int(match.group(1)))
        errors = []
        for session, count in sorted(expected.items()):
            got = sorted(numbers.get(session, []))
            if got != list(range(1, len(got) + 1)):
                errors.append(f"{session}: turn numbers {_ranges(got)} for {count} turns")
        return errors


BENCH_AGENTS = Path(__file__).resolve().parent / "agents"


class WorkflowLoad:
    """Runs of `bench_diamond` (bench/agents/bench_flows: start -> double, plus_ten -> join), each with its own
    input; a run is answered by its final transition on `workflow.transitions`, whose output shows whether the run's
    state stayed exact ((a + b) * 3 + 10; a task result lost or applied twice would change it or stall the run)."""

    name = "workflow"
    input_topic = catalog.WORKFLOW_REQUESTS
    effect_topic = catalog.WORKFLOW_TRANSITIONS
    workflow = "bench_diamond"

    def __init__(self) -> None:
        self.codec = AvroCodec()
        self.sent: dict[str, Sent] = {}
        self.failed_attempts = 0
        self.runs: dict[str, str] = {}          # run id -> request event id
        self.inputs: dict[str, int] = {}        # request event id -> a (b = a + 1)

    @property
    def workers(self) -> dict[str, Any]:
        return {"agent_dirs": [BENCH_AGENTS]}

    def next_record(self, index: int) -> tuple[str, str, int, KafkaRecord]:
        from agents.workflows.processors import request_event

        run_id = str(uuid.uuid4())
        event = request_event(run_id, self.workflow, {"a": index, "b": index + 1}, requester="bench",
                              source="/bench/chaos")
        self.runs[run_id] = event.id
        self.inputs[event.id] = index
        return event.id, run_id, 1, encode_event(event, self.codec)

    def cause_of(self, effect: Event) -> str | None:
        if effect.data.get("task") is not None or effect.data.get("to_state") not in ("succeeded", "failed"):
            return None
        return self.runs.get(str(effect.data.get("run_id")))

    def text_of(self, effect: Event) -> str:
        return json.dumps({"state": effect.data.get("to_state"), **json.loads(effect.data.get("detail") or "{}")})

    def state_errors(self, effects: dict[str, list[Effect]]) -> list[str]:
        errors = []
        for cause, seen in effects.items():
            a = self.inputs.get(cause)
            if a is None:
                continue
            expected = {"state": "succeeded", "output": {"total": (2 * a + 1) * 3 + 10}, "error": None}
            got = json.loads(seen[0].text)
            if got != expected:
                errors.append(f"run of request {cause}: {got}, expected {expected}")
        return errors


def _ranges(numbers: list[int]) -> str:
    out: list[str] = []
    for n in numbers:
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ",".join(out) or "none"


class Producer:
    """Offers the load's events at `rate` per second on a fixed schedule (it catches up after a stall), each sent
    without waiting for the previous ack and retried (same event, same id) until the broker acknowledges it."""

    def __init__(self, settings: Settings, load: Load, rate: float) -> None:
        self.settings = settings
        self.load = load
        self.rate = rate
        self.index = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        producer = load_producer(self.settings)
        await producer.start()
        try:
            start = time.monotonic()
            while not stop.is_set():
                delay = start + self.index / self.rate - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
                event_id, key, number, record = self.load.next_record(self.index)
                sent = Sent(event_id, key, number, time.monotonic(), int(time.time() * 1000))
                self.load.sent[event_id] = sent
                task = asyncio.create_task(self._send(producer, sent, record))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                self.index += 1
                if len(self._tasks) > 20_000:  # the bus is down: stop offering more than can be retried
                    await asyncio.sleep(0.05)
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
        finally:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, sent: Sent, record: KafkaRecord) -> None:
        await send_until_acked(producer, self.load, sent, record)


def load_producer(settings: Settings) -> AIOKafkaProducer:
    """The producer loads send with: a short request timeout, so a send to a dead broker fails and is retried."""
    return make_producer(settings, request_timeout_ms=3000, retry_backoff_ms=200)


async def send_until_acked(producer: AIOKafkaProducer, load: Load, sent: Sent, record: KafkaRecord) -> None:
    """Send one event of `load` to its input topic, again and again (same event, same id) until the broker
    acknowledges it; `sent` records the attempts and the time of the acknowledgement."""
    while True:
        sent.attempts += 1
        try:
            await producer.send_and_wait(load.input_topic.name, record.value, key=record.key, headers=record.headers)
            sent.acked_at = time.monotonic()
            return
        except KafkaError:
            load.failed_attempts += 1  # sent again as the same event: readers drop the duplicate
            await asyncio.sleep(SEND_RETRY_S)


@dataclass
class Observer:
    """Follows the load's effect topic from the beginning; per cause, every effect seen (redeliveries included)."""

    settings: Settings
    load: Load
    effects: dict[str, list[Effect]] = field(default_factory=dict)   # cause -> effects in arrival order
    first: dict[str, float] = field(default_factory=dict)             # cause -> arrival of its first effect
    records: int = 0
    on_effect: Callable[[Effect], None] | None = None

    async def run(self) -> None:
        codec = AvroCodec()
        async for record in read_topic(self.settings, self.load.effect_topic.name, follow=True):
            arrived = time.monotonic()
            try:
                event = decode_event(record.value, record.headers, codec)
            except DecodeError:
                continue
            cause = self.load.cause_of(event)
            if cause is None or cause not in self.load.sent:
                continue
            self.records += 1
            effect = Effect(event.id, cause, arrived, record.timestamp, self.load.text_of(event))
            self.effects.setdefault(cause, []).append(effect)
            self.first.setdefault(cause, arrived)
            if self.on_effect is not None:
                self.on_effect(effect)

    def unanswered(self, sent_before: float) -> int:
        """Load events sent before `sent_before` (monotonic) with no effect yet."""
        return sum(1 for s in self.load.sent.values() if s.sent_at < sent_before and s.id not in self.first)

    def duplicates(self) -> tuple[int, int]:
        """(duplicate effects: extra distinct effect ids for one cause, redelivered duplicates: same id again)."""
        distinct_extra = redelivered = 0
        for seen in self.effects.values():
            ids = {e.id for e in seen}
            distinct_extra += len(ids) - 1
            redelivered += len(seen) - len(ids)
        return distinct_extra, redelivered


async def until(check: Callable[[], bool], timeout_s: float, every_s: float = 0.05) -> bool:
    """Poll `check` until it holds (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every_s)
    return True


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of `values` (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class Spread:
    """How a set of latencies spreads: nearest-rank percentiles and the maximum (NaN when there are none)."""

    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(percentile(values, 50), percentile(values, 90), percentile(values, 99),
                   max(values, default=float("nan")))


@contextlib.asynccontextmanager
async def throwaway_stack(prefix: str, workers: int, *, worker_settings: dict[str, Any] | None = None,
                          **overrides: Any) -> AsyncIterator[Settings]:
    """A fresh embedded stack (SeaweedFS, Tansu on its S3, `workers` Faust workers) on free ports in a temporary
    directory; every process is stopped and the directory removed afterwards, whatever happens. `overrides` are
    settings sections (`kafka={"bootstrap_servers": ...}` uses that bus instead of starting Tansu), and
    `worker_settings` the workers section's other settings."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        settings = embedded_settings(Path(tmp), workers={**(worker_settings or {}), "count": workers}, **overrides)
        async with running_stack(settings=settings):
            yield settings


T = TypeVar("T")


def run_stopping_on_sigterm(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, except that SIGTERM (`timeout`, `kill`, a CI job cancelled) cancels `main` like Ctrl-C,
    so the `finally` that stops its throwaway stack runs. A plain SIGTERM ended the process there and left the
    stack's broker, object store and workers running (they run in sessions of their own)."""

    async def guarded() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await main
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        raise SystemExit(128 + signal.SIGTERM) from None

