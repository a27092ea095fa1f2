"""Dialogue turns through the real bus: turns/s and turn latency with many concurrent sessions, beside the raw bus
limit measured on the same stack.

Each agent gets a fresh throwaway embedded stack (SeaweedFS, Tansu on its S3, `--workers` Faust workers, free
ports; fresh because Tansu's S3 fetch slows down as partitions grow), which serves first the raw bus benchmark
(`bench.bus_throughput`'s aiokafka measurements with its tuned settings: produce-to-consume msg/s and single-message
round trips; or `--bus-figures`, the JSON of an earlier run), then the agent's load:
- `echo`, the one-hop baseline: dialogue.turns -> echo agent -> dialogue.replies;
- `customer_service`, a policy-driven agent: dialogue.turns -> recogniser -> agent.customer_service.understood ->
  dialogue agent -> dialogue.replies; an order lookup adds workflow.requests -> the workflow ->
  agent.customer_service.signals -> dialogue agent. Each session talks through a scripted conversation (greeting,
  FAQ, the order-status form and its workflow, a fallback, a direct order lookup, goodbye) again and again.

Closed loop (default): `--sessions` users (200), each sending its next turn as soon as the reply to its last one
arrived. Open loop (`--rate`): turns offered at a fixed rate, each to the session that has waited longest since its
last reply (a fresh session when all are waiting for one), so arrivals do not depend on how fast replies come;
`--sessions` then defaults to the rate rounded up, so each session speaks about once a second and a short run still
goes round the conversation.

A turn's latency runs from just before it is sent until this process has consumed its reply. Every reply is checked
against the one the script expects (a session whose reply was wrong or late goes on as a new user, since its state
is unknown). Turns sent in the `--seconds` window after `--warmup-s` are measured; turns/s counts the replies that
arrived within the window. The path of each turn (the topics its effects passed through, with the record
timestamps) is read back afterwards and shows where the time goes.

    python -m bench.dialogue_turns                            # closed loop, 200 sessions, both agents, 2 workers
    python -m bench.dialogue_turns --sessions 10 --agent customer_service
    python -m bench.dialogue_turns --rate 50 --seconds 30     # open loop at 50 turns/s
    python -m bench.dialogue_turns --bus-figures bus.json     # raw bus figures from `bench.bus_throughput --json`
    python -m bench.dialogue_turns --storage memory           # a bare Tansu with a memory:// log as the bus
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaProducer, TopicPartition

from agents.echo import answer as echo_answer
from bench.bus_throughput import Figure, aiokafka_latency, aiokafka_throughput, memory_broker
from bench.loads import (
    Effect,
    Observer,
    Producer,
    Sent,
    Spread,
    load_producer,
    percentile,
    run_stopping_on_sigterm,
    send_until_acked,
    throwaway_stack,
)
from infra.bus.clients import consumer as make_consumer
from infra.bus.reading import find_ends, read_topic
from infra.config import Settings
from infra.embedded import EmbeddedStack
from topics import AvroCodec, DecodeError, Event, KafkaRecord, catalog, decode_event, encode_event
from topics.spec import TopicSpec

SOURCE = "/bench/dialogue-turns"
BUS_CLIENT, BUS_CONFIG = "aiokafka", "tuned"  # the workers' client, with the embedded stack's fetch wait
CONSUMED = "consumed here"
BENCH = "bench (this process)"


# -- what the users say ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Turn:
    """One thing a user says, the one reply expected, and what kind of turn it is (for the per-kind figures)."""

    kind: str
    text: str
    reply: str


#: A session's turn by its index in the session (0-based): what is said and what must come back.
Script = Callable[[int], Turn]

GREETING = "您好,我是您的数字助理,请描述您的需求"
#: One conversation with customer_service; each session repeats it. It ends with goodbye, so each repetition starts
#: a fresh conversation (first greeting again). tests/unit/test_bench_scripts.py runs it through the pure core.
CONVERSATION: tuple[Turn, ...] = (
    Turn("greeting", "hi", GREETING),
    Turn("faq", "What are your opening hours?",
         "We are open Monday to Friday 9:00-18:00 and Saturday 10:00-14:00 (CET)."),
    Turn("form: ask", "where is my order?", "Sure. What is your order number? It looks like AB1234."),
    Turn("form: fill + workflow", "it is AB1234", "Order AB1234 was delivered by DHL on 2026-11-20."),
    Turn("fallback", "my cat sits on the keyboard",
         "Sorry, I did not understand that. You can ask about an order, opening hours, returns, shipping or payment, "
         "report a problem, or ask for a person."),
    Turn("faq", "How much is shipping?",
         "Shipping is free above 50 EUR, otherwise 4.90 EUR. Orders arrive in 2-4 business days."),
    Turn("workflow", "Track my parcel CD5678", "Order CD5678 is in transit; UPS expects to deliver it on 2026-11-28."),
    Turn("greeting", "hello", "Hello again! What else can I do for you?"),
    Turn("goodbye", "thanks, that's all", "Thank you for contacting us. Goodbye!"),
)
ECHO_GREETING_EVERY = 10


def customer_service_turn(index: int) -> Turn:
    return CONVERSATION[index % len(CONVERSATION)]


def echo_turn(index: int) -> Turn:
    """A greeting every tenth turn, otherwise a numbered message; the echo agent counts turns, so every reply also
    checks that the session's state is exact."""
    number = index + 1
    if index % ECHO_GREETING_EVERY == 0:
        return Turn("greeting", "hello", echo_answer("hello", number))
    text = f"message {number}"
    return Turn("echo", text, echo_answer(text, number))


