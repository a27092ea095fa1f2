"""Kafka -> MQTT: events on the outbound routes' topics are published to the topics their templates render.
Offsets are committed only after the broker acknowledged every publish of the batch (QoS 1/2), so a bridge that
dies redelivers instead of losing; a record that cannot be published becomes a dead letter."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streams.mqtt_bridge.inbound import PROCESSOR, KafkaWriter
from streams.mqtt_bridge.mqtt_client import MqttLink
from streams.mqtt_bridge.payloads import to_payload
from streams.mqtt_bridge.routes import RouteTable
from streams.mqtt_bridge.status import BridgeStats
from topics.binding import decode_event, encode_event
from topics.catalog import DEAD_LETTERS
from topics.codec import AvroCodec
from topics.deadletter import dead_letter
from topics.errors import EventError

log = logging.getLogger("switchboard.mqtt_bridge")


class OutboundBridge:
    def __init__(self, routes: RouteTable, consumer: AIOKafkaConsumer, link: MqttLink, writer: KafkaWriter,
                 stats: BridgeStats, codec: AvroCodec | None = None) -> None:
        self.routes, self.consumer, self.link, self.writer, self.stats = routes, consumer, link, writer, stats
        self.codec = codec if codec is not None else AvroCodec()

    async def run(self) -> None:
        while True:
            batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = await self.consumer.getmany(
                timeout_ms=1000, max_records=500)
            if not batches:
                continue
            pending = [self._forward(record) for records in batches.values() for record in records]
            await asyncio.gather(*pending)
            await self.consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})

    async def _forward(self, record: ConsumerRecord[Any, Any]) -> None:
        headers = list(record.headers or ())
        try:
            event = decode_event(record.value, headers, self.codec)
        except EventError as exc:
            await self._dead_letter(record, f"not a Switchboard event: {exc}", exc)
            return
        for route in self.routes.outbound_for(record.topic):
            try:
                topic = route.topic_for(event.subject, dict(event.data))
            except ValueError as exc:
                await self._dead_letter(record, f"cannot make an MQTT topic from {route.config.mqtt!r}: {exc}", exc)
                continue
            await self.link.publish(topic, to_payload(route, event.data), route.config.qos, route.config.retain)
            self.stats.bridged_out += 1

    async def _dead_letter(self, record: ConsumerRecord[Any, Any], reason: str, exc: Exception) -> None:
        log.warning("dead letter: %s/%s/%s: %s", record.topic, record.partition, record.offset, reason)
        letter = dead_letter(topic=record.topic, partition=record.partition, offset=record.offset, key=record.key,
                             value=record.value, headers=list(record.headers or ()), timestamp_ms=record.timestamp,
                             reason=reason, error=type(exc).__name__, processor=PROCESSOR)
        await self.writer.write(DEAD_LETTERS.name, encode_event(letter, self.codec))
        self.stats.dead_letters += 1
