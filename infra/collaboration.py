"""What people see of agents working together: the agent directory (`switchboard agents list`) and the chain of
events behind one request (`switchboard trace CORRELATION_ID`).

Both read topics to their *true* end (infra/bus/reading.py: Tansu reports ends too low), so what was announced or
happened before the command started is all there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from agents.directory import AgentCard, card_from
from infra.bus.clients import consumer as make_consumer
from infra.bus.reading import find_ends, read_topic
from infra.config import Settings
from topics import catalog
from topics.binding import decode_event
from topics.codec import AvroCodec
from topics.errors import BusError, DecodeError
from topics.event import Event


@dataclass(frozen=True)
class Listing:
    """An agent's latest card, with when and by whom it was announced."""

    card: AgentCard
    announced_at: str
    worker: str | None


async def read_directory(settings: Settings) -> list[Listing]:
    """The latest announcement of every agent, by name (compaction may not have run: the last record wins)."""
    codec = AvroCodec()
    latest: dict[str, Listing] = {}
    async for record in read_topic(settings, catalog.AGENT_DIRECTORY.name):
        try:
            event = decode_event(record.value, record.headers, codec, catalog.AGENT_DIRECTORY.value_schema)
        except DecodeError:
            continue
        latest[str(event.data["agent"])] = Listing(card_from(event.data), event.time.isoformat(timespec="seconds"),
                                                   event.data.get("worker"))
    return [latest[name] for name in sorted(latest)]


def format_directory(listings: Sequence[Listing]) -> list[str]:
    lines = []
    for item in listings:
        card = item.card
        lines.append(f"{card.name}  ({card.owner or 'no owner given'})  inbox {card.inbox}")
        if card.description:
            lines.append(f"    {card.description}")
        lines.append(f"    capabilities: {', '.join(card.capabilities) or '-'}")
        lines.append(f"    intents: {', '.join(card.intents) or '-'}")
        lines.append(f"    announced {item.announced_at} by {item.worker or '?'}, policy {card.policy_version}")
    return lines


def directory_json(listings: Sequence[Listing]) -> list[dict[str, Any]]:
    return [{"agent": item.card.name, "description": item.card.description, "owner": item.card.owner,
             "capabilities": list(item.card.capabilities), "intents": list(item.card.intents),
             "inbox": item.card.inbox, "policy_version": item.card.policy_version,
             "announced_at": item.announced_at, "worker": item.worker} for item in listings]


# -- trace -----------------------------------------------------------------------------------------------------------
@dataclass
class Traced:
    """One event of a chain, where it was found, and the events it caused."""

    event: Event
    topic: str
    children: list[Traced] = field(default_factory=list)


async def collect_chain(settings: Settings, topics: Iterable[str], correlation: str,
                        timeout_s: float = 120.0) -> list[Traced]:
    """Every event (once, by id) on `topics` whose correlation id is `correlation` (or starts with it, for the short
    ids `tail` shows), read to each partition's true end with one consumer. Topics not on the bus are skipped."""
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for topic in sorted(set(topics))
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            raise BusError("none of the declared topics exists on the bus (create them: `switchboard topics "
                           "create`)")
        ends = {tp: e.end for tp, e in (await find_ends(consumer, partitions, settings)).items()}
        pending = [tp for tp in partitions if ends[tp] > 0]
        consumer.assign(pending)
        if pending:
            await consumer.seek_to_beginning(*pending)
        codec = AvroCodec()
        found: dict[str, Traced] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise BusError(f"reading {len(pending)} partition(s) to their end took more than {timeout_s:.0f}s "
                               f"({', '.join(sorted({tp.topic for tp in pending}))}); is the broker healthy "
                               "(`switchboard status`)?")
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    try:
                        event = decode_event(record.value, record.headers, codec)
                    except DecodeError:
                        continue
                    if _matches(event.correlationid, correlation) and event.id not in found:
                        found[event.id] = Traced(event, tp.topic)
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.remove(tp)
        return list(found.values())
    finally:
        await consumer.stop()


def _matches(correlation: str, wanted: str) -> bool:
    return correlation == wanted or (len(wanted) < len(correlation) and correlation.startswith(wanted))


def build_tree(events: Sequence[Traced]) -> list[Traced]:
    """The chain as trees by causation id; an event whose cause is not among them is a root."""
    by_id = {item.event.id: item for item in events}
    roots = []
    for item in sorted(events, key=lambda i: (i.event.time, i.topic)):
        parent = by_id.get(item.event.causationid or "")
        if parent is None or parent is item:
            roots.append(item)
        else:
            parent.children.append(item)
    return roots


def format_tree(roots: Sequence[Traced]) -> list[str]:
    lines: list[str] = []

    def walk(item: Traced, prefix: str, last: bool, top: bool) -> None:
        event = item.event
        branch = "" if top else ("└─ " if last else "├─ ")
        stamp = event.time.strftime("%H:%M:%S.%f")[:-3]
        kind = event.type.rsplit(".", 1)[-1]
        lines.append(f"{prefix}{branch}{stamp}  {item.topic}  {kind}  {summary(event)}  [id {event.id[:8]}]")
        below = prefix + ("" if top else ("   " if last else "│  "))
        for index, child in enumerate(item.children):
            walk(child, below, index == len(item.children) - 1, False)

    for root in roots:
        cause = f" (caused by {root.event.causationid[:8]}, not on the bus)" if root.event.causationid else ""
        if cause:
            lines.append(f"…{cause}")
        walk(root, "", True, True)
    return lines


def summary(event: Event) -> str:
    """A short, readable account of what an event says."""
    data: Mapping[str, Any] = event.data
    kind = event.type.rsplit(".", 1)[-1]
    if kind == "Turn":
        via = f" (passed on by {data['via']})" if data.get("via") else ""
        return f"to {data.get('agent')}{via}: {data.get('text')!r}"
    if kind == "Understood":
        return f"{data.get('agent')}: {data.get('text')!r} intent={data.get('intent')}"
    if kind == "Reply":
        return f"{data.get('author') or data.get('agent')} says {data.get('text')!r}"
    if kind == "Transition":
        return f"{data.get('agent')}: {data.get('from_state')} -> {data.get('to_state')} ({data.get('reason')})"
    if kind == "Signal":
        text = f" {data.get('text')!r}" if data.get("text") else ""
        return f"{data.get('agent')} <- {data.get('kind')} {data.get('name') or ''}{text} {_short(data.get('data'))}"
    return _short(json.dumps(dict(data), sort_keys=True, default=str, ensure_ascii=False))


def _short(text: Any, limit: int = 100) -> str:
    value = "" if text in (None, "{}") else str(text)
    return value if len(value) <= limit else value[: limit - 1] + "…"
