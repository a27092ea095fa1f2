"""MQTT -> Kafka: each message becomes an event (or a dead letter) and is acknowledged to MQTT only after Kafka
acknowledged the write. Held messages are bounded by an intake buffer that stops reading from MQTT when full."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.mqtt_bridge.mqtt_client import Backoff, MqttLink
from streams.mqtt_bridge.payloads import to_record
from streams.mqtt_bridge.routes import RouteTable
from streams.mqtt_bridge.status import BridgeStats
from topics.binding import KafkaRecord, encode_event
from topics.catalog import DEAD_LETTERS
from topics.codec import AvroCodec
from topics.deadletter import dead_letter
from topics.errors import EventError
from topics.event import Event, new_id

log = logging.getLogger("switchboard.mqtt_bridge")
PROCESSOR = "mqtt-bridge"
SUCCESS = 0  # the reason code gmqtt puts in the PUBACK/PUBREC


class IntakeBuffer:
    """Messages (and payload bytes) taken from MQTT and not yet acknowledged by Kafka.

    At either limit the MQTT reader waits (`room`) until the buffer drains to half, so memory stays bounded
    (plus what one socket read already holds) and the broker keeps the rest.
    """

    def __init__(self, stats: BridgeStats, max_messages: int, max_bytes: int) -> None:
        self.stats = stats
        self.max_messages, self.max_bytes = max_messages, max_bytes
        stats.buffer_limit_messages, stats.buffer_limit_bytes = max_messages, max_bytes
        self._room = asyncio.Event()
        self._room.set()

    async def room(self) -> None:
        await self._room.wait()

    def add(self, size: int) -> None:
        self.stats.buffer_messages += 1
        self.stats.buffer_bytes += size
        if self._room.is_set() and (self.stats.buffer_messages >= self.max_messages
                                    or self.stats.buffer_bytes >= self.max_bytes):
            self._room.clear()
            self.stats.intake_paused, self.stats.paused_since = True, time.time()
            self.stats.buffer_full_events += 1
            log.warning("buffer limit reached (%d messages, %d bytes; limits %d / %d): pausing MQTT intake until "
                        "Kafka acknowledges what is held", self.stats.buffer_messages, self.stats.buffer_bytes,
                        self.max_messages, self.max_bytes)

    def done(self, size: int) -> None:
        self.stats.buffer_messages -= 1
        self.stats.buffer_bytes -= size
        if not self._room.is_set() and (self.stats.buffer_messages <= self.max_messages // 2
                                        and self.stats.buffer_bytes <= self.max_bytes // 2):
            paused = time.time() - (self.stats.paused_since or time.time())
            self.stats.intake_paused, self.stats.paused_since = False, None
            self._room.set()
            log.info("buffer drained to %d messages after %.1fs: MQTT intake resumed", self.stats.buffer_messages,
                     paused)


class KafkaWriter:
    """Writes records and returns once Kafka acknowledged them, retrying with backoff while Kafka fails."""

    def __init__(self, producer: AIOKafkaProducer, stats: BridgeStats, backoff: Backoff) -> None:
        self.producer, self.stats, self.backoff = producer, stats, backoff

    async def write(self, topic: str, record: KafkaRecord) -> None:
        while True:
            try:
                ack = await self.producer.send(topic, record.value, key=record.key, headers=record.headers)
                await ack
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self.backoff.next()
                self.stats.kafka_ok, self.stats.kafka_error = False, f"{type(exc).__name__}: {exc}"
                log.warning("Kafka write to %s failed (%s); retrying in %.1fs", topic, self.stats.kafka_error, delay)
                await asyncio.sleep(delay)
                continue
            if not self.stats.kafka_ok:
                log.info("Kafka writes succeed again")
            self.backoff.reset()
            self.stats.kafka_ok, self.stats.kafka_error = True, None
            return


def _mqtt_headers(topic: str, qos: int, properties: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [("mqtt_topic", topic.encode()), ("mqtt_qos", str(qos).encode()),
            ("mqtt_retain", str(int(bool(properties.get("retain", 0)))).encode()),
            ("mqtt_dup", str(int(bool(properties.get("dup", 0)))).encode())]


class InboundBridge:
    """The `on_message` of the MQTT link."""

    def __init__(self, routes: RouteTable, writer: KafkaWriter, buffer: IntakeBuffer, stats: BridgeStats,
                 client_id: str, codec: AvroCodec | None = None) -> None:
        self.routes, self.writer, self.buffer, self.stats = routes, writer, buffer, stats
        self.client_id = client_id
        self.codec = codec if codec is not None else AvroCodec()

    async def handle(self, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
        size = len(payload)
        self.buffer.add(size)
        try:
            await self._bridge(topic, payload, qos, properties)
        finally:
            self.buffer.done(size)
        return SUCCESS

    async def _bridge(self, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> None:
        if self.routes.is_own(topic) or MqttLink.origin_of(properties) is not None:
            self.stats.loop_dropped += 1
            log.debug("not bridging %s back to Kafka: the bridge publishes there", topic)
            return
        found = self.routes.route(topic)
        if found is None:
            self.stats.unrouted += 1
            log.info("no route for %s (a subscription kept from an earlier configuration?); acknowledged", topic)
            return
        route, levels = found
        headers = _mqtt_headers(topic, qos, properties)
        key = route.key(topic)
        try:
            record = to_record(route, topic, payload, levels)
            event = Event(type=route.spec.value_schema, source=f"/switchboard/mqtt-bridge/{self.client_id}",
                          subject=key, data=record)
            encoded = encode_event(event, self.codec)
        except EventError as exc:
            await self._dead_letter(topic, payload, key, headers, route.spec.name, exc)
            return
        encoded.headers.extend(headers)
        await self.writer.write(route.spec.name, encoded)
        self.stats.bridged_in += 1

    async def _dead_letter(self, topic: str, payload: bytes, key: str | None, headers: list[tuple[str, bytes]],
                           target: str, exc: EventError) -> None:
        reason = f"MQTT message on {topic} for {target}: {exc}"
        letter = dead_letter(topic=f"mqtt:{topic}", partition=-1, offset=-1, key=key.encode() if key else None,
                             value=payload, headers=[*headers, ("target_topic", target.encode())],
                             timestamp_ms=int(time.time() * 1000), reason=reason, error=type(exc).__name__,
                             processor=PROCESSOR)
        # A dead letter's id normally derives from the record's position; MQTT messages have none, so each is new.
        letter = dataclasses.replace(letter, id=new_id())
        letter = dataclasses.replace(letter, correlationid=letter.id)
        log.warning("dead letter: %s", reason)
        await self.writer.write(DEAD_LETTERS.name, encode_event(letter, self.codec))
        self.stats.dead_letters += 1