SCRIPTS: dict[str, Script] = {"echo": echo_turn, "customer_service": customer_service_turn}


# -- the load ----------------------------------------------------------------------------------------------------
@dataclass
class Session:
    id: str
    turns: int = 0  # turns sent so far


class ScriptedTurns:
    """Turns for one agent from a script, per session; a `bench.loads.Load`, so `Observer` and `Producer` drive it.

    Each turn gets a future that the reply resolves (`on_effect`, called by the observer). For the open loop,
    `next_record` takes the session idle longest (or opens a fresh one when every session waits for a reply) and
    queues it again once its reply came as expected.
    """

    input_topic = catalog.DIALOGUE_TURNS
    effect_topic = catalog.DIALOGUE_REPLIES

    def __init__(self, agent: str, script: Script, sessions: int = 0) -> None:
        self.name = agent
        self.agent = agent
        self.script = script
        self.prefix = f"bench-{agent}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.codec = AvroCodec()
        self.sent: dict[str, Sent] = {}
        self.failed_attempts = 0
        self.expected: dict[str, Turn] = {}
        self.replies: dict[str, asyncio.Future[Effect]] = {}
        self.sessions_opened = 0
        self.idle: deque[Session] = deque(self.open_session() for _ in range(sessions))
        self._open_loop_waiting: dict[str, Session] = {}

    def open_session(self) -> Session:
        self.sessions_opened += 1
        return Session(f"{self.prefix}-{self.sessions_opened}")

    def turn(self, session: Session) -> tuple[str, int, KafkaRecord]:
        """The session's next turn: (event id, its number in the session, the record)."""
        said = self.script(session.turns)
        session.turns += 1
        event = Event(type=self.input_topic.value_schema, source=SOURCE, subject=session.id,
                      data={"session_id": session.id, "agent": self.agent, "text": said.text, "channel": "bench",
                            "locale": None})
        self.expected[event.id] = said
        self.replies[event.id] = asyncio.get_running_loop().create_future()
        return event.id, session.turns, encode_event(event, self.codec)

    def next_record(self, index: int) -> tuple[str, str, int, KafkaRecord]:
        session = self.idle.popleft() if self.idle else self.open_session()
        event_id, number, record = self.turn(session)
        self._open_loop_waiting[event_id] = session
        return event_id, session.id, number, record

    def cause_of(self, effect: Event) -> str | None:
        turn = effect.data.get("in_reply_to")
        return str(turn) if turn else None

    def text_of(self, effect: Event) -> str:
        return str(effect.data.get("text", ""))

    @property
    def workers(self) -> dict[str, Any]:
        return {}

    def correct(self, effect: Effect) -> bool:
        return effect.text == self.expected[effect.cause].reply

    def on_effect(self, effect: Effect) -> None:
        future = self.replies.get(effect.cause)
        if future is None or future.done():
            return  # a second reply, or one that came after its user gave up
        future.set_result(effect)
        session = self._open_loop_waiting.pop(effect.cause, None)
        if session is not None and self.correct(effect):
            self.idle.append(session)

    def state_errors(self, effects: dict[str, list[Effect]]) -> list[str]:
        """Turns whose first reply is not the one the script expects."""
        return [f"{self.sent[cause].key} turn {self.sent[cause].number} ({self.expected[cause].text!r}): expected "
                f"{self.expected[cause].reply!r}, got {seen[0].text!r}"
                for cause, seen in effects.items() if cause in self.expected and not self.correct(seen[0])]


