"""The pure dialogue step: behaviour on the shipped agents, run-time policy errors, and properties (hypothesis):
any sequence of events leaves a valid state, and replaying a recorded log reproduces it exactly."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.dialogue import core
from agents.dialogue.effects import Effect, NotifyHandoff, RecordTransition, SendCommand, SendReply, StartWorkflow
from agents.dialogue.loader import load_policy_text
from agents.dialogue.model import Policy
from agents.dialogue.recognise import KeywordRecogniser
from agents.inline_workflows import run_inline
from agents.registry import AgentPackage, discover_agents
from topics.event import Event, derived_id

BASE = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
AGENTS = {agent.name: agent for agent in discover_agents()}


class Conversation:
    """Drives one session through `core.step` the way the processors do, workflows run inline."""

    def __init__(self, agent: AgentPackage, session: str = "s-1") -> None:
        self.agent = agent
        self.policy = agent.policy
        self.recogniser = KeywordRecogniser(agent.policy)
        self.session = session
        self.state: dict[str, Any] | None = None
        self.clock = BASE
        self.count = 0
        self.log: list[tuple[Event, dict[str, Any], list[Effect]]] = []

    def _event(self, schema: str, data: dict[str, Any], at: datetime | None) -> Event:
        self.count += 1
        self.clock = at or self.clock + timedelta(seconds=5)
        return Event(type=schema, source="/test", data=data, subject=self.session,
                     id=derived_id("test", f"{self.session}/{self.count}"), time=self.clock)

    def apply(self, event: Event) -> list[Effect]:
        self.state, effects = core.step(self.state, event, self.policy)
        json.dumps(self.state)  # always JSON
        self.log.append((event, self.state, effects))
        done = list(effects)
        for effect in effects:
            if isinstance(effect, StartWorkflow):
                result = run_inline(self.agent.workflows, effect.workflow, effect.input)
                done += self.signal("workflow_result", name=effect.workflow,
                                    data={"run_id": effect.run_id, **result})
        return done

    def say(self, text: str, at: datetime | None = None) -> list[str]:
        understanding = self.recogniser.recognise_now(text)
        data = {"session_id": self.session, "agent": self.policy.agent, "turn_id": f"turn-{self.count}",
                "text": text, "channel": "test", "locale": None, "intent": understanding.intent,
                "confidence": understanding.confidence,
                "entities": [{"name": e.name, "value": e.value, "start": e.start, "end": e.end}
                             for e in understanding.entities],
                "model": understanding.model}
        return replies(self.apply(self._event(core.UNDERSTOOD, data, at)))

    def signal(self, kind: str, *, name: str | None = None, text: str | None = None,
               data: dict[str, Any] | None = None, at: datetime | None = None) -> list[Effect]:
        payload = {"session_id": self.session, "agent": self.policy.agent, "kind": kind, "name": name,
                   "text": text, "data": json.dumps(data or {})}
        return self.apply(self._event(core.SIGNAL, payload, at))

    @property
    def label(self) -> str:
        assert self.state is not None
        st_ = self.state
        if st_["status"] != core.ACTIVE:
            return str(st_["status"])
        return f"{st_['flow']}/{st_['node']}" if st_["flow"] else core.IDLE


def replies(effects: Sequence[Effect]) -> list[str]:
    return [e.text for e in effects if isinstance(e, SendReply)]


README_EXAMPLE = """\
dialogues:
  - id: welcome
    trigger: "hi|hello|您好"
    actions:
      - type: reply
        content: "您好,我是您的数字助理,请描述您的需求"
      - type: set_context
        key: session_started
        value: true
