"""Agents working together, through the pure step and the processor's event mapping: delegation with answers and
deadlines, fan-out to a capability, transfers, the directory cards, and the loader's checks of the new actions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.dialogue import core
from agents.dialogue.errors import PolicyError
from agents.dialogue.loader import load_policy_text
from agents.dialogue.processor import DialogueAgent, RecogniserStage
from agents.dialogue.recognise import KeywordRecogniser
from agents.directory import announcement, card_from, card_of, directory_of
from agents.registry import discover_agents
from topics import catalog
from topics.event import Event
from topics.processor import Emit

TEST_AGENTS = Path(__file__).resolve().parents[1] / "agents"
AGENTS = {agent.name: agent.policy for agent in [*discover_agents(), *discover_agents(TEST_AGENTS)]}
DIRECTORY = directory_of(AGENTS.values())
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def agent(name: str) -> DialogueAgent:
    return DialogueAgent(AGENTS[name], DIRECTORY)


def turn(processor: DialogueAgent, session: str, text: str, at: datetime = START, via: str | None = None,
         turn_id: str | None = None) -> Event:
    understanding = KeywordRecogniser(processor.policy).recognise_now(text)
    data: dict[str, Any] = {
        "session_id": session, "agent": processor.policy.agent, "turn_id": turn_id or f"turn-{text}", "text": text,
        "channel": "test", "locale": None, "intent": understanding.intent, "confidence": understanding.confidence,
        "entities": [{"name": e.name, "value": e.value, "start": e.start, "end": e.end}
                     for e in understanding.entities], "model": "test", "via": via}
    return Event(type=core.UNDERSTOOD, source="/test", subject=session, time=at, data=data,
                 id=f"understood-{session}-{text}")


def replies(emits: list[Emit] | tuple[Emit, ...]) -> list[str]:
    return [e.event.data["text"] for e in emits if e.topic == catalog.DIALOGUE_REPLIES]


def on(emits: list[Emit] | tuple[Emit, ...], topic: str) -> list[Event]:
    return [e.event for e in emits if e.topic.name == topic]


def transitions(emits: list[Emit] | tuple[Emit, ...]) -> list[str]:
    return [e.event.data["reason"] for e in emits if e.topic.name.endswith(".transitions")]


def deliver(emit: Event, at: datetime) -> Event:
    """A signal as the receiving agent reads it (the bus keeps the event as it was sent, at its time)."""
    return Event(type=emit.type, source=emit.source, data=emit.data, subject=emit.subject, id=emit.id, time=at,
                 correlationid=emit.correlationid, causationid=emit.causationid)


# -- delegation -------------------------------------------------------------------------------------------------------
def test_a_delegation_is_answered_with_the_same_correlation_and_the_dialogue_goes_on() -> None:
    concierge, oracle = agent("concierge"), agent("oracle")
    asked = turn(concierge, "s1", "ask the oracle about rome")
    state, emits = concierge.step(concierge.initial("s1"), asked)
    assert replies(emits) == ["Let me ask the oracle."]
    (request,) = on(emits, "agent.oracle.signals")
    assert request.data["kind"] == "request" and request.data["name"] == "forecast"
    assert request.correlationid == asked.correlationid and request.causationid == asked.id
    payload = json.loads(request.data["data"])
    assert payload["input"] == {"city": "rome"} and payload["reply_session"] == "s1"
    assert request.subject == payload["request_id"], "the oracle serves it in a session of its own"
    assert state["await"]["kind"] == "delegation"
    assert state["await"]["deadline"] == (START + timedelta(seconds=20)).isoformat()

    served, emits = oracle.step(oracle.initial(request.subject or ""), deliver(request, START))
    (answer,) = on(emits, "agent.concierge.signals")
    assert answer.subject == "s1" and answer.correlationid == asked.correlationid
    assert answer.causationid == request.id
    assert json.loads(answer.data["data"])["output"] == {"city": "rome", "sky": "clear"}
    assert served["request"]["from"] == "concierge"

    done, emits = concierge.step(state, deliver(answer, START + timedelta(seconds=1)))
    assert replies(emits) == ["The oracle says: sunny in rome (clear)"]
    assert all(e.event.data["in_reply_to"] == "turn-ask the oracle about rome"
               for e in emits if e.topic == catalog.DIALOGUE_REPLIES)
    assert done["await"] is None and done["context"]["forecast"]["agent"] == "oracle"
    # The same answer again (redelivered, or re-sent) changes nothing that matters.
    _, again = concierge.step(done, deliver(answer, START + timedelta(seconds=2)))
    assert replies(again) == [] and "not waited for" in transitions(again)[0]


def test_an_answer_that_comes_before_its_request_is_applied_again_after_a_crash_is_not_lost() -> None:
    """The asking worker published the request and died before it stored the new state; after the restart the
    answer (on the inbox) is read before the redelivered turn. It is kept, and the turn applied again asks the same
    request (same id) and goes on with the kept answer."""
    concierge, oracle = agent("concierge"), agent("oracle")
    before = concierge.initial("s1")
    asked = turn(concierge, "s1", "ask the oracle about rome")
    _, emits = concierge.step(before, asked)  # effects out, state lost
    (request,) = on(emits, "agent.oracle.signals")
    _, served = oracle.step(oracle.initial(request.subject or ""), deliver(request, START))
    (answer,) = on(served, "agent.concierge.signals")
    kept, emits = concierge.step(before, deliver(answer, START + timedelta(seconds=1)))
    assert replies(emits) == [] and "early_answers" in kept
    done, emits = concierge.step(kept, asked)  # the turn, redelivered
    assert [e.id for e in on(emits, "agent.oracle.signals")] == [request.id]
    assert replies(emits) == ["Let me ask the oracle.", "The oracle says: sunny in rome (clear)"]
    assert done["await"] is None and "early_answers" not in done


def test_a_delegation_nobody_answers_times_out_by_the_sweeper_with_a_clear_reply() -> None:
    concierge = agent("concierge")
    asked = turn(concierge, "s2", "ask sleepy")
    state, emits = concierge.step(concierge.initial("s2"), asked)
    assert [e.event.data["kind"] for e in emits if e.topic.name == "agent.sleepy.signals"] == ["request"]
    # sleepy has no `request` trigger: it records that and sends nothing back.
    request = on(emits, "agent.sleepy.signals")[0]
    _, sleepy_emits = agent("sleepy").step(None, deliver(request, START))
    assert on(sleepy_emits, "agent.concierge.signals") == []
    assert "matched no trigger; not answered" in transitions(sleepy_emits)[0]

    assert concierge.sweep("s2", state, START + timedelta(seconds=1.9)) == ()
    (due,) = concierge.sweep("s2", state, START + timedelta(seconds=2))
    (again,) = concierge.sweep("s2", state, START + timedelta(seconds=3))
    assert due.event.id == again.event.id, "one id per deadline: a second sweep is a duplicate"
    assert due.topic == catalog.agent_topics("concierge").signals
    assert due.event.correlationid == asked.correlationid and due.event.causationid == asked.id

    early = deliver(due.event, START + timedelta(seconds=1))
    assert concierge.step(state, early) == (state, []), "a timeout before the deadline is not applied"
    failed, emits = concierge.step(state, due.event)
    assert replies(emits) == ["Sorry, I did not get an answer from sleepy in time. Please try again later."]
    assert any("timed out after 2s: no answer from sleepy" in reason for reason in transitions(emits))
    assert failed["await"] is None and failed["flow"] is None
    assert concierge.step(failed, due.event) == (failed, []), "a late copy changes nothing"


def test_fan_out_collects_every_answer_or_the_first() -> None:
    concierge, oracle = agent("concierge"), agent("oracle")
    state, emits = concierge.step(None, turn(concierge, "s3", "ask everyone"))
    requests = [e for e in emits if e.event.data.get("kind") == "request"]
    assert sorted(e.topic.name for e in requests) == ["agent.concierge.signals", "agent.oracle.signals"]
    assert len({json.loads(e.event.data["data"])["request_id"] for e in requests}) == 1

    answers = {}
    for request in requests:
        responder = concierge if request.topic.name == "agent.concierge.signals" else oracle
        _, out = responder.step(None, deliver(request.event, START))
        (answers[responder.policy.agent],) = on(out, "agent.concierge.signals")
    state, emits = concierge.step(state, deliver(answers["oracle"], START))
    assert replies(emits) == [] and state["await"]["kind"] == "delegation", "one of two: still waiting"
    state, emits = concierge.step(state, deliver(answers["concierge"], START))
    assert replies(emits) == ["2 answers: hello from oracle; hello from concierge"]

    first, _ = concierge.step(None, turn(concierge, "s4", "ask anyone"))
    request_id = first["await"]["request_id"]
    answer = Event(type=core.SIGNAL, source="/test", subject="s4", time=START, data={
        "session_id": "s4", "agent": "concierge", "kind": "answer", "name": "oracle", "text": "hello from oracle",
        "data": json.dumps({"request_id": request_id, "agent": "oracle", "text": "hello from oracle"})})
    _, emits = concierge.step(first, answer)
    assert replies(emits) == ["First answer: hello from oracle"]


def test_no_agent_with_the_capability_and_an_unknown_agent_fail_at_once() -> None:
    policy = load_policy_text("""
