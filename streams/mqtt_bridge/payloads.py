"""MQTT payloads to Avro records (the way in) and event payloads to MQTT payloads (the way out). Pure.

The record built here is then validated against the Kafka topic's schema when it is encoded; any problem on the
way in is a `PayloadError` whose message becomes the dead letter's reason.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from streams.mqtt_bridge.routes import Inbound, Outbound
from topics.errors import EventError


class PayloadError(EventError):
    """An MQTT payload cannot become an event of its route's topic; the bridge dead-letters it with this reason."""


def _text(payload: bytes, topic: str) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload on {topic} is not UTF-8 text (byte {exc.start}); publish UTF-8, or map the "
                           "topic with format raw to a bytes field") from None


def _accepts_bytes(avro_type: Any) -> bool:
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    return "bytes" in branches


def to_record(route: Inbound, topic: str, payload: bytes, levels: Mapping[str, str]) -> dict[str, Any]:
    """The Avro record for `payload`: the payload's fields, then the route's constant fields, then the named
    topic levels (the topic wins: it is what the broker authorised)."""
    config = route.config
    parsed: dict[str, Any]
    if config.format == "raw":
        field = config.payload_field
        parsed = {field: payload if _accepts_bytes(route.fields[field]) else _text(payload, topic)}
    else:
        text = _text(payload, topic)
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise PayloadError(f"payload on {topic} is not JSON ({exc}); publish a JSON object, or map the topic "
                               "with format raw") from None
        if isinstance(value, dict):
            parsed = value
        elif isinstance(value, int | float | str | bool) and "value" in route.fields:
            parsed = {"value": value}
        else:
            raise PayloadError(f"payload on {topic} is a JSON {type(value).__name__}, not an object with the fields "
                               f"of {route.spec.value_schema}")
    return {**parsed, **config.fields, **levels}


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_payload(route: Outbound, data: Mapping[str, Any]) -> bytes:
    """The MQTT payload of an event's data: a compact JSON object, or one field's bytes/text (format raw)."""
    if route.config.format == "raw":
        value = data.get(route.config.payload_field)
        if value is None:
            return b""
        if isinstance(value, bytes):
            return value
        return str(value).encode("utf-8")
    return json.dumps(dict(data), default=_json_default, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