"""


def test_readme_example_behaves_as_written() -> None:
    policy = load_policy_text(README_EXAMPLE, file="example.yaml", agent="example")
    chat = Conversation(AgentPackage(policy, folder=AGENTS["customer_service"].folder))
    assert chat.say("hello") == ["您好,我是您的数字助理,请描述您的需求"]
    assert chat.state is not None and chat.state["context"] == {"session_started": True}
    assert chat.say("您好") == ["您好,我是您的数字助理,请描述您的需求"]
    # "hi" is a word, not a substring: "this" does not greet.
    assert chat.say("this and that") != ["您好,我是您的数字助理,请描述您的需求"]


def test_order_status_form_workflow_and_memory() -> None:
    chat = Conversation(AGENTS["customer_service"])
    assert chat.say("hi") == ["您好,我是您的数字助理,请描述您的需求"]
    assert chat.say("where is my order?") == ["Sure. What is your order number? It looks like AB1234."]
    assert chat.label == "order_status/ask"
    bad = chat.say("123")
    assert bad[0].startswith('"123" is not an order number') and bad[1].startswith("Sure. What is your order")
    assert chat.say("it is cd5678") == [
        "Order CD5678 is in transit; UPS expects to deliver it on 2026-11-28."]
    assert chat.label == core.IDLE
    # The slot was filled from the entity in the triggering turn: no question asked.
    assert chat.say("where is my order AB1234") == ["Order AB1234 was delivered by DHL on 2026-11-20."]
    assert chat.say("hello") == ["Hello again! What else can I do for you?"]
    assert chat.state is not None and len(chat.state["history"]) <= chat.policy.settings.history


def test_unknown_order_goes_to_on_error() -> None:
    chat = Conversation(AGENTS["customer_service"])
    assert chat.say("track my order ZZ9999") == [
        "I could not find order ZZ9999. Please check the number on your confirmation email."]


def test_handoff_take_reply_release() -> None:
    chat = Conversation(AGENTS["customer_service"])
    chat.say("hi")
    out = chat.say("I want to talk to a human")
    assert out == [chat.policy.settings.handoff_reply]
    assert chat.label == "parked"
    effects = chat.say("hello? anyone?")
    assert effects == []  # the bot stays quiet while parked
    taken = chat.signal("human_take", name="alice")
    assert replies(taken) == ["You are now talking to alice."]
    said = chat.signal("human_reply", name="alice", text="Hi, Alice here.")
    assert [(e.text, e.author) for e in said if isinstance(e, SendReply)] == [("Hi, Alice here.", "human:alice")]
    released = chat.signal("human_release", name="alice")
    assert replies(released) == [chat.policy.settings.handoff_released_reply]
    assert any(isinstance(e, NotifyHandoff) and e.kind == "released" for e in released)
    assert chat.label == core.IDLE


def test_repeated_failure_hands_off() -> None:
    chat = Conversation(AGENTS["customer_service"])
    first = chat.say("blorp")
    assert first[0].startswith("Sorry, I did not understand")
    second = chat.say("flurb")
    assert second == [chat.policy.settings.handoff_reply]
    assert chat.label == "parked"


def test_session_timeout_on_next_turn_and_by_signal() -> None:
    chat = Conversation(AGENTS["customer_service"])
    chat.say("hi")
    later = BASE + timedelta(hours=3)
    # A stale timeout (activity since) does nothing; a due one closes the session.
    assert chat.signal("timeout", at=BASE + timedelta(seconds=30)) == []
    closed = chat.signal("timeout", at=later)
    assert replies(closed) == [chat.policy.settings.timeout_reply]
    assert chat.label == "ended"
    assert chat.say("hi", at=later + timedelta(seconds=1)) == ["您好,我是您的数字助理,请描述您的需求"]


def test_device_command_and_event_trigger() -> None:
    chat = Conversation(AGENTS["helpdesk"])
    effects = chat.apply(chat._event(core.UNDERSTOOD, _turn(chat, "the printer PRN-204 on floor 3 jams"), None))
    commands = [e for e in effects if isinstance(e, SendCommand)]
    assert [(c.topic, c.target, c.name) for c in commands] == [("devices.commands", "PRN-204", "restart")]
    alert = chat.signal("event", name="ops.incident", data={"service": "mail", "summary": "slow delivery"})
    assert replies(alert) == ["Heads-up: mail has an incident (slow delivery). We are on it."]


def _turn(chat: Conversation, text: str) -> dict[str, Any]:
    u = chat.recogniser.recognise_now(text)
    return {"session_id": chat.session, "agent": chat.policy.agent, "turn_id": "t", "text": text,
            "channel": "test", "locale": None, "intent": u.intent, "confidence": u.confidence,
            "entities": [{"name": e.name, "value": e.value, "start": e.start, "end": e.end} for e in u.entities],
            "model": u.model}


EVENTFUL = """\
dialogues:
  - id: survey
    trigger: {event: ops.survey}
    nodes:
      - id: ask
        actions: [{type: reply, content: "Quick question: did the outage affect you?"}]
        listen:
          - {regex: "yes|no", goto: noted}
      - id: noted
        actions: [{type: reply, content: "Noted, thank you."}]
  - id: notice
    trigger: {event: ops.notice}
    actions: [{type: reply, content: "Notice: {{ event.data.text }}"}]
  - id: farewell
    trigger: {event: ops.shutdown}
    actions: [{type: end, content: "We are closing for today."}]
  - id: order
    trigger: "order"
    nodes:
      - id: ask
        form:
          slots:
            - {name: number, ask: "Which order number?", pattern: "[A-Z]{2}\\\\d{4}"}
        next: fetch
      - id: fetch
        actions:
          - {type: call_workflow, workflow: order_status, input: {order_id: "{{ slots.number }}"}, save_as: order}
        next: tell
      - id: tell
        actions:
          - {type: reply, content: "Order {{ context.order.order_id }}: {{ context.order.status }}."}
          - {type: clear_slots}
