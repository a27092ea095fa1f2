"""The MQTT bridge's pure parts: topic filters and templates, route checks, payload conversion, the intake buffer."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import pytest

from infra.bridge_config import BridgeSettings, InboundRoute, OutboundRoute
from infra.config import load_settings
from streams.mqtt_bridge.inbound import IntakeBuffer
from streams.mqtt_bridge.mqtt_client import Backoff
from streams.mqtt_bridge.patterns import filters_overlap, parse_filter, parse_template
from streams.mqtt_bridge.payloads import PayloadError, to_payload, to_record
from streams.mqtt_bridge.routes import compile_routes
from streams.mqtt_bridge.status import BridgeStats
from topics import AvroCodec, ConfigError, EncodeError


@pytest.fixture(autouse=True)
def _no_outer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SWITCHBOARD_")]:
        monkeypatch.delenv(key)


# -- filters and templates -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "topic", "expected"), [
    ("sensors/{device_id}/{metric}", "sensors/d1/temperature", {"device_id": "d1", "metric": "temperature"}),
    ("sensors/+/temperature", "sensors/d1/temperature", {}),
    ("sensors/+/temperature", "sensors/d1/humidity", None),
    ("sensors/{device_id}/#", "sensors/d1/a/b", {"device_id": "d1"}),
    ("sensors/#", "sensors", {}),
    ("sensors/{device_id}", "sensors/d1/extra", None),
    ("sensors/{device_id}/x", "sensors/d1", None),
    ("+/status", "$SYS/status", None),
    ("#", "$SYS/broker", None),
    ("$SYS/#", "$SYS/broker", {}),
    ("a//b", "a//b", {}),
])
def test_filters_match_as_mqtt_does_and_capture_named_levels(pattern: str, topic: str,
                                                            expected: dict[str, str] | None) -> None:
    assert parse_filter(pattern).match(topic) == expected


def test_named_levels_are_subscribed_as_plus() -> None:
    pattern = parse_filter("sensors/{device_id}/{metric}")
    assert pattern.subscription == "sensors/+/+"
    assert pattern.wildcard_levels == (1, 2)


@pytest.mark.parametrize(("pattern", "message"), [
    ("", "cannot be empty"),
    ("a/#/b", "'#' must be the last level"),
    ("a/b+/c", "a wildcard or {name} must be a whole level"),
    ("a/{x}/{x}", "used twice"),
    ("a/{1x}", "a level name must be"),
    ("a/x{y}", "must be a whole level"),
])
def test_bad_filters_say_what_is_wrong(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}").replace("+", r"\+")):
        parse_filter(pattern)


def test_templates_render_whole_levels_and_refuse_unsafe_values() -> None:
    template = parse_template("devices/{device_id}/set")
    assert template.placeholders == ("device_id",)
    assert template.render({"device_id": "d1"}) == "devices/d1/set"
    assert template.as_filter().match("devices/d9/set") == {}
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(ValueError, match="cannot be an MQTT topic level"):
            template.render({"device_id": bad})
    with pytest.raises(ValueError, match="needs 'device_id'"):
        template.render({})
    with pytest.raises(ValueError, match="whole level"):
        parse_template("devices/+/set")


@pytest.mark.parametrize(("a", "b", "overlap"), [
    ("devices/#", "devices/+/set", True),
    ("devices/{id}/state", "devices/+/set", False),
    ("devices/{id}/{what}", "devices/+/set", True),
    ("a/b", "a/b/c", False),
    ("#", "x", True),
])
def test_overlap(a: str, b: str, overlap: bool) -> None:
    assert filters_overlap(parse_filter(a), parse_filter(b)) is overlap
    assert filters_overlap(parse_filter(b), parse_filter(a)) is overlap


# -- route settings: checked up front, errors name the key ----------------------------------------------------------
@pytest.mark.parametrize(("inbound", "message"), [
    ({"mqtt": "sensors/{device_id}/{metric}", "kafka": "iot.nope"}, "unknown topic 'iot.nope'"),
    ({"mqtt": "sensors/{device}/{metric}", "kafka": "iot.telemetry"}, "'device' is not a field of iot.telemetry"),
    ({"mqtt": "sensors/{device_id}/#/x", "kafka": "iot.telemetry"}, "'#' must be the last level"),
    ({"mqtt": "s/{device_id}/{metric}", "kafka": "iot.telemetry", "key": "metricx"}, "key 'metricx' is not"),
    ({"mqtt": "s/{device_id}/{metric}", "kafka": "iot.telemetry", "key": 0}, "key level 0"),
    ({"mqtt": "s/{device_id}/{metric}", "kafka": "iot.telemetry", "format": "raw", "payload_field": "value"},
     "payload_field 'value' must be a bytes, string or enum field"),
    ({"mqtt": "s/{device_id}/{metric}", "kafka": "iot.telemetry", "qos": 3}, "qos"),
])
def test_bad_inbound_routes_fail_naming_the_route(inbound: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(bridge={"inbound": [inbound]})
    assert "bridge.inbound.0" in str(info.value)
    assert message in str(info.value)


def test_bad_outbound_routes_and_environment_variables_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"bridge\.outbound\.0.*placeholder \{room\}"):
        load_settings(bridge={"outbound": [{"kafka": "devices.commands", "mqtt": "devices/{room}/set"}]})
    monkeypatch.setenv("SWITCHBOARD_BRIDGE__INBOUND", json.dumps([{"mqtt": "x/{device_id}", "kafka": "dialog"}]))
    with pytest.raises(ConfigError, match="SWITCHBOARD_BRIDGE__INBOUND"):
        load_settings()


def test_routes_travel_to_the_bridge_process_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(bridge={"inbound": [{"mqtt": "t/{device_id}/{metric}", "kafka": "iot.telemetry",
                                                  "fields": {"unit": "C"}, "qos": 2}]})
    for name, value in settings.environment().items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings


# -- compiled routes and payloads ------------------------------------------------------------------------------------
def _table(**bridge: Any) -> Any:
    return compile_routes(BridgeSettings(**bridge))


def test_default_routes() -> None:
    table = _table()
    assert table.subscriptions() == [("devices/+/state", 1), ("devices/+/status", 1), ("sensors/+/+", 1)]
    route, levels = table.route("sensors/d1/temperature") or (None, None)
    assert route is not None and route.spec.name == "iot.telemetry" and route.key("sensors/d1/temperature") == "d1"
    assert levels == {"device_id": "d1", "metric": "temperature"}
    assert table.route("elsewhere/d1") is None
    assert table.is_own("devices/d1/set") and table.is_own("switchboard/bridge/switchboard-bridge/status")
    assert not table.is_own("devices/d1/state")
    assert table.kafka_topics() == ["devices.commands"]
    assert table.warnings() == []


def test_keys_from_plain_wildcards_and_indexes() -> None:
    table = _table(inbound=[InboundRoute(mqtt="sensors/+/temperature", kafka="iot.telemetry",
                                         fields={"metric": "temperature"}),
                            InboundRoute(mqtt="site/+/{device_id}/x", kafka="iot.telemetry", key=1)])
    assert table.inbound[0].key("sensors/d7/temperature") == "d7"
    assert table.inbound[1].key("site/berlin/d8/x") == "berlin"


def test_an_inbound_filter_over_the_bridges_own_topics_is_warned_about() -> None:
    table = _table(inbound=[InboundRoute(mqtt="devices/{device_id}/{metric}", kafka="iot.telemetry")])
    assert any("loop prevention" in w and "devices/+/set" in w for w in table.warnings())
    assert table.is_own("devices/d1/set") and table.route("devices/d1/set") is not None


def test_json_payloads_become_records_the_topic_wins() -> None:
    route = _table().inbound[0]
    levels = {"device_id": "d1", "metric": "temperature"}
    record = to_record(route, "sensors/d1/temperature", b'{"value": 21, "unit": "C", "device_id": "spoof"}', levels)
    assert record == {"value": 21, "unit": "C", "device_id": "d1", "metric": "temperature"}
    AvroCodec().validate("switchboard.iot.Telemetry", record)
    assert to_record(route, "sensors/d1/temperature", b"21.5", levels)["value"] == 21.5
    for payload, reason in ((b"\xff", "not UTF-8"), (b"{", "not JSON"), (b"[1]", "JSON list")):
        with pytest.raises(PayloadError, match=reason):
            to_record(route, "sensors/d1/temperature", payload, levels)
    with pytest.raises(EncodeError, match="value is 'hot'"):
        AvroCodec().validate("switchboard.iot.Telemetry", to_record(route, "t", b'{"value": "hot"}', levels))


def test_raw_payloads_go_to_their_field() -> None:
    table = _table()
    presence = table.inbound[2]
    assert to_record(presence, "devices/d1/status", b"offline", {"device_id": "d1"}) == {
        "status": "offline", "device_id": "d1"}
    raw = _table(inbound=[InboundRoute(mqtt="b/{device_id}/{metric}", kafka="iot.telemetry", format="raw")])
    assert to_record(raw.inbound[0], "b/d/m", b"\x00\xff", {"device_id": "d", "metric": "m"})["payload"] == b"\x00\xff"


def test_outbound_topics_and_payloads() -> None:
    table = _table(outbound=[OutboundRoute(kafka="devices.commands", mqtt="devices/{device_id}/{name}"),
                             OutboundRoute(kafka="devices.commands", mqtt="raw/{key}", format="raw",
                                           payload_field="args")])
    data = {"target": "d1", "name": "turn_on", "args": '{"level": 3}', "agent": "a", "session_id": None}
    json_route, raw_route = table.outbound_for("devices.commands")
    assert json_route.topic_for("d1", data) == "devices/d1/turn_on"
    assert json.loads(to_payload(json_route, data)) == data
    assert raw_route.topic_for("d1", data) == "raw/d1"
    assert to_payload(raw_route, data) == b'{"level": 3}'
    with pytest.raises(ValueError, match="cannot be an MQTT topic level"):
        json_route.topic_for("d1", {**data, "name": "a/b"})


# -- back-pressure and backoff ----------------------------------------------------------------------------------------
async def test_the_intake_buffer_pauses_at_its_limit_and_resumes_at_half(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "switchboard.mqtt_bridge")
    stats = BridgeStats(mqtt_connected=True)
    buffer = IntakeBuffer(stats, max_messages=4, max_bytes=1000)
    for _ in range(3):
        buffer.add(10)
    await asyncio.wait_for(buffer.room(), 1)
    buffer.add(10)
    assert stats.intake_paused and stats.buffer_full_events == 1
    assert "buffer full (4/4 messages, 40/1000 bytes)" in (stats.problem() or "")
    waiter = asyncio.create_task(buffer.room())
    await asyncio.sleep(0)
    buffer.done(10)
    await asyncio.sleep(0)
    assert not waiter.done()  # 3 held: above half
    buffer.done(10)
    await asyncio.wait_for(waiter, 1)  # 2 held: half, reading resumes
    assert not stats.intake_paused
    assert "pausing MQTT intake" in caplog.text and "intake resumed" in caplog.text
    buffer.add(2000)  # one large payload hits the byte limit
    assert stats.intake_paused and stats.buffer_full_events == 2


def test_status_names_the_problem() -> None:
    stats = BridgeStats(mqtt_connected=True)
    assert stats.problem() is None
    stats.intake_paused, stats.buffer_messages, stats.buffer_limit_messages = True, 10, 10
    assert "buffer full (10/10 messages" in (stats.problem() or "")
    stats.kafka_ok, stats.kafka_error = False, "KafkaTimeoutError"
    assert "cannot write to Kafka (KafkaTimeoutError)" in (stats.problem() or "")
    stats.mqtt_connected = False
    assert "not connected to the MQTT broker" in (stats.problem() or "")


def test_backoff_doubles_up_to_its_ceiling_and_resets() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5
