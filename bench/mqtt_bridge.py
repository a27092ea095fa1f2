"""MQTT messages bridged onto Kafka: throughput and latency end to end, beside the raw MQTT broker's figures.

    python -m bench.mqtt_bridge                      # a throwaway embedded stack (amqtt, Tansu on SeaweedFS, bridge)
    python -m bench.mqtt_bridge --messages 5000 --rate 200 --json figures.json

Four runs, each with fresh device ids, QoS 1, ~60-byte JSON telemetry payloads:

- *raw MQTT, flood*: one gmqtt publisher -> amqtt -> one gmqtt subscriber (QoS 1), as fast as possible;
- *bridge, flood*: publisher -> amqtt -> bridge -> Kafka `iot.telemetry` -> an aiokafka reader, as fast as possible;
- *raw MQTT / bridge, paced*: the same at `--rate` messages/s, for latency without a queue in front.

Latency is from just before the publish to the moment the reader has the message (MQTT subscriber, or Kafka
consumer of the bridged event); throughput counts from the first publish to the last arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv311

from bench.loads import run_stopping_on_sigterm
from infra.bus.reading import read_topic
from infra.config import Settings
from infra.testing import embedded_settings, running_stack
from topics import AvroCodec, catalog, decode_event


@dataclass(frozen=True)
class Figures:
    run: str
    messages: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float


def _figures(run: str, sent: dict[int, float], arrived: dict[int, float]) -> Figures:
    latencies = sorted((arrived[i] - sent[i]) * 1000 for i in arrived if i in sent)
    seconds = max(arrived.values()) - min(sent.values())
    return Figures(run=run, messages=len(arrived), seconds=round(seconds, 2),
                   per_second=round(len(arrived) / seconds, 1),
                   p50_ms=round(statistics.median(latencies), 1),
                   p99_ms=round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
                   max_ms=round(latencies[-1], 1))


async def _client(settings: Settings, name: str) -> gmqtt.Client:
    client = gmqtt.Client(f"bench-{name}-{uuid.uuid4().hex[:6]}")
    host, port = settings.mqtt_address
    await client.connect(host, port, version=MQTTv311)
    return client


async def _publish(client: gmqtt.Client, topic: str, count: int, rate: float | None,
                   sent: dict[int, float]) -> None:
    start = time.perf_counter()
    for i in range(count):
        if rate is not None:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        elif i % 100 == 0:
            await asyncio.sleep(0)  # let the socket drain
        sent[i] = time.perf_counter()
        client.publish(topic, json.dumps({"value": i, "unit": "C"}), qos=1)


async def raw_mqtt(settings: Settings, count: int, rate: float | None) -> Figures:
    device = f"raw-{uuid.uuid4().hex[:6]}"
    topic = f"bench/{device}/temperature"  # matched by no bridge route: only the subscriber reads it
    sent: dict[int, float] = {}
    arrived: dict[int, float] = {}
    done = asyncio.Event()
    subscriber = await _client(settings, "sub")

    def on_message(_: Any, got: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
        arrived[int(json.loads(payload)["value"])] = time.perf_counter()
        if len(arrived) >= count:
            done.set()
        return 0

    subscriber.on_message = on_message
    subscriber.subscribe(topic, qos=1)
    publisher = await _client(settings, "pub")
    await asyncio.sleep(0.5)  # the SUBSCRIBE is processed (amqtt answers SUBACK asynchronously)
    await _publish(publisher, topic, count, rate, sent)
    await asyncio.wait_for(done.wait(), 300)
    await publisher.disconnect()
    await subscriber.disconnect()
    return _figures(f"raw MQTT, {'flood' if rate is None else f'{rate:g}/s'}", sent, arrived)


async def bridged(settings: Settings, count: int, rate: float | None) -> Figures:
    device = f"bench-{uuid.uuid4().hex[:6]}"
    sent: dict[int, float] = {}
    arrived: dict[int, float] = {}
    codec = AvroCodec()

    async def read() -> None:
        async for record in read_topic(settings, catalog.IOT_TELEMETRY.name, follow=True, from_end=True):
            if record.key == device.encode():
                arrived[int(decode_event(record.value, record.headers, codec).data["value"])] = time.perf_counter()
                if len(arrived) >= count:
                    return

    reader = asyncio.create_task(read())
    await asyncio.sleep(1.0)  # the reader has its partitions before the first message
    publisher = await _client(settings, "pub")
    await _publish(publisher, f"sensors/{device}/temperature", count, rate, sent)
    await asyncio.wait_for(reader, 600)
    await publisher.disconnect()
    return _figures(f"bridge to Kafka, {'flood' if rate is None else f'{rate:g}/s'}", sent, arrived)


async def run(args: argparse.Namespace) -> list[Figures]:
    runs: list[tuple[Callable[[Settings, int, float | None], Awaitable[Figures]], int, float | None]] = [
        (raw_mqtt, args.messages, None), (bridged, args.messages, None),
        (raw_mqtt, args.paced, args.rate), (bridged, args.paced, args.rate)]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        settings = embedded_settings(Path(tmp), workers={"count": 0})
        async with running_stack(settings=settings) as running:
            await bridged(running, 50, None)  # warm-up: connections, metadata, first batches
            for measure, count, rate in runs:
                figures = await measure(running, count, rate)
                print(f"  {figures.run:<28} {figures.messages:>6} msgs  {figures.per_second:>9,.0f} msg/s   "
                      f"p50 {figures.p50_ms:>7.1f} ms  p99 {figures.p99_ms:>7.1f} ms  max {figures.max_ms:>7.1f} ms",
                      flush=True)
                results.append(figures)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt_bridge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per flood run")
    parser.add_argument("--paced", type=int, default=1000, help="messages per paced run")
    parser.add_argument("--rate", type=float, default=200.0, help="messages/s offered in the paced runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"MQTT bridge benchmark: QoS 1, {args.messages} messages flooded, {args.paced} at {args.rate:g}/s")
    results = run_stopping_on_sigterm(run(args))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(f) for f in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
