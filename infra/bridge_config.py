"""Settings of the MQTT bridge (`[bridge]`): the mappings between MQTT topics and Kafka topics, and its limits.

Each route is checked up front against the topic catalog and the Kafka topic's Avro schema, so a typo in a topic,
a level name or a field fails at start-up with the key named, not at the first message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from streams.mqtt_bridge.patterns import parse_filter, parse_template
from topics import catalog
from topics.errors import SwitchboardError

Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _schema_fields(topic: str) -> dict[str, Any]:
    """Field name -> Avro type of the topic's current schema."""
    from topics.schema_store import default_store

    schema = default_store().current(catalog.get(topic).value_schema)
    return {field["name"]: field["type"] for field in schema.definition["fields"]}


def _accepts(avro_type: Any, *kinds: str) -> bool:
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    return any(b in kinds or (isinstance(b, dict) and b.get("type") in kinds) for b in branches)


def _check_topic(value: str) -> str:
    try:
        catalog.get(value)
    except SwitchboardError as exc:
        raise ValueError(str(exc)) from None
    return value


class InboundRoute(_Model):
    """MQTT -> Kafka: messages matching `mqtt` become events on `kafka`, validated against its schema."""

    mqtt: str = Field(description="MQTT topic filter; `{name}` levels are single-level wildcards whose values "
                                  "become payload fields, e.g. sensors/{device_id}/{metric}")
    kafka: str = Field(description="declared Kafka topic (topics/catalog.py) the events go to")
    format: Literal["json", "raw"] = Field("json", description="json: the payload is a JSON object (a bare "
        "number or string becomes field `value`); raw: the payload bytes go to `payload_field`")
    key: str | int | None = Field(None, description="the level giving the Kafka key: a `{name}` or a level "
                                                    "index; default the first wildcard level")
    qos: Literal[0, 1, 2] = Field(1, description="subscription QoS; with 1 and 2 a message is acknowledged only "
                                                 "after Kafka acknowledged its event")
    fields: dict[str, Scalar] = Field(default_factory=dict, description="constant fields added to every payload")
    payload_field: str = Field("payload", description="for format raw: the schema field the payload goes to "
                                                      "(bytes, or string for UTF-8 text)")

    @field_validator("mqtt")
    @classmethod
    def _filter(cls, value: str) -> str:
        parse_filter(value)
        return value

    _topic = field_validator("kafka")(_check_topic)

    @model_validator(mode="after")
    def _against_schema(self) -> InboundRoute:
        pattern = parse_filter(self.mqtt)
        schema = _schema_fields(self.kafka)
        names = [name for _, name in pattern.names]
        for name in [*names, *self.fields]:
            if name not in schema:
                raise ValueError(f"{name!r} is not a field of {self.kafka}'s schema ({', '.join(schema)})")
        if self.format == "raw" and (self.payload_field not in schema
                                     or not _accepts(schema[self.payload_field], "bytes", "string", "enum")):
            raise ValueError(f"payload_field {self.payload_field!r} must be a bytes, string or enum field of "
                             f"{self.kafka}'s schema")
        if isinstance(self.key, str) and self.key not in names:
            raise ValueError(f"key {self.key!r} is not a named level of {self.mqtt!r} (named: {names or 'none'})")
        if isinstance(self.key, int) and self.key not in pattern.wildcard_levels:
            raise ValueError(f"key level {self.key} of {self.mqtt!r} is not a wildcard level "
                             f"(wildcard levels: {list(pattern.wildcard_levels)})")
        return self