"""


class _Holding(Conversation):
    """A conversation whose workflows are not run: the test sends their results when it chooses."""

    def apply(self, event: Event) -> list[Effect]:
        self.state, effects = core.step(self.state, event, self.policy)
        self.log.append((event, self.state, effects))
        return effects


def _eventful(hold_workflows: bool = False) -> Conversation:
    policy = load_policy_text(EVENTFUL, file="eventful.yaml", agent="eventful")
    package = AgentPackage(policy, folder=AGENTS["customer_service"].folder,
                           workflows=AGENTS["customer_service"].workflows)
    return _Holding(package) if hold_workflows else Conversation(package)


def test_an_event_dialogue_runs_without_dropping_a_waiting_form() -> None:
    chat = _eventful()
    assert chat.say("order") == ["Which order number?"]
    assert replies(chat.signal("event", name="ops.notice", data={"text": "maintenance at 18:00"})) == [
        "Notice: maintenance at 18:00"]
    assert chat.label == "order/ask"
    assert chat.state is not None and chat.state["await"] == {"kind": "slot", "slot": "number", "attempts": 0}
    assert chat.state["suspended"] == []
    assert chat.say("CD5678") == ["Order CD5678: in transit."]


def test_an_event_dialogue_that_asks_is_answered_first_then_the_form_goes_on() -> None:
    chat = _eventful()
    chat.say("order")
    assert replies(chat.signal("event", name="ops.survey")) == ["Quick question: did the outage affect you?"]
    assert chat.label == "survey/ask"
    assert chat.state is not None and [e["flow"] for e in chat.state["suspended"]] == ["order"]
    assert chat.say("no") == ["Noted, thank you."]
    assert chat.label == "order/ask"  # back where it waited, no re-prompt
    assert chat.state is not None and chat.state["suspended"] == []
    assert chat.say("AB1234") == ["Order AB1234: delivered."]


def test_a_workflow_result_for_a_set_aside_dialogue_is_kept_until_it_resumes() -> None:
    chat = _eventful(hold_workflows=True)
    chat.say("order")
    started = [e for e in chat.apply(chat._event(core.UNDERSTOOD, _turn(chat, "AB1234"), None))
               if isinstance(e, StartWorkflow)]
    assert chat.label == "order/fetch" and len(started) == 1
    chat.signal("event", name="ops.survey")
    # The result arrives while the survey's question waits: kept for the order dialogue, nothing said yet.
    result = run_inline(AGENTS["customer_service"].workflows, "order_status", started[0].input)
    kept = chat.signal("workflow_result", name="order_status", data={"run_id": started[0].run_id, **result})
    assert replies(kept) == [] and chat.label == "survey/ask"
    assert any(isinstance(e, RecordTransition) and e.reason.startswith("kept the result") for e in kept)
    # Answering the survey finishes it; the order dialogue resumes and applies the kept result.
    assert chat.say("yes") == ["Noted, thank you.", "Order AB1234: delivered."]
    assert chat.label == core.IDLE


def test_an_event_dialogue_that_ends_or_hands_off_drops_what_it_set_aside() -> None:
    chat = _eventful()
    chat.say("order")
    chat.signal("event", name="ops.survey")
    assert replies(chat.signal("event", name="ops.shutdown")) == ["We are closing for today."]
    assert chat.label == "ended" and chat.state is not None and chat.state["suspended"] == []
    chat = _eventful()
    chat.say("order")
    chat.signal("event", name="ops.survey")
    chat.signal("human_take", name="alice")
    assert chat.state is not None and chat.state["suspended"] == []
    chat.signal("human_release", name="alice")
    assert chat.label == core.IDLE


def test_an_event_that_matches_nothing_leaves_the_waiting_dialogue_alone() -> None:
    chat = _eventful()
    chat.say("order")
    effects = chat.signal("event", name="ops.unknown")
    assert replies(effects) == [] and chat.label == "order/ask"
    assert chat.state is not None and chat.state["suspended"] == []


def test_password_escalation_names_the_user_and_starts_counting_afresh() -> None:
    chat = Conversation(AGENTS["helpdesk"])
    chat.say("I forgot my password")
    chat.say("zed")
    effects = chat.apply(chat._event(core.UNDERSTOOD, _turn(chat, "Zed.Miller"), None))
    (handoff,) = [e for e in effects if isinstance(e, NotifyHandoff) and e.kind == "requested"]
    assert handoff.reason == "password reset failed for zed.miller"
    assert chat.state is not None and "username" not in chat.state["slots"]
    assert "failed_resets" not in chat.state["context"]


def test_password_escalation_without_a_valid_username() -> None:
    chat = Conversation(AGENTS["helpdesk"])
    chat.say("I forgot my password")
    chat.say("!!")
    effects = chat.apply(chat._event(core.UNDERSTOOD, _turn(chat, "??"), None))
    (handoff,) = [e for e in effects if isinstance(e, NotifyHandoff) and e.kind == "requested"]
    assert handoff.reason == "password reset failed for a user who gave no valid username"


LOOPING = """\
dialogues:
  - id: loop
    trigger: "spin"
    nodes:
      - id: a
        next: b
      - id: b
        next: a
  - id: broken
    trigger: "divide"
    actions:
      - type: set_context
        key: x
        value: "{{ 1 / 0 }}"