async def closed_loop(settings: Settings, load: ScriptedTurns, sessions: int, stop: asyncio.Event,
                      timeout_s: float) -> None:
    """`sessions` users, each sending its next turn when its reply arrived, until `stop`; a user whose reply is
    wrong or later than `timeout_s` goes on as a new session."""
    producer = load_producer(settings)
    await producer.start()
    try:
        await asyncio.gather(*(_user(producer, load, stop, timeout_s) for _ in range(sessions)))
    finally:
        await producer.stop()


async def _user(producer: AIOKafkaProducer, load: ScriptedTurns, stop: asyncio.Event, timeout_s: float) -> None:
    session = load.open_session()
    while not stop.is_set():
        event_id, number, record = load.turn(session)
        sent = load.sent[event_id] = Sent(event_id, session.id, number, time.monotonic(), int(time.time() * 1000))
        await send_until_acked(producer, load, sent, record)
        try:
            reply = await asyncio.wait_for(load.replies[event_id], sent.sent_at + timeout_s - time.monotonic())
        except TimeoutError:
            reply = None
        if reply is None or not load.correct(reply):
            session = load.open_session()


# -- the bus around the load -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BusLimit:
    """The raw bus on the same stack: produce-to-consume throughput and single-message round trips."""

    source: str
    messages_per_s: float
    round_trip_p50_ms: float
    round_trip_p99_ms: float

    @classmethod
    def from_figures(cls, figures: list[Figure], source: str) -> BusLimit:
        values = {(f.client, f.config, f.metric, f.unit): f.value for f in figures}
        try:
            return cls(source, values[BUS_CLIENT, BUS_CONFIG, "produce-to-consume", "msg/s"],
                       values[BUS_CLIENT, BUS_CONFIG, "round trip p50", "ms"],
                       values[BUS_CLIENT, BUS_CONFIG, "round trip p99", "ms"])
        except KeyError as missing:
            raise ValueError(f"{source}: no {BUS_CLIENT} {BUS_CONFIG} figure {missing}; run bench.bus_throughput "
                             f"with --client aiokafka or both") from None


async def measure_bus(settings: Settings, messages: int, samples: int) -> BusLimit:
    """`bench.bus_throughput`'s aiokafka measurements (tuned) on this stack."""
    bootstrap = settings.bootstrap_servers
    figures = [*await aiokafka_throughput(bootstrap, BUS_CONFIG, messages),
               *await aiokafka_latency(bootstrap, BUS_CONFIG, samples)]
    return BusLimit.from_figures(figures, f"measured on this stack: {BUS_CLIENT} {BUS_CONFIG}, {messages} messages, "
                                          f"{samples} round trips")