class OutboundRoute(_Model):
    """Kafka -> MQTT: events on `kafka` are published to the topic `mqtt` renders for them."""

    kafka: str = Field(description="declared Kafka topic to bridge to MQTT")
    mqtt: str = Field(description="MQTT topic template; placeholders are payload fields, `key` and `key_as`, "
                                  "e.g. devices/{device_id}/set")
    format: Literal["json", "raw"] = Field("json", description="json: the event's payload as a JSON object; "
                                                               "raw: the bytes (or text) of `payload_field`")
    qos: Literal[0, 1, 2] = Field(1, description="publish QoS; with 1 and 2 the Kafka offset is committed only "
                                                 "after the broker acknowledged")
    retain: bool = Field(False, description="publish retained (a device connecting later gets the last one)")
    key_as: str = Field("device_id", description="another name for the Kafka key in the template")
    payload_field: str = Field("payload", description="for format raw: the field whose value is published")

    _topic = field_validator("kafka")(_check_topic)

    @field_validator("mqtt")
    @classmethod
    def _template(cls, value: str) -> str:
        parse_template(value)
        return value

    @model_validator(mode="after")
    def _against_schema(self) -> OutboundRoute:
        schema = _schema_fields(self.kafka)
        known = {*schema, "key", self.key_as}
        for name in parse_template(self.mqtt).placeholders:
            if name not in known:
                raise ValueError(f"placeholder {{{name}}} of {self.mqtt!r} is none of key, {self.key_as} and the "
                                 f"fields of {self.kafka}'s schema ({', '.join(schema)})")
        if self.format == "raw" and self.payload_field not in schema:
            raise ValueError(f"payload_field {self.payload_field!r} is not a field of {self.kafka}'s schema")
        return self


def default_inbound() -> tuple[InboundRoute, ...]:
    return (
        InboundRoute(mqtt="sensors/{device_id}/{metric}", kafka=catalog.IOT_TELEMETRY.name),
        InboundRoute(mqtt="devices/{device_id}/state", kafka=catalog.IOT_TELEMETRY.name,
                     fields={"metric": "state"}),
        InboundRoute(mqtt="devices/{device_id}/status", kafka=catalog.IOT_PRESENCE.name, format="raw",
                     payload_field="status"),
    )


def default_outbound() -> tuple[OutboundRoute, ...]:
    return (OutboundRoute(kafka=catalog.DEVICE_COMMANDS.name, mqtt="devices/{device_id}/set"),)


class BridgeSettings(_Model):
    """The MQTT bridge `switchboard up` starts (`python -m streams.mqtt_bridge`); it talks to `[mqtt]` and
    `[kafka]` (embedded or external)."""

    enabled: bool = Field(True, description="start the bridge with `switchboard up`")
    client_id: str = Field("switchboard-bridge", pattern=r"^[A-Za-z0-9_-]{1,23}$",
        description="MQTT client id; the broker keeps this session (and queues QoS 1/2 messages) while the bridge "
                    "is down")
    username: str = Field("switchboard-bridge", min_length=1,
        description="MQTT user when mqtt.username is unset (brokers keep no session for anonymous clients)")
    group_id: str = Field("switchboard-mqtt-bridge", pattern=r"^[a-z][a-z0-9_.-]*$",
        description="Kafka consumer group of the Kafka -> MQTT routes")
    mqtt_version: Literal["3.1.1", "5"] = Field("3.1.1",
        description="MQTT protocol; 5 adds an origin user property and no-local subscriptions")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive")
    buffer_messages: int = Field(1000, ge=1, le=1_000_000,
        description="MQTT messages held while waiting for Kafka; at the limit the bridge stops reading from MQTT")
    buffer_bytes: int = Field(16 * 1024 * 1024, ge=1024,
        description="payload bytes held while waiting for Kafka; at the limit the bridge stops reading from MQTT")
    reconnect_min_s: float = Field(0.5, gt=0, description="first delay before reconnecting")
    reconnect_max_s: float = Field(30.0, gt=0, description="longest delay between reconnect attempts (doubling)")
    presence_topic: str = Field("switchboard/bridge/{client_id}/status",
        description="where the bridge publishes online (retained) and its last will offline")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="bridge log level")
    inbound: tuple[InboundRoute, ...] = Field(default_factory=default_inbound,
        description="MQTT -> Kafka routes (a JSON list as an environment variable)")
    outbound: tuple[OutboundRoute, ...] = Field(default_factory=default_outbound,
        description="Kafka -> MQTT routes (a JSON list as an environment variable)")

    @field_validator("presence_topic")
    @classmethod
    def _presence(cls, value: str) -> str:
        extra = set(parse_template(value).placeholders) - {"client_id"}
        if extra:
            raise ValueError(f"presence_topic may only use {{client_id}}, not {', '.join(sorted(extra))}")
        return value

    @model_validator(mode="after")
    def _limits(self) -> BridgeSettings:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self