agent: asker
dialogues:
  - id: nobody
    trigger: "nobody"
    nodes:
      - id: ask
        actions:
          - {type: delegate, capability: astrology, save_as: stars, on_timeout: sorry}
      - id: sorry
        actions: [{type: reply, content: "Nobody knows ({{ event.data.waiting_for }})."}]
  - id: stranger
    trigger: "stranger"
    actions:
      - {type: delegate, to: stranger, request: anything, save_as: x}
""", file="asker.yaml")
    asker = DialogueAgent(policy, DIRECTORY)
    state, emits = asker.step(None, turn(asker, "s5", "nobody"))
    assert replies(emits) == ["Nobody knows (any agent with capability astrology)."]
    assert state["await"] is None
    assert any("no agent announces capability astrology" in reason for reason in transitions(emits))

    _, emits = asker.step(None, turn(asker, "s6", "stranger"))
    assert replies(emits) == [policy.settings.error_reply]
    assert "no agent named 'stranger' runs in this deployment" in transitions(emits)[-1]


def test_a_broadcast_waits_for_nothing() -> None:
    policy = load_policy_text("""
agent: herald
dialogues:
  - id: shout
    trigger: "shout"
    actions:
      - {type: delegate, capability: greeting, collect: none, input: {news: "{{ text }}"}}
      - {type: reply, content: "Told everyone."}
