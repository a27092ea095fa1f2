"""Kill test for a policy-driven agent: users in mid-conversation while one of two workers is SIGKILLed.

Each simulated user talks like a person: sends a turn, waits for the answer, sends the next. The script goes through
a form, a workflow call (two extra hops on the bus), the knowledge base and the fallback, so every answer depends on
the session's state. After the kill and the restart every turn has its expected answer: no turn lost, none answered
twice (a second reply with another id), and each session resumed exactly where it was (a state lost or applied twice
would change the answers: "Hello again" instead of the first greeting, a fallback count off by one).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from agents.registry import discover_agents
from infra.bus.clients import producer as make_producer
from infra.bus.reading import read_topic
from infra.config import Settings
from infra.embedded import EmbeddedStack
from infra.testing import embedded_settings
from topics import AvroCodec, Event, catalog, decode_event, encode_event
from topics.errors import DecodeError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SESSIONS = 30
CYCLES = 5
KILL_AFTER_S = 2.0
ANSWER_WITHIN_S = 180
AGENT = "customer_service"
POLICY = next(a.policy for a in discover_agents() if a.name == AGENT)
FAQ_HOURS = "We are open Monday to Friday 9:00-18:00 and Saturday 10:00-14:00 (CET)."
SORRY = ("Sorry, I did not understand that. You can ask about an order, opening hours, returns, shipping or payment, "
         "report a problem, or ask for a person.")


def script(cycle: int) -> list[tuple[str, str]]:
    """(what the user says, the one answer expected) for one cycle of the conversation."""
    greeting = "您好,我是您的数字助理,请描述您的需求" if cycle == 0 else "Hello again! What else can I do for you?"
    return [
        ("hi", greeting),
        ("where is my order?", "Sure. What is your order number? It looks like AB1234."),
        ("AB1234", "Order AB1234 was delivered by DHL on 2026-11-20."),
        ("what are your opening hours", FAQ_HOURS),
        ("blorp", SORRY),
    ]


class Replies:
    """Every reply on the bus, by the turn it answers; wakes the user waiting for it."""

    def __init__(self) -> None:
        self.by_turn: dict[str, dict[str, str]] = defaultdict(dict)  # turn id -> reply id -> text
        self.waiting: dict[str, asyncio.Event] = {}

    def add(self, event: Event) -> None:
        turn = event.data.get("in_reply_to")
        if not turn:
            return
        self.by_turn[turn][event.id] = event.data["text"]
        if turn in self.waiting:
            self.waiting[turn].set()

    async def follow(self, settings: Settings) -> None:
        codec = AvroCodec()
        async for record in read_topic(settings, catalog.DIALOGUE_REPLIES.name, follow=True):
            try:
                self.add(decode_event(record.value, record.headers, codec))
            except DecodeError:
                continue


async def converse(settings: Settings, producer: object, replies: Replies, session: str,
                   sent: list[tuple[str, str, str]]) -> None:
    codec = AvroCodec()
    for cycle in range(CYCLES):
        for text, expected in script(cycle):
            turn = Event(type=catalog.DIALOGUE_TURNS.value_schema, source="/tests/kill-policy", subject=session,
                         data={"session_id": session, "agent": AGENT, "text": text})
            answered = replies.waiting.setdefault(turn.id, asyncio.Event())
            record = encode_event(turn, codec)
            await producer.send_and_wait(catalog.DIALOGUE_TURNS.name, record.value,  # type: ignore[attr-defined]
                                         key=record.key, headers=record.headers)
            sent.append((turn.id, session, expected))
            try:
                await asyncio.wait_for(answered.wait(), ANSWER_WITHIN_S)
            except TimeoutError:
                raise AssertionError(f"turn {turn.id} ({text!r}, cycle {cycle} of session {session}) was not "
                                     f"answered within {ANSWER_WITHIN_S}s; {len(sent)} turns sent") from None


async def test_policy_agent_survives_a_worker_kill_mid_conversation(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, workers={"count": 2})
    stack = EmbeddedStack(settings)
    replies = Replies()
    sent: list[tuple[str, str, str]] = []
    run = uuid.uuid4().hex[:6]
    try:
        await stack.up()
        reader = asyncio.create_task(replies.follow(settings))
        producer = make_producer(settings)
        await producer.start()
        try:
            users = asyncio.gather(*(converse(settings, producer, replies, f"kp-{run}-{i}", sent)
                                     for i in range(SESSIONS)))
            await asyncio.sleep(KILL_AFTER_S)  # the scenario: a crash mid-conversation
            victim = next(r for r in stack.records() if r.name == "worker-1")
            os.killpg(victim.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await asyncio.to_thread(psutil.Process(victim.pid).wait, 10)
            await stack.up()  # restarts the dead worker
            await users
            caught_up_s = time.monotonic() - killed_at
        finally:
            await producer.stop()
        reader.cancel()
        # Read everything once more to the end, so a late second reply is seen too.
        codec = AvroCodec()
        async for record in read_topic(settings, catalog.DIALOGUE_REPLIES.name):
            try:
                replies.add(decode_event(record.value, record.headers, codec))
            except DecodeError:
                continue
    finally:
        stack.down()

    assert len(sent) == SESSIONS * CYCLES * len(script(0))
    wrong = {turn: (session, expected, sorted(replies.by_turn.get(turn, {}).values()))
             for turn, session, expected in sent
             if list(replies.by_turn.get(turn, {}).values()) != [expected]}
    print(f"\npolicy kill test: {len(sent)} turns in {SESSIONS} conversations, caught up {caught_up_s:.1f}s "
          "after the kill")
    assert wrong == {}, f"{len(wrong)} turns without exactly their expected answer, e.g. {list(wrong.values())[:3]}"
