"""The dialogue engine's bus-side guarantees that no single story shows: idle sessions end on their own, and an
event re-emitted by a restarted upstream stage (same id, new offset) is not applied twice."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from agents.dialogue import core
from infra.bus.clients import producer as make_producer
from infra.bus.reading import read_topic
from infra.config import Settings
from infra.console import ChatSession
from infra.handoff import act
from infra.testing import await_all, wait_for_event
from topics import AvroCodec, Event, catalog, decode_event, encode_event

pytestmark = pytest.mark.integration


async def test_an_idle_session_is_closed_by_the_sweeper_without_another_turn(stack: Settings) -> None:
    session = f"sleepy-{uuid.uuid4().hex[:8]}"
    async with ChatSession(stack, "sleepy", session) as chat:
        turn, replies = await chat.say("hi")
    assert [r.data["text"] for r in replies] == ["Hello! I will close this conversation if you stay quiet."]

    closing = await wait_for_event(
        stack, catalog.DIALOGUE_REPLIES,
        lambda e: e.data["session_id"] == session and e.data["in_reply_to"] == turn.id and e.id not in
        {r.id for r in replies}, timeout_s=30)
    assert closing.data["text"] == "I closed this conversation (greeted: yes)."
    assert closing.time - turn.time >= timedelta(seconds=2), "not before the policy's session_timeout (2s)"
    ended = await wait_for_event(stack, catalog.agent_topics("sleepy").transitions,
                                 lambda e: e.data["session_id"] == session and e.data["to_state"] == "ended")
    assert ended.data["reason"] == "idle timeout"

    # The next turn starts a fresh conversation (the greeting again, not a second timeout).
    async with ChatSession(stack, "sleepy", session) as chat:
        _, replies = await chat.say("hello")
    assert [r.data["text"] for r in replies] == ["Hello! I will close this conversation if you stay quiet."]


async def _session_replies(settings: Settings, session: str) -> list[Event]:
    """Every reply record of `session` on the bus now (read to the true end), redelivered copies included."""
    codec = AvroCodec()
    found = []
    async for record in read_topic(settings, catalog.DIALOGUE_REPLIES.name):
        event = decode_event(record.value, record.headers, codec)
        if event.data["session_id"] == session:
            found.append(event)
    return found


async def test_an_understood_event_re_emitted_at_a_new_offset_is_applied_once(stack: Settings) -> None:
    """What a restarted recogniser does: it sends an `understood` event it had sent before, with the same id."""
    session = f"dup-{uuid.uuid4().hex[:8]}"
    topics = catalog.agent_topics("customer_service")
    codec = AvroCodec()

    def understood(turn_id: str) -> Event:
        return Event(type=core.UNDERSTOOD, source="/tests/dedupe", subject=session, data={
            "session_id": session, "agent": "customer_service", "turn_id": turn_id, "text": "hi", "channel": "api",
            "locale": None, "intent": None, "confidence": 0.0, "entities": [], "model": "test"})

    first, second = understood("turn-1"), understood("turn-2")
    producer = make_producer(stack)
    await producer.start()
    try:
        offsets = []
        for event in (first, first, second):  # the first one twice: same id, two records
            record = encode_event(event, codec)
            sent = await producer.send_and_wait(topics.understood.name, record.value, key=record.key,
                                                headers=record.headers)
            offsets.append(sent.offset)
    finally:
        await producer.stop()
    assert len(set(offsets)) == 3

    # The session's events are in order on one partition: once turn-2 is answered, the copy has been dealt with.
    await wait_for_event(stack, catalog.DIALOGUE_REPLIES, lambda e: e.data["in_reply_to"] == "turn-2"
                         and e.data["session_id"] == session)
    replies = await _session_replies(stack, session)
    assert [(r.data["in_reply_to"], r.data["text"]) for r in replies] == [
        ("turn-1", "您好,我是您的数字助理,请描述您的需求"),
        ("turn-2", "Hello again! What else can I do for you?"),
    ]
    second_turn = await wait_for_event(stack, topics.transitions, lambda e: e.data["session_id"] == session
                                       and e.causationid == second.id)
    assert second_turn.data["turn"] == 2, "the copy did not count as a turn"


async def test_a_person_s_words_reach_the_chat_between_turns(stack: Settings) -> None:
    """After a handoff the user's chat shows the person's replies as they come, not only after the next turn."""
    session = f"hand-{uuid.uuid4().hex[:8]}"
    async with ChatSession(stack, "customer_service", session) as chat:
        _, replies = await chat.say("I want to talk to a human")
        assert [r.data["text"] for r in replies] == ["I am passing you to a colleague; please wait a moment."]
        await act(stack, session, "human_take", person="alice", agent="customer_service")
        await act(stack, session, "human_reply", person="alice", text="Hi, Alice here. How can I help?",
                  agent="customer_service")
        arrived = chat.unprompted()
        taken, written = await anext(arrived), await anext(arrived)
    assert taken.data["text"] == "You are now talking to alice."
    assert (written.data["author"], written.data["text"]) == ("human:alice", "Hi, Alice here. How can I help?")


async def test_a_reply_too_large_for_the_bus_dead_letters_its_turn_and_the_session_goes_on(stack: Settings) -> None:
    """The echo agent answers "You said: <text>": a turn just under the worker's producer limit (1,000,000 bytes)
    makes a reply just over it. The broker can never take that reply, so the turn is dead-lettered with the reason
    (its bytes left out, being as large) and the session's next turn is answered as usual."""
    session = f"big-{uuid.uuid4().hex[:8]}"
    codec = AvroCodec()
    big = Event(type=catalog.DIALOGUE_TURNS.value_schema, source="/tests/too-large", subject=session,
                data={"session_id": session, "agent": "echo", "text": "x" * 999_900})
    record = encode_event(big, codec)
    producer = make_producer(stack, max_request_size=2_000_000)
    await producer.start()
    try:
        await producer.send_and_wait(catalog.DIALOGUE_TURNS.name, record.value, key=record.key,
                                     headers=record.headers)
    finally:
        await producer.stop()
    letter = await wait_for_event(stack, catalog.DEAD_LETTERS,
                                  lambda e: e.data["processor"] == "echo" and e.data["topic"] == "dialogue.turns"
                                  and e.data["key"] == session.encode())
    assert letter.data["error"] == "MessageSizeTooLargeError"
    assert "refused an effect for topic dialogue.replies" in letter.data["reason"]
    assert letter.data["value"] is None, "the input is as large as the reply; the letter keeps its position only"

    async with ChatSession(stack, "echo", session) as chat:
        _, replies = await chat.say("still there?")
    assert [r.data["text"] for r in replies] == ["You said: still there? (turn 2)"]


