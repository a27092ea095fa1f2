"""The IoT side of dialogues, without a broker: the `iot:` policy section, the device twin, the device-query router,
the alert dispatcher, and the smart-office agent answering from telemetry, every event through the Avro codec."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.dialogue.errors import PolicyError
from agents.dialogue.expressions import compile_expression
from agents.dialogue.loader import load_policy, load_policy_text
from agents.dialogue.model import SCOPE_NAMES, Policy
from agents.dialogue.processor import DialogueAgent
from agents.iot.alerts import AlertDispatcher
from agents.iot.queries import DeviceQueryRouter
from agents.iot.registry import IOT_WORKFLOWS, iot_processors
from agents.iot.twins import DeviceTwins
from topics import catalog
from topics.binding import decode_event, encode_event
from topics.codec import AvroCodec
from topics.event import Event
from topics.processor import Emit, State

OFFICE = Path(__file__).resolve().parents[2] / "agents" / "smart_office" / "policy.yaml"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
CODEC = AvroCodec()


def wire(event: Event) -> Event:
    """The event as a consumer decodes it: checks it against its schema on the way."""
    record = encode_event(event, CODEC)
    return decode_event(record.value, record.headers, CODEC)


def emitted(emits: Any) -> list[Emit]:
    return [Emit(emit.topic, wire(emit.event)) for emit in emits]


def telemetry(device: str, value: float, at: datetime, metric: str = "temperature") -> Event:
    return wire(Event(type="switchboard.iot.Telemetry", source="/tests", subject=device, time=at,
                      data={"device_id": device, "metric": metric, "value": value, "unit": "C", "state": None,
                            "payload": None}))


def turn(agent: str, session: str, text: str, at: datetime, intent: str | None = None,
         entities: list[dict[str, Any]] | None = None) -> Event:
    from agents.dialogue.recognise import KeywordRecogniser

    policy = load_policy(OFFICE)
    understanding = KeywordRecogniser(policy).recognise_now(text)
    data = {"session_id": session, "agent": agent, "turn_id": f"turn-{text}", "text": text, "channel": "test",
            "locale": None, "intent": intent or understanding.intent, "confidence": 1.0,
            "entities": entities if entities is not None else [
                {"name": e.name, "value": e.value, "start": e.start, "end": e.end} for e in understanding.entities],
            "model": "keyword"}
    return wire(Event(type="switchboard.dialogue.Understood", source="/tests", subject=session, time=at, data=data))


# --- the policy section -------------------------------------------------------------------------------------------

POLICY = """\
iot:
  rooms:
    "2": {thermometer: sim-2, fan: fan-2}
  rules:
    - {id: hot, room: "2", device: thermometer, metric: temperature, above: 30, event: office.too_hot}
    - {id: cold, device: sim-9, metric: temperature, below: 15, event: office.too_hot}
dialogues:
  - id: hot
    trigger: {event: office.too_hot}
    actions: [{type: reply, content: "{{ get(iot.rooms, event.data.room).fan }} of {{ iot.room_names }}"}]
