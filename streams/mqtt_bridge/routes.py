"""The configured routes, compiled: which Kafka topic an MQTT message goes to and which MQTT topic an event goes
to. Pure; the settings were already checked against the catalog and schemas (infra/bridge_config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.bridge_config import BridgeSettings, InboundRoute, OutboundRoute
from streams.mqtt_bridge.patterns import (
    TopicFilter,
    TopicTemplate,
    filters_overlap,
    parse_filter,
    parse_template,
)
from topics import catalog
from topics.schema_store import default_store
from topics.spec import TopicSpec


def _fields(spec: TopicSpec) -> dict[str, Any]:
    schema = default_store().current(spec.value_schema)
    return {field["name"]: field["type"] for field in schema.definition["fields"]}


@dataclass(frozen=True)
class Inbound:
    """MQTT -> Kafka."""

    config: InboundRoute
    pattern: TopicFilter
    spec: TopicSpec
    fields: dict[str, Any]  # the schema's fields: name -> Avro type

    def key(self, topic: str) -> str | None:
        """The Kafka key for a message on `topic` (which matched `pattern`)."""
        key = self.config.key
        if isinstance(key, str):
            index = dict((name, i) for i, name in self.pattern.names)[key]
        elif isinstance(key, int):
            index = key
        elif self.pattern.wildcard_levels:
            index = self.pattern.wildcard_levels[0]
        else:
            return None
        return topic.split("/")[index]


@dataclass(frozen=True)
class Outbound:
    """Kafka -> MQTT."""

    config: OutboundRoute
    template: TopicTemplate
    spec: TopicSpec

    def topic_for(self, key: str | None, data: dict[str, Any]) -> str:
        """The MQTT topic of an event; ValueError if a placeholder has no usable value."""
        values: dict[str, object] = {k: v for k, v in data.items() if isinstance(v, str | int | float | bool)}
        if key is not None:
            values["key"] = key
            values[self.config.key_as] = key
        return self.template.render(values)


@dataclass(frozen=True)
class RouteTable:
    inbound: tuple[Inbound, ...]
    outbound: tuple[Outbound, ...]
    own: tuple[TopicFilter, ...]  # every topic the bridge publishes to: never bridged back (loop prevention)

    def route(self, topic: str) -> tuple[Inbound, dict[str, str]] | None:
        """The first inbound route whose filter matches `topic`, with the named levels' values."""
        for route in self.inbound:
            values = route.pattern.match(topic)
            if values is not None:
                return route, values
        return None

    def is_own(self, topic: str) -> bool:
        """Whether the bridge itself publishes to `topic` (so a message there must not go back to Kafka)."""
        return any(pattern.match(topic) is not None for pattern in self.own)

    def subscriptions(self) -> list[tuple[str, int]]:
        """(filter, QoS) to subscribe to; one per distinct filter, with the highest QoS asked for it."""
        wanted: dict[str, int] = {}
        for route in self.inbound:
            sub = route.pattern.subscription
            wanted[sub] = max(wanted.get(sub, 0), route.config.qos)
        return sorted(wanted.items())

    def kafka_topics(self) -> list[str]:
        return sorted({route.spec.name for route in self.outbound})

    def outbound_for(self, kafka_topic: str) -> list[Outbound]:
        return [route for route in self.outbound if route.spec.name == kafka_topic]

    def warnings(self) -> list[str]:
        """Overlaps worth telling the operator about at start-up."""
        found = []
        for route in self.inbound:
            for own in self.own:
                if filters_overlap(route.pattern, own):
                    found.append(f"inbound filter {route.config.mqtt!r} also matches {own.text!r}, which the bridge "
                                 "publishes to: messages there are never bridged to Kafka (loop prevention)")
        for i, a in enumerate(self.inbound):
            for b in self.inbound[i + 1:]:
                if filters_overlap(a.pattern, b.pattern):
                    found.append(f"inbound filters {a.config.mqtt!r} and {b.config.mqtt!r} overlap: a message "
                                 f"matching both goes to {a.spec.name} only (the first route), and brokers may "
                                 "deliver it once per subscription")
        return found


def presence_topic(bridge: BridgeSettings) -> str:
    return parse_template(bridge.presence_topic).render({"client_id": bridge.client_id})


def compile_routes(bridge: BridgeSettings) -> RouteTable:
    inbound = tuple(Inbound(config=r, pattern=parse_filter(r.mqtt), spec=catalog.get(r.kafka),
                            fields=_fields(catalog.get(r.kafka))) for r in bridge.inbound)
    outbound = tuple(Outbound(config=r, template=parse_template(r.mqtt), spec=catalog.get(r.kafka))
                     for r in bridge.outbound)
    own = (*(route.template.as_filter() for route in outbound), parse_filter(presence_topic(bridge)))
    return RouteTable(inbound=inbound, outbound=outbound, own=own)