def bus_limit_from_file(path: Path) -> BusLimit:
    """The raw bus figures of an earlier `python -m bench.bus_throughput --json FILE`."""
    record = json.loads(path.read_text())
    figures = [Figure(**f) for f in record["figures"]]
    return BusLimit.from_figures(figures, f"{path}: {record.get('bus')}, {record.get('date')}")


async def bus_records(settings: Settings) -> dict[str, int]:
    """Records on each topic (true ends, summed over partitions); the benchmarks' own `bench.*` topics left out."""
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        topics = sorted(t for t in await consumer.topics() if not t.startswith("bench."))
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = await find_ends(consumer, partitions, settings)
    finally:
        await consumer.stop()
    totals: dict[str, int] = defaultdict(int)
    for tp, end in ends.items():
        totals[tp.topic] += end.end
    return dict(totals)


async def caused_by(settings: Settings, topics: list[TopicSpec]) -> dict[str, list[tuple[str, int, str]]]:
    """Every event on `topics`, by the event that caused it: cause id -> [(topic, record timestamp ms, id)]."""
    codec = AvroCodec()
    children: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    for spec in topics:
        async for record in read_topic(settings, spec.name):
            try:
                event = decode_event(record.value, record.headers, codec)
            except DecodeError:
                continue
            if event.causationid:
                children[event.causationid].append((spec.name, record.timestamp, event.id))
    return children


def path_of(children: dict[str, list[tuple[str, int, str]]], turn_id: str) -> list[tuple[str, int]]:
    """The topics a turn's effects passed through on the way to its reply, with the time each record was produced;
    empty if the chain is incomplete."""
    path: list[tuple[str, int]] = []
    node = turn_id
    for _ in range(8):
        found = children.get(node)
        if not found:
            return []
        step = next((c for c in found if c[0] == catalog.DIALOGUE_REPLIES.name), found[0])
        path.append((step[0], step[1]))
        if step[0] == catalog.DIALOGUE_REPLIES.name:
            return path
        node = step[2]
    return []


def _listener(port: int) -> int | None:
    """The pid listening on `port`, if this machine shows it."""
    try:
        return next((c.pid for c in psutil.net_connections(kind="tcp")
                     if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid), None)
    except psutil.Error:
        return None


def cpu_seconds(settings: Settings) -> dict[str, float]:
    """CPU time used so far (user + system) by each process of the stack (a bus on this machine included), and by
    this one."""
    used: dict[str, float] = {}
    processes = [(r.name, r.pid) for r in EmbeddedStack(settings).records()] + [(BENCH, os.getpid())]
    if not settings.kafka.embedded:
        pid = _listener(int(settings.bootstrap_servers.split(",")[0].rsplit(":", 1)[1]))
        if pid is not None:
            processes.append(("bus", pid))
    for name, pid in processes:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        used[name] = times.user + times.system
    return used


# -- figures -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadShape:
    sessions: int = 200
    rate: float | None = None  # None: closed loop
    seconds: float = 20.0
    warmup_s: float = 5.0
    timeout_s: float = 30.0
    slice_s: float = 5.0
    count_records: bool = True

    def describe(self) -> str:
        if self.rate is None:
            return f"closed loop, {self.sessions} sessions"
        return f"open loop, {self.rate:g} turns/s over {self.sessions}+ sessions"


@dataclass
class KindFigures:
    kind: str
    turns: int
    p50_ms: float
    p99_ms: float
    hops_p50_ms: list[tuple[str, float]]  # (where the turn's effect got to, median ms since the previous point)


@dataclass
class Slice:
    """A part of the measured window, by reply arrival: the stack slows down as its partitions grow."""

    start_s: float      # since the window start
    turns_per_s: float
    p50_ms: float


