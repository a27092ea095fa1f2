"""The human side of a handoff: list the queue, take a session, answer the user, release it back to the bot.

The queue is the `dialogue.handoffs` topic, folded per session; a person's actions are signals to the agent's inbox
(`agent.<name>.signals`), so they pass through the same stream processor as everything else, in order with the
session's other events, and land in the audit trail.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from typing import Any

from infra.bus.clients import producer as make_producer
from infra.bus.reading import read_topic
from infra.config import Settings
from topics import catalog
from topics.binding import decode_event, encode_event
from topics.codec import AvroCodec
from topics.errors import DecodeError, SwitchboardError
from topics.event import Event

SOURCE = "/switchboard/cli/handoff"


class HandoffError(SwitchboardError):
    """A handoff command cannot be carried out (unknown session, not handed off)."""


@dataclass
class Case:
    """One session in the human queue, as folded from its handoff entries."""

    session_id: str
    agent: str
    reason: str | None = None
    person: str | None = None
    open: bool = True
    messages: list[tuple[str, str]] = field(default_factory=list)  # (role, text), history then new messages

    @property
    def status(self) -> str:
        if not self.open:
            return "released"
        return f"taken by {self.person}" if self.person else "waiting"


def fold(cases: dict[str, Case], entry: dict[str, Any]) -> None:
    """Apply one `switchboard.dialogue.Handoff` entry to the queue."""
    session = entry["session_id"]
    kind = entry["kind"]
    if kind == "requested":
        cases[session] = Case(session, entry["agent"], reason=entry.get("reason"),
                              messages=[(line["role"], line["text"]) for line in entry.get("history") or ()])
        return
    case = cases.setdefault(session, Case(session, entry["agent"]))
    if kind == "user_message":
        case.messages.append(("user", entry.get("text") or ""))
    elif kind == "taken":
        case.person, case.open = entry.get("person"), True
    elif kind == "replied":
        case.messages.append((f"human:{entry.get('person')}", entry.get("text") or ""))
    elif kind == "released":
        case.open = False


async def queue(settings: Settings) -> dict[str, Case]:
    """Every session ever handed off, by id, in the order they were first handed off."""
    codec = AvroCodec()
    cases: dict[str, Case] = {}
    seen: set[str] = set()
    async for record in read_topic(settings, catalog.DIALOGUE_HANDOFFS.name):
        try:
            event = decode_event(record.value, record.headers, codec, catalog.DIALOGUE_HANDOFFS.value_schema)
        except DecodeError:
            continue
        if event.id in seen:  # at-least-once: a redelivered step republishes the same ids
            continue
        seen.add(event.id)
        fold(cases, dict(event.data))
    return cases


def whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


async def act(settings: Settings, session_id: str, kind: str, *, person: str, text: str | None = None,
              agent: str | None = None) -> Event:
    """Send a person's action on `session_id` to its agent's inbox; checks the queue first."""
    if agent is None:
        case = (await queue(settings)).get(session_id)
        if case is None:
            raise HandoffError(f"session {session_id!r} was never handed off; `switchboard handoff list --all` shows "
                               "those that were (or pass --agent to take over a session proactively)")
        if not case.open and kind != "human_take":
            raise HandoffError(f"session {session_id!r} was released; take it again first")
        agent = case.agent
    spec = catalog.agent_topics(agent).signals
    event = Event(type=spec.value_schema, source=SOURCE, subject=session_id, principal=f"user:{person}",
                  data={"session_id": session_id, "agent": agent, "kind": kind, "name": person, "text": text,
                        "data": "{}"})
    record = encode_event(event, AvroCodec())
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(spec.name, record.value, key=record.key, headers=record.headers)
    finally:
        await producer.stop()
    return event
