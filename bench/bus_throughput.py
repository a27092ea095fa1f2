"""Raw bus limits on this machine: produce-to-consume throughput and single-message round trips.

Every later Switchboard figure (dialogue turns/s, workflow steps/s, bridged MQTT messages/s) is compared with
these. Both Python clients the project uses are measured (aiokafka for the asyncio code, confluent-kafka's
librdkafka), each with its default batching and with batching tuned for the embedded broker.

    python -m bench.bus_throughput                          # starts its own embedded stack (Tansu on S3)
    python -m bench.bus_throughput --bootstrap host:9092    # an existing bus

Consumers count records to know they are done: Tansu's end offsets are wrong when producers batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

VALUE_SIZE = 200
PARTITIONS = 4

# aiokafka: producer batching, consumer fetch wait.
AIOKAFKA_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {"producer": {}, "consumer": {}},
    "tuned": {
        "producer": {"linger_ms": 5, "max_batch_size": 262_144},
        "consumer": {"fetch_max_wait_ms": 10, "max_partition_fetch_bytes": 4_194_304, "max_poll_records": 5_000},
    },
}
CONFLUENT_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {"producer": {}, "consumer": {}},
    "tuned": {
        "producer": {"linger.ms": 5, "batch.num.messages": 10_000, "batch.size": 1_048_576},
        "consumer": {"fetch.wait.max.ms": 10, "fetch.min.bytes": 1},
    },
}


@dataclass
class Figure:
    client: str
    config: str
    metric: str
    value: float
    unit: str


def _value(i: int) -> bytes:
    return (f"{i:010d}-" + "x" * VALUE_SIZE)[:VALUE_SIZE].encode()


async def _create_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- aiokafka ----------------------------------------------------------------------------------------------------
async def aiokafka_throughput(bootstrap: str, config: str, messages: int) -> list[Figure]:
    topic = f"bench.throughput.{uuid.uuid4().hex[:8]}"
    await _create_topic(bootstrap, topic)
    conf = AIOKAFKA_CONFIGS[config]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **conf["consumer"])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, **conf["producer"])
    await consumer.start()
    await producer.start()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    received = 0

    async def consume() -> None:
        nonlocal received
        while received < messages:
            batch = await consumer.getmany(timeout_ms=1000)
            received += sum(len(records) for records in batch.values())

    try:
        reader = asyncio.create_task(consume())
        start = time.perf_counter()
        pending = []
        for i in range(messages):
            pending.append(await producer.send(topic, _value(i), key=str(i % 64).encode()))
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        produced = time.perf_counter() - start
        await asyncio.wait_for(reader, timeout=300)
        end_to_end = time.perf_counter() - start
    finally:
        await producer.stop()
        await consumer.stop()
    return _throughput_figures("aiokafka", config, messages, produced, end_to_end)


async def aiokafka_latency(bootstrap: str, config: str, samples: int) -> list[Figure]:
    topic = f"bench.latency.{uuid.uuid4().hex[:8]}"
    await _create_topic(bootstrap, topic)
    conf = AIOKAFKA_CONFIGS[config]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **conf["consumer"])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, **conf["producer"])
    await consumer.start()
    await producer.start()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    rtts: list[float] = []
    try:
        for i in range(samples):
            start = time.perf_counter()
            await producer.send_and_wait(topic, _value(i), key=b"k")
            seen = False
            while not seen:
                batch = await consumer.getmany(timeout_ms=5000)
                seen = any(r.value == _value(i) for records in batch.values() for r in records)
            rtts.append((time.perf_counter() - start) * 1000)
    finally:
        await producer.stop()
        await consumer.stop()
    return _latency_figures("aiokafka", config, rtts)


# -- confluent-kafka ---------------------------------------------------------------------------------------------
def _confluent(bootstrap: str, config: str) -> tuple[Any, Any]:
    from confluent_kafka import Consumer, Producer

    conf = CONFLUENT_CONFIGS[config]
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
                         **conf["producer"]})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest", **conf["consumer"]})
    return producer, consumer


def _assign_from_start(consumer: Any, topic: str) -> None:
    from confluent_kafka import OFFSET_BEGINNING
    from confluent_kafka import TopicPartition as CTopicPartition

    consumer.assign([CTopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])


def confluent_throughput(bootstrap: str, config: str, messages: int) -> list[Figure]:
    topic = f"bench.throughput.{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_topic(bootstrap, topic))
    producer, consumer = _confluent(bootstrap, config)
    _assign_from_start(consumer, topic)
    received = 0
    done = threading.Event()

    def consume() -> None:
        nonlocal received
        while received < messages:
            for message in consumer.consume(num_messages=10_000, timeout=1.0):
                if message.error() is None:
                    received += 1
        done.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    start = time.perf_counter()
    for i in range(messages):
        while True:
            try:
                producer.produce(topic, _value(i), key=str(i % 64).encode())
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    produced = time.perf_counter() - start
    done.wait(300)
    end_to_end = time.perf_counter() - start
    consumer.close()
    return _throughput_figures("confluent-kafka", config, messages, produced, end_to_end)


def confluent_latency(bootstrap: str, config: str, samples: int) -> list[Figure]:
    topic = f"bench.latency.{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_topic(bootstrap, topic))
    producer, consumer = _confluent(bootstrap, config)
    _assign_from_start(consumer, topic)
    rtts: list[float] = []
    for i in range(samples):
        expected = _value(i)
        start = time.perf_counter()
        producer.produce(topic, expected, key=b"k")
        producer.flush(10)
        seen = False
        while not seen:
            message = consumer.poll(5.0)
            seen = message is not None and message.error() is None and message.value() == expected
        rtts.append((time.perf_counter() - start) * 1000)
    consumer.close()
    return _latency_figures("confluent-kafka", config, rtts)


# -- figures -----------------------------------------------------------------------------------------------------
def _throughput_figures(client: str, config: str, messages: int, produced: float, end_to_end: float) -> list[Figure]:
    mb = messages * VALUE_SIZE / 1_000_000
    return [
        Figure(client, config, "produce (acked)", messages / produced, "msg/s"),
        Figure(client, config, "produce (acked)", mb / produced, "MB/s"),
        Figure(client, config, "produce-to-consume", messages / end_to_end, "msg/s"),
        Figure(client, config, "produce-to-consume", mb / end_to_end, "MB/s"),
    ]


def _latency_figures(client: str, config: str, rtts: list[float]) -> list[Figure]:
    return [
        Figure(client, config, "round trip p50", statistics.median(rtts), "ms"),
        Figure(client, config, "round trip p99", _percentile(rtts, 0.99), "ms"),
        Figure(client, config, "round trip max", max(rtts), "ms"),
    ]


def print_table(figures: list[Figure], header: str) -> None:
    print(f"\n{header}")
    print(f"{'client':<16} {'config':<8} {'metric':<20} {'value':>12}  unit")
    for f in figures:
        print(f"{f.client:<16} {f.config:<8} {f.metric:<20} {f.value:>12,.1f}  {f.unit}")
    print("\nconfigs:")
    print("  aiokafka " + json.dumps(AIOKAFKA_CONFIGS["tuned"]))
    print("  confluent-kafka " + json.dumps(CONFLUENT_CONFIGS["tuned"]))
    print(f"  every run: acks=all, idempotence off (Tansu has no InitProducerId), {VALUE_SIZE}-byte values, "
          f"{PARTITIONS} partitions")


def _in_loop(make: Callable[[], Coroutine[Any, Any, list[Figure]]]) -> list[Figure]:
    return asyncio.run(make())


def run_all(bootstrap: str, clients: list[str], messages: int, samples: int) -> list[Figure]:
    figures: list[Figure] = []
    plan: list[tuple[str, Callable[[], list[Figure]]]] = []
    for config in ("default", "tuned"):
        if "aiokafka" in clients:
            plan.append((f"aiokafka {config} throughput",
                         partial(_in_loop, partial(aiokafka_throughput, bootstrap, config, messages))))
            plan.append((f"aiokafka {config} latency",
                         partial(_in_loop, partial(aiokafka_latency, bootstrap, config, samples))))
        if "confluent" in clients:
            plan.append((f"confluent {config} throughput", partial(confluent_throughput, bootstrap, config, messages)))
            plan.append((f"confluent {config} latency", partial(confluent_latency, bootstrap, config, samples)))
    for label, step in plan:
        print(f"running {label} ...", flush=True)
        figures.extend(step())
    return figures


async def _with_embedded_stack(work: Callable[[str], list[Figure]]) -> list[Figure]:
    from infra.testing import embedded_settings, running_stack

    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        settings = embedded_settings(Path(tmp), workers={"count": 0})
        async with running_stack(settings=settings):
            print(f"embedded stack up: Tansu at {settings.bootstrap_servers}, log on SeaweedFS S3 "
                  f"{settings.s3_endpoint}", flush=True)
            return await asyncio.to_thread(work, settings.bootstrap_servers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="an existing bus (default: start a throwaway embedded stack)")
    parser.add_argument("--messages", type=int, default=50_000, help="messages per throughput run")
    parser.add_argument("--samples", type=int, default=500, help="round trips per latency run")
    parser.add_argument("--client", choices=["aiokafka", "confluent", "both"], default="both")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    clients = ["aiokafka", "confluent"] if args.client == "both" else [args.client]

    def work(bootstrap: str) -> list[Figure]:
        return run_all(bootstrap, clients, args.messages, args.samples)

    figures = work(args.bootstrap) if args.bootstrap else asyncio.run(_with_embedded_stack(work))
    where = args.bootstrap or "embedded stack (Tansu on SeaweedFS S3)"
    print_table(figures, f"Bus limits: {where}, {os.cpu_count()} cores, {args.messages} msgs, {args.samples} samples")
    if args.json:
        args.json.write_text(json.dumps([asdict(f) for f in figures], indent=2))


if __name__ == "__main__":
    main()