""", file="herald.yaml")
    herald = DialogueAgent(policy, DIRECTORY)
    state, emits = herald.step(None, turn(herald, "s7", "shout"))
    assert sorted(e.topic.name for e in emits if e.event.data.get("kind") == "request") == [
        "agent.concierge.signals", "agent.oracle.signals"]
    assert replies(emits) == ["Told everyone."] and state["await"] is None


# -- transfer ---------------------------------------------------------------------------------------------------------
def test_the_receptionist_transfers_and_passes_the_user_s_next_turns_on() -> None:
    receptionist = agent("receptionist")
    first = turn(receptionist, "u1", "where is my order?", turn_id="t1")
    state, emits = receptionist.step(None, first)
    assert replies(emits) == ["Let me put you through to customer service."]
    (forwarded,) = on(emits, catalog.DIALOGUE_TURNS.name)
    assert forwarded.data == {"session_id": "u1", "agent": "customer_service", "text": "where is my order?",
                              "channel": "test", "locale": None, "via": "receptionist", "turn_id": "t1"}
    assert forwarded.correlationid == first.correlationid
    assert state["transferred_to"] == "customer_service"
    assert "transfer to customer_service" in transitions(emits)[-1]

    state, emits = receptionist.step(state, turn(receptionist, "u1", "AB1234", START + timedelta(seconds=5),
                                                 turn_id="t2"))
    assert replies(emits) == [] and [e.event.data["turn_id"] for e in emits] == ["t2"]
    assert on(emits, catalog.DIALOGUE_TURNS.name)[0].data["agent"] == "customer_service"


def test_the_agent_that_has_the_session_answers_and_transfers_it_on_through_the_entry() -> None:
    cs, receptionist = agent("customer_service"), agent("receptionist")
    state, emits = cs.step(None, turn(cs, "u2", "where is my order?", via="receptionist", turn_id="t1"))
    assert replies(emits) == ["Sure. What is your order number? It looks like AB1234."]
    assert all(e.event.data["in_reply_to"] == "t1" for e in emits if e.topic == catalog.DIALOGUE_REPLIES)
    assert state["entry"] == "receptionist"

    policy = load_policy_text("""
agent: desk
dialogues:
  - id: move
    trigger: "printer"
    actions: [{type: transfer, to: helpdesk, reason: "a printer question"}]