@dataclass
class AgentFigures:
    agent: str
    load: str
    seconds: float
    turns_per_s: float          # replies that arrived within the measured window, per second
    latency_ms: Spread
    measured: int               # turns sent within the window
    answered: int               # ... answered within the timeout
    wrong: int                  # ... whose first reply is not the expected one
    timeouts: int               # ... not answered within the timeout
    extra_replies: int          # distinct replies beyond the first to one turn
    redelivered: int            # the same reply again (dropped by id)
    send_retries: int
    sessions: int               # sessions used (fresh ones after a wrong or late reply included)
    turns_sent: int             # in the whole run, warm-up and drain included
    dead_letters: int | None
    records_per_turn: dict[str, float]
    records_at_end: dict[str, int]
    cores_used: dict[str, float]  # CPU seconds per second of the window, per process
    slices: list[Slice] = field(default_factory=list)
    kinds: list[KindFigures] = field(default_factory=list)
    wrong_examples: list[str] = field(default_factory=list)
    bus: BusLimit | None = None

    @property
    def ok(self) -> bool:
        return self.wrong == 0 and self.timeouts == 0 and self.extra_replies == 0 and not self.dead_letters

    def summary(self) -> str:
        lat, bus = self.latency_ms, self.bus
        lines = [f"{self.agent}: {self.load}, {self.seconds:g} s measured"]
        if bus is not None:
            lines.append(f"  raw bus ({bus.source}): {bus.messages_per_s:,.0f} msg/s produce-to-consume, "
                         f"round trip p50 {bus.round_trip_p50_ms:.1f} ms, p99 {bus.round_trip_p99_ms:.1f} ms")
        lines.append(f"  {self.turns_per_s:,.1f} turns/s")
        if bus is not None:
            lines[-1] += (f" = {self.turns_per_s / bus.messages_per_s:.4f} x raw bus msg/s "
                          f"(one turn per {bus.messages_per_s / max(self.turns_per_s, 1e-9):,.0f} raw messages)")
        lines.append(f"  latency p50 {lat.p50:,.0f} ms  p90 {lat.p90:,.0f} ms  p99 {lat.p99:,.0f} ms  "
                     f"max {lat.max:,.0f} ms")
        if bus is not None:
            lines[-1] += (f"  (p50 = {lat.p50 / bus.round_trip_p50_ms:.1f} x raw round trip p50, "
                          f"p99 = {lat.p99 / bus.round_trip_p99_ms:.1f} x raw p99)")
        dead = "?" if self.dead_letters is None else str(self.dead_letters)
        lines.append(f"  {self.measured} turns measured: {self.answered} answered, {self.wrong} wrong, "
                     f"{self.timeouts} timeouts, {self.extra_replies} extra replies, {self.redelivered} redelivered, "
                     f"{self.send_retries} send retries, {dead} dead letters; {self.sessions} sessions, "
                     f"{self.turns_sent} turns in all")
        if self.slices:
            lines.append("  by slice of the window: " + ", ".join(
                f"{s.start_s:g}s {s.turns_per_s:.0f}/s p50 {_ms(s.p50_ms)}" for s in self.slices))
        if self.records_per_turn:
            total = sum(self.records_per_turn.values())
            parts = ", ".join(f"{topic} {n:.2f}" for topic, n in
                              sorted(self.records_per_turn.items(), key=lambda item: -item[1]) if n >= 0.005)
            lines.append(f"  bus records per turn {total:.2f}: {parts}")
            turns_topic = catalog.DIALOGUE_TURNS
            lines.append(f"  {turns_topic.name} holds {self.records_at_end.get(turns_topic.name, 0):,} records at the "
                         f"end ({turns_topic.partitions} partitions)")
        if self.cores_used:
            parts = ", ".join(f"{name} {cores:.2f}" for name, cores in
                              sorted(self.cores_used.items(), key=lambda item: -item[1]))
            lines.append(f"  cores busy in the window {sum(self.cores_used.values()):.2f} of {os.cpu_count()}: "
                         f"{parts}")
        if self.kinds:
            lines.append(f"  {'kind':<22} {'turns':>6} {'p50 ms':>8} {'p99 ms':>8}   path, p50 ms per hop")
            for kind in self.kinds:
                hops = "  ".join(f"-> {where} {ms:.0f}" for where, ms in kind.hops_p50_ms)
                lines.append(f"  {kind.kind:<22} {kind.turns:>6} {kind.p50_ms:>8,.0f} {kind.p99_ms:>8,.0f}   "
                             f"{hops or '(not traced)'}")
        lines.extend(f"  wrong: {example}" for example in self.wrong_examples)
        return "\n".join(lines)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f} ms"


