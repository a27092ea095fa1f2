"""Kill test for the dialogue processor: two workers share the turns, one is SIGKILLed under load and restarted.

Afterwards every turn has been answered, no turn has two different replies, and each session's turn counter runs
1..N without a gap or a repeat: the state is what it would be had nothing crashed. Plain Faust 0.15.3 with a Table
fails this (it skips messages that arrive during the rebalance; see docs/bus-facts.md).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from infra.bus.clients import producer as make_producer
from infra.config import Settings
from infra.embedded import EmbeddedStack
from infra.testing import await_all, embedded_settings
from topics import AvroCodec, Event, catalog, encode_event

pytestmark = pytest.mark.integration

SESSIONS = 40
TURNS = 25           # per session: 1,000 turns
RATE = 200.0         # turns per second
KILL_AFTER_S = 2.0
_TURN_NUMBER = re.compile(r"\(turn (\d+)\)$")


async def _produce(settings: Settings) -> dict[str, tuple[str, int]]:
    """Send the turns (each session's in order) at RATE; turn id -> (session, its number in the session)."""
    codec = AvroCodec()
    sent: dict[str, tuple[str, int]] = {}
    producer = make_producer(settings)
    await producer.start()
    try:
        start = time.monotonic()
        for i in range(SESSIONS * TURNS):
            session, number = f"kill-{i % SESSIONS}", i // SESSIONS + 1
            event = Event(type=catalog.DIALOGUE_TURNS.value_schema, source="/tests/kill", subject=session,
                          data={"session_id": session, "agent": "echo", "text": f"t{number}"})
            record = encode_event(event, codec)
            await producer.send_and_wait(catalog.DIALOGUE_TURNS.name, record.value, key=record.key,
                                         headers=record.headers)
            sent[event.id] = (session, number)
            await asyncio.sleep(max(0.0, start + (i + 1) / RATE - time.monotonic()))
    finally:
        await producer.stop()
    return sent


async def test_a_killed_worker_loses_no_turn_and_applies_none_twice(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, workers={"count": 2})
    stack = EmbeddedStack(settings)
    try:
        await stack.up()
        load = asyncio.create_task(_produce(settings))
        await asyncio.sleep(KILL_AFTER_S)  # the scenario: a crash while load flows
        victim = next(r for r in stack.records() if r.name == "worker-1")
        os.killpg(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.to_thread(psutil.Process(victim.pid).wait, 10)
        sent = await load
        await stack.up()  # restarts the dead worker; it rejoins the group
        answers = await await_all(settings, catalog.DIALOGUE_REPLIES, set(sent), lambda e: e.causationid,
                                  timeout_s=120)
        caught_up_s = time.monotonic() - killed_at
    finally:
        stack.down()

    by_turn: dict[str, set[tuple[str, str]]] = {
        turn: {(reply.id, reply.data["text"]) for reply in replies} for turn, replies in answers.items()}
    lost = [turn for turn in sent if turn not in by_turn]
    conflicting = {turn: variants for turn, variants in by_turn.items() if len(variants) > 1}
    numbers: dict[str, list[int]] = defaultdict(list)
    for turn, variants in by_turn.items():
        (_, text), *_ = variants
        match = _TURN_NUMBER.search(text)
        assert match, text
        session, position = sent[turn]
        numbers[session].append(int(match.group(1)))
        assert int(match.group(1)) == position, f"{session}: turn {position} was answered as turn {match.group(1)}"
    records = sum(len(replies) for replies in answers.values())
    print(f"\nkill test: {len(sent)} turns, {records} reply records, {records - len(by_turn)} redelivered "
          f"duplicates (same id), caught up {caught_up_s:.1f}s after the kill")
    assert lost == [], f"{len(lost)} turns never answered"
    assert conflicting == {}, "a turn was applied twice (two different replies)"
    for session, seen in numbers.items():
        assert sorted(seen) == list(range(1, TURNS + 1)), session
