"""The bridge process: Kafka producer and consumer, the MQTT link, both directions, the status file.

`python -m streams.mqtt_bridge` runs it with settings from the environment (as `switchboard up` starts it) or from
`--config`/$SWITCHBOARD_CONFIG, against the embedded brokers or external ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from infra.bus import clients
from infra.config import Settings
from streams.mqtt_bridge.inbound import InboundBridge, IntakeBuffer, KafkaWriter
from streams.mqtt_bridge.mqtt_client import Backoff, MqttLink
from streams.mqtt_bridge.outbound import OutboundBridge
from streams.mqtt_bridge.routes import compile_routes, presence_topic
from streams.mqtt_bridge.status import BridgeStats, write_status
from topics.binding import encode_event
from topics.catalog import IOT_PRESENCE
from topics.codec import AvroCodec
from topics.event import Event

log = logging.getLogger("switchboard.mqtt_bridge")
READY_FILE_ENV = "SWITCHBOARD_READY_FILE"
COMPONENT = "mqtt-bridge"


def status_file(settings: Settings) -> Path:
    return settings.data_dir / "run" / f"{COMPONENT}.status.json"


class Bridge:
    def __init__(self, settings: Settings, *, status_path: Path | None = None, ready_path: Path | None = None) -> None:
        bridge = settings.bridge
        self.settings = settings
        self.routes = compile_routes(bridge)
        self.stats = BridgeStats()
        self.status_path = status_path
        self.ready_path = ready_path
        self.codec = AvroCodec()
        # Big batches: many devices' messages wait for Kafka at once, and one partition's batch per request is the
        # limit (16 KiB, aiokafka's default, held ~40 events: ~240 events/s on Tansu over S3).
        self.producer = clients.producer(settings, max_batch_size=1024 * 1024)
        self.consumer = clients.consumer(settings, *self.routes.kafka_topics(), group_id=bridge.group_id)
        self.writer = KafkaWriter(self.producer, self.stats, Backoff(bridge.reconnect_min_s, bridge.reconnect_max_s))
        self.buffer = IntakeBuffer(self.stats, bridge.buffer_messages, bridge.buffer_bytes)
        self.inbound = InboundBridge(self.routes, self.writer, self.buffer, self.stats, bridge.client_id, self.codec)
        self.link = MqttLink(settings, self.stats, self.inbound.handle, self.routes.subscriptions(),
                             presence_topic(bridge), self.buffer.room)
        self.outbound = OutboundBridge(self.routes, self.consumer, self.link, self.writer, self.stats, self.codec)

    async def _presence(self, status: str, reason: str) -> None:
        me = self.settings.bridge.client_id
        event = Event(type=IOT_PRESENCE.value_schema, source=f"/switchboard/mqtt-bridge/{me}", subject=me,
                      data={"device_id": me, "status": status, "reason": reason})
        await self.writer.write(IOT_PRESENCE.name, encode_event(event, self.codec))

    async def _report(self) -> None:
        while True:
            if self.status_path is not None:
                write_status(self.status_path, self.stats)
            await asyncio.sleep(1.0)

    async def _start_kafka(self) -> None:
        backoff = Backoff(self.settings.bridge.reconnect_min_s, self.settings.bridge.reconnect_max_s)
        for client in (self.producer, self.consumer):
            while True:
                try:
                    await client.start()
                    break
                except Exception as exc:
                    delay = backoff.next()
                    self.stats.kafka_ok, self.stats.kafka_error = False, f"{type(exc).__name__}: {exc}"
                    log.warning("Kafka at %s not reachable (%s); retrying in %.1fs", self.settings.bootstrap_servers,
                                self.stats.kafka_error, delay)
                    await asyncio.sleep(delay)
        self.stats.kafka_ok, self.stats.kafka_error = True, None

    async def run(self, stop: asyncio.Event) -> None:
        for warning in self.routes.warnings():
            log.warning("%s", warning)
        reporter = asyncio.create_task(self._report())
        outbound: asyncio.Task[None] | None = None
        try:
            await self._start_kafka()
            await self.link.start()
            await self.link.connected.wait()
            await self._presence("online", "bridge started")
            outbound = asyncio.create_task(self.outbound.run())
            if self.status_path is not None:
                write_status(self.status_path, self.stats)  # before the ready file: status reads both
            if self.ready_path is not None:
                self.ready_path.write_text(str(os.getpid()))
            log.info("bridge %s running: %d inbound route(s), %d outbound route(s)", self.settings.bridge.client_id,
                     len(self.routes.inbound), len(self.routes.outbound))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({stopped, outbound}, return_when=asyncio.FIRST_COMPLETED)
            if outbound.done():
                outbound.result()  # a crash of the outbound loop ends the process (and says why)
        finally:
            log.info("bridge stopping")
            if outbound is not None:
                outbound.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await outbound
            with contextlib.suppress(Exception):
                await self.link.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._presence("offline", "bridge stopped"), 5)
            for client in (self.consumer, self.producer):
                with contextlib.suppress(Exception):
                    await client.stop()
            reporter.cancel()
            self.stats.mqtt_connected = False
            if self.status_path is not None:
                write_status(self.status_path, self.stats)


async def serve(settings: Settings) -> None:
    ready = os.environ.get(READY_FILE_ENV)
    if ready:
        Path(ready).unlink(missing_ok=True)
    bridge = Bridge(settings, status_path=status_file(settings),
                    ready_path=Path(ready) if ready else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await bridge.run(stop)