async def test_a_burst_of_turns_from_many_sessions_is_answered_once_each_in_session_order(stack: Settings) -> None:
    """The shell pipelines a stateful agent's inputs (`workers.pipeline_depth`): many sessions' turns are in flight
    at once, but each session's turns are applied in order, once, and answered in that order."""
    run = uuid.uuid4().hex[:8]
    sessions, turns = 30, 5
    codec = AvroCodec()
    sent: dict[str, tuple[str, int]] = {}
    producer = make_producer(stack)
    await producer.start()
    try:
        futures = []
        for number in range(1, turns + 1):  # every session's turn 1, then every session's turn 2, ...
            for s in range(sessions):
                session = f"burst-{run}-{s}"
                event = Event(type=catalog.DIALOGUE_TURNS.value_schema, source="/tests/burst", subject=session,
                              data={"session_id": session, "agent": "echo", "text": f"t{number}"})
                sent[event.id] = (session, number)
                record = encode_event(event, codec)
                futures.append(await producer.send(catalog.DIALOGUE_TURNS.name, record.value, key=record.key,
                                                   headers=record.headers))
        for future in futures:
            await future
    finally:
        await producer.stop()

    replies = await await_all(stack, catalog.DIALOGUE_REPLIES, set(sent), lambda e: e.data["in_reply_to"],
                              timeout_s=120)
    assert set(replies) == set(sent), f"{len(set(sent) - set(replies))} of {len(sent)} turns unanswered"
    for turn_id, copies in replies.items():
        assert len({c.id for c in copies}) == 1, f"turn {turn_id} answered by different replies: {copies}"
        session, number = sent[turn_id]
        assert copies[0].data["text"] == f"You said: t{number} (turn {number})", copies[0].data

    # In session order on the bus: read back each session's replies in offset order.
    order: dict[str, list[int]] = {}
    async for record in read_topic(stack, catalog.DIALOGUE_REPLIES.name):
        event = decode_event(record.value, record.headers, codec)
        if event.data["in_reply_to"] in sent:
            session, number = sent[event.data["in_reply_to"]]
            if number not in order.setdefault(session, []):
                order[session].append(number)
    assert all(numbers == list(range(1, turns + 1)) for numbers in order.values()), order