""", file="desk.yaml")
    desk = DialogueAgent(policy, DIRECTORY)
    moved, emits = desk.step(None, turn(desk, "u3", "my printer jams", via="receptionist", turn_id="t9"))
    (signal,) = on(emits, "agent.receptionist.signals")
    assert signal.data["kind"] == "transfer" and signal.data["name"] == "desk"
    assert on(emits, catalog.DIALOGUE_TURNS.name) == [], "the entry passes the turn on, not the desk"
    assert "entry" not in moved

    routed, emits = receptionist.step(None, deliver(signal, START))
    assert routed["transferred_to"] == "helpdesk"
    (forwarded,) = on(emits, catalog.DIALOGUE_TURNS.name)
    assert (forwarded.data["agent"], forwarded.data["via"], forwarded.data["turn_id"]) == ("helpdesk",
                                                                                           "receptionist", "t9")


def test_a_turn_handed_back_to_the_entry_is_its_own_again() -> None:
    receptionist = agent("receptionist")
    state, _ = receptionist.step(None, turn(receptionist, "u4", "where is my order?"))
    state, emits = receptionist.step(state, turn(receptionist, "u4", "hi", via="receptionist"))
    assert replies(emits)[0].startswith("Welcome!")
    assert "transferred_to" not in state


def test_an_idle_transferred_session_ends_quietly_at_the_entry() -> None:
    receptionist = agent("receptionist")
    state, _ = receptionist.step(None, turn(receptionist, "u5", "where is my order?"))
    (due,) = receptionist.sweep("u5", state, START + timedelta(hours=1))
    ended, emits = receptionist.step(state, due.event)
    assert replies(emits) == [] and ended["status"] == core.ENDED
    fresh, emits = receptionist.step(ended, turn(receptionist, "u5", "hi", START + timedelta(hours=2)))
    assert replies(emits)[0].startswith("Welcome!") and "transferred_to" not in fresh


async def test_the_recogniser_keeps_a_forwarded_turn_s_origin() -> None:
    stage = RecogniserStage({"customer_service": KeywordRecogniser(AGENTS["customer_service"])})
    forwarded = Event(type=catalog.DIALOGUE_TURNS.value_schema, source="/test", subject="u6", data={
        "session_id": "u6", "agent": "customer_service", "text": "where is my order?", "channel": "cli",
        "locale": None, "via": "receptionist", "turn_id": "user-turn"})
    (emit,) = await stage.handle(forwarded)
    assert (emit.event.data["via"], emit.event.data["turn_id"]) == ("receptionist", "user-turn")


# -- the directory ----------------------------------------------------------------------------------------------------
def test_cards_say_who_an_agent_is_and_what_it_answers() -> None:
    card = card_of(AGENTS["receptionist"])
    assert card.owner == "front office" and "customer service" in card.description
    assert card.intents == ("greet", "orders", "it_help") and card.capabilities == ()
    assert card_of(AGENTS["concierge"]).capabilities == ("greeting",)
    assert card_of(AGENTS["oracle"]).capabilities == ("forecast", "greeting")
    event = announcement(card, worker="w1")
    assert event.subject == "receptionist" and card_from(event.data) == card
    assert announcement(card, worker="w2").id == event.id, "every worker announces the same event"
    assert event.data["inbox"] == "agent.receptionist.signals"


# -- the loader ---------------------------------------------------------------------------------------------------
def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as error:
        load_policy_text(text, file="p.yaml", agent="p")
    return [str(problem) for problem in error.value.problems]


def test_the_loader_explains_wrong_collaboration_actions_with_file_and_line() -> None:
    found = problems("""
dialogues:
  - id: a
    trigger: "a"
    actions:
      - {type: delegate, to: x, capability: y, save_as: s}
  - id: b
    trigger: "b"
    actions:
      - {type: delegate, to: x, save_as: s}
  - id: c
    trigger: "c"
    actions:
      - {type: delegate, capability: y, collect: some, timeout: soon}
  - id: d
    trigger: "d"
    actions:
      - {type: delegate, capability: y, collect: none, on_timeout: a}
      - {type: transfer, to: "Not An Agent"}
      - {type: answer}
  - id: e
    trigger: "e"
    actions:
      - {type: delegate, capability: y, save_as: s, on_timeout: nowhere}
      - {type: reply, content: "never said"}
  - id: f
    trigger: {request: "bad name!"}
    actions: [{type: reply, content: "x"}]
""")
    expected = [
        "p.yaml:6: dialogue a: actions: delegate needs exactly one of `to:` (an agent) or `capability:`",
        "p.yaml:10: dialogue b: actions: delegate needs `request:`",
        "p.yaml:14: dialogue c: actions: delegate: collect must be one of first, all, none; it is 'some'",
        "p.yaml:14: dialogue c: actions: delegate: timeout must be seconds or a duration like 45s",
        "p.yaml:14: dialogue c: actions: delegate needs `save_as:`",
        "p.yaml:18: dialogue d: actions: delegate: `on_timeout:` has no use with `collect: none`",
        "p.yaml:19: dialogue d: actions: transfer: to: agent name 'Not An Agent' must be lower-case",
        "p.yaml:20: dialogue d: actions: answer needs `content:` (the answer's text), `data:` (its data) or both",
        "p.yaml:24: dialogue e: actions: delegate: on_timeout: jump to unknown node 'nowhere'",
        "p.yaml:25: dialogue e: actions: this action can never run: the delegate action on line 24",
        "p.yaml:27: dialogue f: trigger: request 'bad name!' must be a name",
    ]
    for text in expected:
        assert any(problem.startswith(text) for problem in found), (text, found)