def _short(topic: str) -> str:
    return topic.rsplit(".", 1)[-1] if topic.startswith("agent.") else topic


def _kind_figures(load: ScriptedTurns, measured: list[Sent], latency: dict[str, float],
                  children: dict[str, list[tuple[str, int, str]]]) -> list[KindFigures]:
    by_kind: dict[str, list[Sent]] = defaultdict(list)
    for sent in measured:
        if sent.id in latency:
            by_kind[load.expected[sent.id].kind].append(sent)
    figures = []
    for kind, turns in by_kind.items():
        values = [latency[s.id] for s in turns]
        hops: dict[tuple[int, str], list[float]] = defaultdict(list)
        for sent in turns:
            path = path_of(children, sent.id)
            if not path:
                continue
            points = [("sent", sent.produced_ms), *path, (CONSUMED, sent.produced_ms + latency[sent.id])]
            for index, ((_, before), (where, at)) in enumerate(pairwise(points)):
                hops[index, _short(where)].append(float(at - before))
        medians = [(where, statistics.median(ms)) for (_, where), ms in sorted(hops.items())]
        figures.append(KindFigures(kind, len(turns), percentile(values, 50), percentile(values, 99), medians))
    return figures


def _slices(arrivals: list[tuple[float, float]], start: float, end: float, slice_s: float) -> list[Slice]:
    """(arrival, latency ms) of the replies, cut into whole slices of the window [start, end) (the last one takes
    the remainder)."""
    count = max(1, int((end - start) // slice_s))
    bounds = [start + i * slice_s for i in range(count)] + [end]
    slices = []
    for at, upto in pairwise(bounds):
        latencies = [ms for arrived, ms in arrivals if at <= arrived < upto]
        slices.append(Slice(round(at - start, 1), len(latencies) / (upto - at), percentile(latencies, 50)))
    return slices


async def measure_agent(settings: Settings, agent: str, shape: LoadShape,
                        progress: Callable[[str], None] = print) -> AgentFigures:
    """Run one agent's load on a running stack and return its figures (without the raw bus limit)."""
    load = ScriptedTurns(agent, SCRIPTS[agent], sessions=shape.sessions if shape.rate is not None else 0)
    before = await bus_records(settings) if shape.count_records else {}
    observer = Observer(settings, load, on_effect=load.on_effect)
    watching = asyncio.create_task(observer.run())
    stop = asyncio.Event()
    if shape.rate is None:
        driving = asyncio.create_task(closed_loop(settings, load, shape.sessions, stop, shape.timeout_s))
    else:
        driving = asyncio.create_task(Producer(settings, load, shape.rate).run(stop))
    try:
        progress(f"{agent}: {shape.describe()}, {shape.warmup_s:g} s warm-up, then {shape.seconds:g} s measured")
        await asyncio.sleep(shape.warmup_s)  # the windows are times, not events: first fetches and joins settle
        cpu_before, window_start = cpu_seconds(settings), time.monotonic()
        await asyncio.sleep(shape.seconds)
        cpu_after, window_end = cpu_seconds(settings), time.monotonic()
        stop.set()
        await driving
        measured = [s for s in load.sent.values() if window_start <= s.sent_at < window_end]
        pending = [load.replies[s.id] for s in measured if not load.replies[s.id].done()]
        if pending:  # open loop: the replies of the last turns sent; the closed loop has waited for its own
            await asyncio.wait(pending, timeout=max(0.0, window_end + shape.timeout_s - time.monotonic()))
    finally:
        stop.set()
        await asyncio.gather(driving, return_exceptions=True)
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    after = await bus_records(settings) if shape.count_records else {}
    hops = [catalog.DIALOGUE_REPLIES]
    if agent != "echo":
        topics = catalog.agent_topics(agent)
        hops += [topics.understood, catalog.WORKFLOW_REQUESTS, topics.signals]
    children = await caused_by(settings, hops)

    latency = {s.id: 1000 * (observer.first[s.id] - s.sent_at) for s in measured
               if s.id in observer.first and observer.first[s.id] - s.sent_at <= shape.timeout_s}
    wrong = load.state_errors({s.id: observer.effects[s.id] for s in measured if s.id in latency})
    extra = redelivered = 0
    for sent in measured:
        seen = observer.effects.get(sent.id, [])
        ids = {e.id for e in seen}
        extra += max(0, len(ids) - 1)
        redelivered += len(seen) - len(ids)
    delta = {topic: after.get(topic, 0) - before.get(topic, 0) for topic in after}
    arrivals = [(arrived, 1000 * (arrived - load.sent[cause].sent_at)) for cause, arrived in observer.first.items()]
    seconds = window_end - window_start
    return AgentFigures(
        agent=agent, load=shape.describe(), seconds=round(seconds, 2),
        turns_per_s=sum(1 for arrived, _ in arrivals if window_start <= arrived < window_end) / seconds,
        latency_ms=Spread.of(list(latency.values())), measured=len(measured), answered=len(latency),
        wrong=len(wrong), timeouts=len(measured) - len(latency), extra_replies=extra, redelivered=redelivered,
        send_retries=load.failed_attempts, sessions=load.sessions_opened, turns_sent=len(load.sent),
        dead_letters=delta.get(catalog.DEAD_LETTERS.name, 0) if shape.count_records else None,
        records_per_turn={topic: n / max(len(load.sent), 1) for topic, n in delta.items() if n > 0},
        records_at_end=after,
        cores_used={name: (used - cpu_before[name]) / seconds for name, used in cpu_after.items()
                    if name in cpu_before},
        slices=_slices(arrivals, window_start, window_end, shape.slice_s),
        kinds=_kind_figures(load, measured, latency, children), wrong_examples=wrong[:5],
    )


@asynccontextmanager
async def dialogue_stack(storage: str, workers: int, prefix: str) -> AsyncIterator[Settings]:
    """A throwaway stack with `workers` workers: the embedded one (`s3`: Tansu on SeaweedFS), or (`memory`) a bare
    Tansu with a memory:// log as the bus, with the embedded stack's latency settings (the workers' own S3 is idle)."""
    if storage == "s3":
        async with throwaway_stack(prefix, workers) as settings:
            yield settings
        return
    with memory_broker() as bootstrap:
        kafka = {"bootstrap_servers": bootstrap, "fetch_max_wait_ms": 10, "session_timeout_ms": 4_000,
                 "rebalance_timeout_ms": 3_000}
        # No table standbys, as embedded: with the bus given by address the default would be 1, and a standby's
        # changelog partitions would add to every fetch of every worker.
        async with throwaway_stack(prefix, workers, kafka=kafka,
                                   worker_settings={"standby_replicas": 0}) as settings:
            yield settings


# -- the run -----------------------------------------------------------------------------------------------------
@dataclass
class Report:
    storage: str
    workers: int
    cores: int | None
    date: str
    load_average_before: tuple[float, float, float]  # the machine's, other users included
    load_average_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    agents: list[AgentFigures] = field(default_factory=list)

    def summary(self) -> str:
        before, after = (" ".join(f"{x:.1f}" for x in la) for la in (self.load_average_before,
                                                                      self.load_average_after))
        bus = "Tansu on SeaweedFS S3" if self.storage == "s3" else "bare Tansu, memory:// log"
        lines = [f"dialogue turns, each agent on a fresh throwaway stack ({bus}), "
                 f"{self.workers} workers, {self.cores} cores, {self.date}; load average before {before}, "
                 f"after {after}"]
        lines.extend(agent.summary() for agent in self.agents)
        by_name = {agent.agent: agent for agent in self.agents}
        if {"echo", "customer_service"} <= set(by_name):
            echo, policy = by_name["echo"], by_name["customer_service"]
            lines.append(f"customer_service vs echo: turns/s x{policy.turns_per_s / max(echo.turns_per_s, 1e-9):.2f}, "
                         f"p50 x{policy.latency_ms.p50 / echo.latency_ms.p50:.2f}, "
                         f"p99 x{policy.latency_ms.p99 / echo.latency_ms.p99:.2f}")
        return "\n".join(lines)


async def run(args: argparse.Namespace, progress: Callable[[str], None] = print) -> Report:
    shape = LoadShape(sessions=args.sessions, rate=args.rate, seconds=args.seconds, warmup_s=args.warmup_s,
                      timeout_s=args.timeout_s, slice_s=args.slice_s)
    agents = ["echo", "customer_service"] if args.agent == "both" else [args.agent]
    given = bus_limit_from_file(args.bus_figures) if args.bus_figures else None
    report = Report(args.storage, args.workers, os.cpu_count(), time.strftime("%Y-%m-%d %H:%M %z"), os.getloadavg())
    for agent in agents:
        # A fresh stack per agent: Tansu's S3 fetch slows down as partitions grow, so a second agent on the first
        # one's stack would start from a slower bus.
        progress(f"{agent}: starting a throwaway embedded stack with {args.workers} workers")
        async with dialogue_stack(args.storage, args.workers, f"switchboard-dialogue-{agent}-") as settings:
            bus = given
            if bus is None:
                progress(f"raw bus: {BUS_CLIENT} {BUS_CONFIG}, {args.bus_messages} messages, {args.bus_samples} "
                         "round trips")
                bus = await measure_bus(settings, args.bus_messages, args.bus_samples)
            figures = await measure_agent(settings, agent, shape, progress)
            figures.bus = bus
            report.agents.append(figures)
    report.load_average_after = os.getloadavg()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dialogue_turns", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent", choices=["both", *SCRIPTS], default="both", help="which load (default both)")
    parser.add_argument("--sessions", type=int, default=None,
                        help="closed loop: concurrent users (default 200); open loop: sessions to start with "
                             "(default: the rate rounded up)")
    parser.add_argument("--rate", type=float, default=None,
                        help="open loop: turns offered per second (default: closed loop)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (default 20)")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="load before the window, not measured (5)")
    parser.add_argument("--slice-s", type=float, default=5.0, help="turns/s and p50 per slice this long (5)")
    parser.add_argument("--timeout-s", type=float, default=30.0,
                        help="a reply later than this after its turn counts as a timeout (default 30)")
    parser.add_argument("--workers", type=int, default=2, help="Faust workers (default 2)")
    parser.add_argument("--storage", choices=["s3", "memory"], default="s3",
                        help="the bus: s3 = the embedded stack (Tansu on SeaweedFS, the default), memory = a bare "
                             "Tansu with a memory:// log (the broker without storage costs)")
    parser.add_argument("--bus-figures", type=Path, default=None,
                        help="raw bus figures from `python -m bench.bus_throughput --json FILE` instead of measuring")
    parser.add_argument("--bus-messages", type=int, default=20_000, help="raw bus throughput run size (20,000)")
    parser.add_argument("--bus-samples", type=int, default=200, help="raw bus round trips (default 200)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.sessions is None:
        args.sessions = 200 if args.rate is None else max(1, math.ceil(args.rate))
    if args.sessions < 1 or args.seconds <= 0 or args.slice_s <= 0 or (args.rate is not None and args.rate <= 0):
        parser.error("--sessions, --seconds, --slice-s and --rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_stopping_on_sigterm(run(args, progress=lambda text: print(text, file=sys.stderr, flush=True)))
    print(report.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2, ensure_ascii=False))
    return 0 if all(agent.ok for agent in report.agents) else 1


if __name__ == "__main__":
    sys.exit(main())