"""


@pytest.mark.parametrize("text", ["spin", "divide"])
def test_runtime_policy_error_is_reported_and_the_session_goes_on(text: str) -> None:
    policy = load_policy_text(LOOPING, file="loop.yaml", agent="loop")
    chat = Conversation(AgentPackage(policy, folder=AGENTS["customer_service"].folder))
    effects = chat.apply(chat._event(core.UNDERSTOOD, _turn(chat, text), None))
    assert replies(effects) == [policy.settings.error_reply]
    errors = [e for e in effects if isinstance(e, RecordTransition) and e.reason.startswith("error:")]
    assert errors and "loop.yaml:" in errors[0].reason
    assert chat.label == core.IDLE
    assert chat.say("spin again?")  # still answering


# --- properties ---------------------------------------------------------------------------------------------------

TEXTS = ["hi", "hello", "where is my order", "AB1234", "CD5678", "ZZ9999", "123", "yes", "no", "cancel",
         "talk to a human", "bye", "my printer is broken", "it does not work at all", "a@b.co", "not an email",
         "what are your opening hours", "refund", "", "PRN-204", "vpn", "password", "alice", "escalate", "您好"]
EVENTS = st.one_of(
    st.tuples(st.just("say"), st.sampled_from(TEXTS) | st.text(max_size=30)),
    st.tuples(st.just("signal"), st.sampled_from(["human_take", "human_reply", "human_release", "timeout", "event"])),
    st.tuples(st.just("wait"), st.sampled_from([1, 600, 7200])),
)


def _valid(state: dict[str, Any], policy: Policy) -> None:
    assert state["status"] in (core.ACTIVE, core.PARKED, core.ENDED)
    if state["flow"] is not None:
        dialogue = policy.dialogue(state["flow"])
        assert dialogue is not None and dialogue.node(state["node"]) is not None
    waiting = state["await"]
    if waiting is not None:
        assert state["flow"] is not None and waiting["kind"] in ("listen", "slot", "workflow")
    if state["status"] != core.ACTIVE:
        assert state["await"] is None
        assert state["suspended"] == []
    elif state["suspended"]:
        assert state["flow"] is not None  # the session goes back to them when the dialogue on top is done
    assert len(state["suspended"]) <= core.SUSPEND_LIMIT
    for entry in state["suspended"]:
        dialogue = policy.dialogue(entry["flow"])
        assert dialogue is not None and dialogue.node(entry["node"]) is not None
        assert entry["await"]["kind"] in ("listen", "slot", "workflow")
    assert len(state["history"]) <= policy.settings.history
    assert state["fallbacks"] >= 0
    json.dumps(state)


def _drive(chat: Conversation, script: Sequence[tuple[str, Any]]) -> None:
    for kind, arg in script:
        if kind == "say":
            chat.say(arg)
        elif kind == "wait":
            chat.clock += timedelta(seconds=arg)
            continue
        elif arg == "event":
            chat.signal("event", name="ops.incident", data={"service": "vpn", "summary": "down"})
        else:
            chat.signal(arg, name="bob", text="hello from bob")
        assert chat.state is not None
        _valid(chat.state, chat.policy)


@pytest.mark.parametrize("agent", sorted(AGENTS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(EVENTS, max_size=25))
def test_any_sequence_of_events_leaves_a_valid_state(agent: str, script: list[tuple[str, Any]]) -> None:
    _drive(Conversation(AGENTS[agent]), script)


@pytest.mark.parametrize("agent", sorted(AGENTS))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(EVENTS, max_size=25))
def test_replaying_the_log_reproduces_replies_and_transitions(agent: str, script: list[tuple[str, Any]]) -> None:
    chat = Conversation(AGENTS[agent])
    _drive(chat, script)
    state: dict[str, Any] | None = None
    for event, recorded_state, recorded_effects in chat.log:
        state, effects = core.step(state, event, chat.policy)
        assert effects == recorded_effects
        assert state == recorded_state


EVENTFUL_SCRIPT = st.lists(st.one_of(
    st.tuples(st.just("say"), st.sampled_from(["order", "AB1234", "ZZ0000", "x", "yes", "no", "order CD5678"])),
    st.tuples(st.just("event"), st.sampled_from(["ops.survey", "ops.notice", "ops.shutdown", "ops.unknown"])),
    st.tuples(st.just("signal"), st.sampled_from(["human_take", "human_release", "result"])),
), max_size=30)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=EVENTFUL_SCRIPT)
def test_events_on_waiting_dialogues_leave_a_valid_state_and_replay_exactly(script: list[tuple[str, str]]) -> None:
    chat = _eventful(hold_workflows=True)
    pending: list[StartWorkflow] = []
    for kind, arg in script:
        if kind == "say":
            effects = chat.apply(chat._event(core.UNDERSTOOD, _turn(chat, arg), None))
        elif kind == "event":
            effects = chat.signal("event", name=arg, data={"text": "t"})
        elif arg == "result":
            if not pending:
                continue
            run = pending.pop(0)  # results come late, in any interleaving with events and turns
            result = run_inline(AGENTS["customer_service"].workflows, run.workflow, run.input)
            effects = chat.signal("workflow_result", name=run.workflow, data={"run_id": run.run_id, **result})
        else:
            effects = chat.signal(arg, name="bob")
        pending += [e for e in effects if isinstance(e, StartWorkflow)]
        assert chat.state is not None
        _valid(chat.state, chat.policy)
    state: dict[str, Any] | None = None
    for event, recorded_state, recorded_effects in chat.log:
        state, effects = core.step(state, event, chat.policy)
        assert effects == recorded_effects and state == recorded_state


def test_a_result_that_comes_before_its_request_is_applied_again_after_a_crash_is_not_lost() -> None:
    """A worker applies "AB1234" (the order lookup starts), publishes, and dies before it stores the new state. The
    restarted worker reads the workflow's result (another topic) before the redelivered turn: the result is kept,
    and when the turn is applied again it starts the same run (same id) and answers from the kept result."""
    chat = Conversation(AGENTS["customer_service"])
    chat.say("where is my order?")
    before = copy.deepcopy(chat.state)
    turn = chat._event(core.UNDERSTOOD, {**_turn(chat, "AB1234")}, None)
    _, effects = core.step(copy.deepcopy(before), turn, chat.policy)  # applied, effects out; the state is lost
    [started] = [e for e in effects if isinstance(e, StartWorkflow)]
    result = run_inline(AGENTS["customer_service"].workflows, "order_status", started.input)
    chat.state = before
    kept = chat.signal("workflow_result", name="order_status", data={"run_id": started.run_id, **result})
    assert replies(kept) == [] and chat.label == "order_status/ask"
    chat.state, again = core.step(chat.state, turn, chat.policy)  # the turn, redelivered
    assert [e.run_id for e in again if isinstance(e, StartWorkflow)] == [started.run_id]
    assert replies(again) == ["Order AB1234 was delivered by DHL on 2026-11-20."]
    assert chat.label == core.IDLE and "early_results" not in chat.state