"""


def test_rooms_and_rules_load_and_resolve_devices() -> None:
    policy = load_policy_text(POLICY, agent="t")
    assert policy.iot.scope() == {"rooms": {"2": {"thermometer": "sim-2", "fan": "fan-2"}}, "room_names": ["2"]}
    hot, cold = policy.iot.rules
    assert (hot.device_id, hot.room, hot.condition, hot.threshold) == ("sim-2", "2", "above", 30.0)
    assert (cold.device_id, cold.room, cold.condition, cold.threshold) == ("sim-9", None, "below", 15.0)
    assert hot.holds(30.5) and not hot.holds(30.0) and cold.holds(14.9) and not cold.holds(15.0)
    assert "iot" in SCOPE_NAMES
    hash(policy)  # rooms are tuples: a policy stays hashable


@pytest.mark.parametrize(("change", "line", "fragment"), [
    (('"2": {thermometer: sim-2, fan: fan-2}', '"2": {thermometer: "sim/2", fan: fan-2}'), 3,
     "cannot be an MQTT topic level"),
    (('room: "2", device: thermometer', 'room: "7", device: thermometer'), 5, "room '7' is not in iot.rooms (2)"),
    (('room: "2", device: thermometer', 'room: "2", device: heater'), 5,
     "room 2 has no device 'heater'; its devices: thermometer, fan"),
    (("above: 30,", "above: 30, below: 10,"), 5, "needs exactly one of `above` and `below`"),
    (("above: 30,", "above: hot,"), 5, "above must be a number"),
    (("id: cold", "id: hot"), 6, "rule 'hot' is defined twice (first on line 5)"),
    (("below: 15, event: office.too_hot", "below: 15, event: office.too_cold"), 6,
     "raises event 'office.too_cold', which no dialogue's trigger handles"),
    (("  rules:", "  rulez:"), 4, "unknown key 'rulez'"),
])
def test_iot_problems_name_their_line(change: tuple[str, str], line: int, fragment: str) -> None:
    text = POLICY.replace(*change)
    assert text != POLICY
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, file="p.yaml", agent="t")
    assert any(p.line == line and fragment in p.message for p in caught.value.problems), caught.value.problems


def test_get_looks_up_a_computed_key() -> None:
    scope = {"iot": {"rooms": {"2": {"fan": "fan-2"}}}, "slots": {"room": "2"}}
    assert compile_expression("get(iot.rooms, slots.room).fan", names=SCOPE_NAMES).evaluate(scope) == "fan-2"
    assert compile_expression("get(iot.rooms, slots.nope)", names=SCOPE_NAMES).evaluate(scope) is None
    assert compile_expression("get(slots, 'room')", names=SCOPE_NAMES).evaluate(scope) == "2"


# --- the device twin ----------------------------------------------------------------------------------------------


def office() -> Policy:
    return load_policy(OFFICE)


def twins() -> DeviceTwins:
    policy = office()
    return DeviceTwins([(policy.agent, rule) for rule in policy.iot.rules])


def test_the_twin_keeps_the_latest_reading_and_publishes_it() -> None:
    twin = twins()
    state: State = twin.initial("sim-2")
    state, out = twin.step(state, telemetry("sim-2", 22.5, T0))
    state, out = twin.step(state, telemetry("sim-2", 23.0, T0 + timedelta(seconds=2)))
    [snapshot] = emitted(out)
    assert snapshot.topic == catalog.IOT_TWINS and snapshot.event.subject == "sim-2"
    assert [(r["metric"], r["value"]) for r in snapshot.event.data["readings"]] == [("temperature", 23.0)]
    assert state["readings"]["temperature"]["value"] == 23.0


def test_a_rule_fires_once_per_crossing_and_rearms() -> None:
    twin = twins()
    state: State = twin.initial("sim-2")
    alerts = []
    for second, value in enumerate([29.0, 31.0, 32.0, 29.5, 30.5]):
        state, out = twin.step(state, telemetry("sim-2", value, T0 + timedelta(seconds=second)))
        alerts += [e.event for e in emitted(out) if e.topic == catalog.IOT_ALERTS]
    assert [a.data["value"] for a in alerts] == [31.0, 30.5]
    assert alerts[0].subject == "smart_office"
    assert {k: alerts[0].data[k] for k in ("agent", "rule", "event", "device_id", "room", "condition",
                                           "threshold")} == {
        "agent": "smart_office", "rule": "room_2_hot", "event": "office.too_hot", "device_id": "sim-2",
        "room": "2", "condition": "above", "threshold": 30.0}


def test_other_devices_and_metrics_raise_nothing() -> None:
    twin = twins()
    _, out = twin.step(twin.initial("sim-9"), telemetry("sim-9", 40.0, T0))
    _, out2 = twin.step(twin.initial("sim-2"), telemetry("sim-2", 40.0, T0, metric="humidity"))
    assert [e.topic for e in [*out, *out2]] == [catalog.IOT_TWINS, catalog.IOT_TWINS]


# --- the whole chain: turn -> request -> router -> twin -> result -> reply ----------------------------------------


def run_chain(twin_state: State, text: str, at: datetime) -> tuple[list[str], list[Emit]]:
    """One turn of a smart-office session, every hop through the real processors and the codec."""
    agent = DialogueAgent(office())
    router, twin = DeviceQueryRouter(), twins()
    state, out = agent.step(agent.initial("s1"), turn("smart_office", "s1", text, at))
    out = emitted(out)
    requests = [e.event for e in out if e.topic == catalog.WORKFLOW_REQUESTS]
    replies = [e.event.data["text"] for e in out if e.topic == catalog.DIALOGUE_REPLIES]
    for request in requests:
        [query] = emitted(router.handle(request))
        assert query.topic == catalog.IOT_QUERIES and query.event.subject == "sim-2"
        _, answers = twin.step(twin_state, query.event)
        [result] = emitted(answers)
        # Replay: the query as logged gives the same answer, event for event (its age comes from the log's times).
        assert emitted(twin.step(twin_state, query.event)[1]) == [result]
        assert result.topic == catalog.agent_topics("smart_office").signals
        state, more = agent.step(state, result.event)
        replies += [e.event.data["text"] for e in emitted(more) if e.topic == catalog.DIALOGUE_REPLIES]
    return replies, out


def test_the_agent_answers_from_the_latest_telemetry() -> None:
    twin = twins()
    state, _ = twin.step(twin.initial("sim-2"), telemetry("sim-2", 24.5, T0))
    replies, out = run_chain(state, "what's the temperature in room 2?", T0 + timedelta(seconds=7))
    [reply] = replies
    request = next(e.event for e in out if e.topic == catalog.WORKFLOW_REQUESTS)
    age = int((request.time - T0).total_seconds())  # the request's time: when the agent asked
    assert reply == f"Room 2 is at 24.5 C (measured {age} s ago by sim-2)."
    watch = [e.event for e in out if e.topic == catalog.IOT_SUBSCRIPTIONS]
    assert [(w.subject, w.data["name"], w.data["session_id"]) for w in watch] == [("smart_office", "watch", "s1")]


def test_no_reading_yet_is_said_plainly() -> None:
    replies, _ = run_chain(twins().initial("sim-2"), "how warm is it in room 2", T0)
    assert replies == ["I have no temperature from room 2 yet: no temperature reading from device sim-2 has "
                       "arrived yet (it has reported: nothing)."]


def test_turning_on_a_fan_sends_the_command_to_the_rooms_device() -> None:
    agent = DialogueAgent(office())
    _, out = agent.step(agent.initial("s1"), turn("smart_office", "s1", "turn on the fan in room 2", T0))
    [command] = [e.event for e in emitted(out) if e.topic == catalog.DEVICE_COMMANDS]
    assert command.subject == "sim-2"
    assert (command.data["target"], command.data["name"]) == ("sim-2", "turn_on")
    assert json.loads(command.data["args"]) == {"room": "2", "requested_by": "s1"}


def test_the_router_answers_a_request_it_cannot_forward() -> None:
    request = wire(Event(type="switchboard.workflow.Request", source="/tests", subject="run-1", data={
        "run_id": "run-1", "workflow": "device_reading", "input": json.dumps({"metric": "temperature"}),
        "requester": "smart_office", "reply_to": "agent.smart_office.signals", "reply_key": "s1"}))
    [result] = emitted(DeviceQueryRouter().handle(request))
    assert result.event.subject == "s1"
    data = json.loads(result.event.data["data"])
    assert data["status"] == "failed" and "needs input device_id" in data["error"]
    other = request.with_data({**request.data, "workflow": "order_status"})
    assert DeviceQueryRouter().handle(other) == ()


# --- alerts to watching sessions ----------------------------------------------------------------------------------


def subscription(session: str, name: str, at: datetime, ttl_s: float = 1800) -> Event:
    return wire(Event(type="switchboard.agents.Command", source="/tests", subject="smart_office", time=at, data={
        "target": "smart_office", "name": name, "args": json.dumps({"ttl_s": ttl_s}), "agent": "smart_office",
        "session_id": session}))


def alert(at: datetime) -> Event:
    twin = twins()
    state, _ = twin.step(twin.initial("sim-2"), telemetry("sim-2", 20.0, at))
    _, out = twin.step(state, telemetry("sim-2", 31.0, at))
    return next(e.event for e in emitted(out) if e.topic == catalog.IOT_ALERTS)


def test_alerts_reach_the_sessions_that_watch_while_their_watch_lasts() -> None:
    dispatcher = AlertDispatcher()
    state = dispatcher.initial("smart_office")
    state, _ = dispatcher.step(state, subscription("s1", "watch", T0))
    state, _ = dispatcher.step(state, subscription("s2", "watch", T0, ttl_s=60))
    state, _ = dispatcher.step(state, subscription("s3", "watch", T0))
    state, _ = dispatcher.step(state, subscription("s3", "unwatch", T0))
    state, out = dispatcher.step(state, alert(T0 + timedelta(minutes=5)))  # s2's watch has run out
    signals = [e for e in emitted(out)]
    assert [(s.topic.name, s.event.subject) for s in signals] == [("agent.smart_office.signals", "s1")]
    data = signals[0].event.data
    assert (data["kind"], data["name"]) == ("event", "office.too_hot")
    assert json.loads(data["data"])["room"] == "2"
    assert list(state["watchers"]) == ["smart_office/s1"]


def test_a_watch_without_session_is_refused_with_what_to_do() -> None:
    event = subscription("s1", "watch", T0)
    event = event.with_data({**event.data, "session_id": None})
    with pytest.raises(ValueError, match="needs a session_id"):
        AlertDispatcher().step({"watchers": {}}, event)


def test_iot_processors_run_where_a_policy_declares_iot() -> None:
    assert iot_processors([]) == []
    names = [p.name for p in iot_processors([office()])]
    assert names == ["iot-queries", "iot-twins", "iot-alerts"]
    assert IOT_WORKFLOWS == ("device_reading",)


def test_the_twin_and_queries_are_co_partitioned() -> None:
    assert catalog.IOT_QUERIES.partitions == catalog.IOT_TELEMETRY.partitions
    assert catalog.IOT_SUBSCRIPTIONS.partitions == catalog.IOT_ALERTS.partitions
