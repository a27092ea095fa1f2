"""The MQTT bridge against the real embedded brokers (amqtt and Tansu), as `switchboard up` runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import gmqtt
import psutil
import pytest
from gmqtt.mqtt.constants import MQTTv311

from infra.bus import clients
from infra.bus.reading import read_topic
from infra.config import Settings
from infra.embedded import EmbeddedStack
from infra.embedded.process import ProcessRecord
from infra.testing import collect_events, wait_for_event
from streams.mqtt_bridge.simulator import simulate
from streams.mqtt_bridge.status import read_status
from topics import AvroCodec, Event, catalog, decode_event, encode_event

pytestmark = pytest.mark.integration


def _device() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def mqtt(stack: Settings) -> AsyncIterator[gmqtt.Client]:
    client = gmqtt.Client(f"test-{uuid.uuid4().hex[:8]}")
    host, port = stack.mqtt_address
    await client.connect(host, port, version=MQTTv311)
    yield client
    await client.disconnect()


async def _send_command(settings: Settings, device: str, name: str = "turn_on") -> Event:
    event = Event(type=catalog.DEVICE_COMMANDS.value_schema, source="/tests/mqtt-bridge", subject=device,
                  data={"target": device, "name": name, "args": "{}", "agent": "tests", "session_id": None})
    record = encode_event(event, AvroCodec())
    producer = clients.producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(catalog.DEVICE_COMMANDS.name, record.value, key=record.key,
                                     headers=record.headers)
    finally:
        await producer.stop()
    return event


def _receiver(client: gmqtt.Client, topic: str) -> asyncio.Queue[tuple[str, bytes]]:
    """Messages arriving on `topic` (subscribed at QoS 1), as a queue."""
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def on_message(_: Any, got: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
        queue.put_nowait((got, payload))
        return 0

    client.on_message = on_message
    client.subscribe(topic, qos=1)
    return queue


async def test_telemetry_becomes_an_event_keyed_by_device(stack: Settings, mqtt: gmqtt.Client) -> None:
    device = _device()
    mqtt.publish(f"sensors/{device}/temperature", json.dumps({"value": 22.5, "unit": "C"}), qos=1)
    event = await wait_for_event(stack, catalog.IOT_TELEMETRY, lambda e: e.subject == device)
    assert event.type == "switchboard.iot.Telemetry"
    assert event.data == {"device_id": device, "metric": "temperature", "value": 22.5, "unit": "C", "state": None,
                          "payload": None}
    async for record in read_topic(stack, catalog.IOT_TELEMETRY.name):  # the raw record: key and headers
        if record.key == device.encode():
            headers = dict(record.headers)
            assert headers["mqtt_topic"] == f"sensors/{device}/temperature".encode()
            assert headers["mqtt_qos"] == b"1"
            assert decode_event(record.value, record.headers, AvroCodec()).id == event.id
            break
    else:
        pytest.fail("no record keyed by the device id")


async def test_command_event_reaches_the_device_topic(stack: Settings, mqtt: gmqtt.Client) -> None:
    device = _device()
    inbox = _receiver(mqtt, f"devices/{device}/set")
    await asyncio.sleep(0)  # the SUBSCRIBE is written before the command is produced
    command = await _send_command(stack, device)
    topic, payload = await asyncio.wait_for(inbox.get(), 30)
    assert topic == f"devices/{device}/set"
    assert json.loads(payload) == dict(command.data)


async def test_malformed_payloads_become_dead_letters_and_the_bridge_goes_on(stack: Settings,
                                                                             mqtt: gmqtt.Client) -> None:
    device = _device()
    mqtt.publish(f"sensors/{device}/temperature", b"\xff not json", qos=1)
    mqtt.publish(f"sensors/{device}/temperature", json.dumps({"value": "hot"}), qos=1)
    mqtt.publish(f"sensors/{device}/temperature", json.dumps({"value": 19.0, "colour": "red"}), qos=1)
    mqtt.publish(f"sensors/{device}/humidity", json.dumps({"value": 40}), qos=1)
    letters = await collect_events(stack, catalog.DEAD_LETTERS,
                                   lambda e: e.data["topic"] == f"mqtt:sensors/{device}/temperature", count=3)
    reasons = sorted(letter.data["reason"] for letter in letters)
    assert any("not UTF-8" in r for r in reasons), reasons
    assert any("value is 'hot'" in r for r in reasons), reasons
    assert any("unknown field(s) colour" in r for r in reasons), reasons
    assert all(letter.data["processor"] == "mqtt-bridge" for letter in letters)
    assert {bytes(letter.data["value"]) for letter in letters} >= {b"\xff not json"}
    assert len({letter.id for letter in letters}) == 3
    good = await wait_for_event(stack, catalog.IOT_TELEMETRY, lambda e: e.subject == device)
    assert good.data["metric"] == "humidity" and good.data["value"] == 40.0


async def test_simulated_devices_report_presence_telemetry_and_obey_commands(stack: Settings) -> None:
    prefix = f"sim{uuid.uuid4().hex[:6]}"
    device = f"{prefix}-1"
    lines: list[str] = []
    run = asyncio.create_task(simulate(stack, devices=1, interval_s=0.2, rounds=1000, prefix=prefix,
                                       say=lines.append, seed=1))
    online = await wait_for_event(stack, catalog.IOT_PRESENCE, lambda e: e.subject == device)
    assert online.data["status"] == "online"
    await wait_for_event(stack, catalog.IOT_TELEMETRY,
                         lambda e: e.subject == device and e.data["metric"] == "temperature")
    await _send_command(stack, device, "turn_on")
    state = await wait_for_event(stack, catalog.IOT_TELEMETRY,
                                 lambda e: e.subject == device and e.data["metric"] == "state")
    assert state.data["state"] == "on"
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    presence = await collect_events(stack, catalog.IOT_PRESENCE, lambda e: e.subject == device, count=2)
    assert [p.data["status"] for p in presence] == ["online", "offline"]
    assert any("command -> state on" in line for line in lines)


async def _bridge_record(settings: Settings) -> ProcessRecord:
    record = ProcessRecord.load(settings.data_dir / "run" / "mqtt-bridge.json")
    assert record is not None and record.alive, "the stack's bridge is not running"
    return record


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Await a condition that only a file shows (the bridge's status); fails after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the condition is in a file another process writes
            await asyncio.sleep(0.1)
    assert condition(), what


async def test_qos1_messages_survive_a_bridge_killed_with_sigkill(stack: Settings, mqtt: gmqtt.Client) -> None:
    device = _device()
    total = 300
    wanted = {float(i) for i in range(total)}
    seen: dict[float, int] = {}
    first_batch = asyncio.Event()

    async def watch() -> None:
        codec = AvroCodec()
        async for record in read_topic(stack, catalog.IOT_TELEMETRY.name, follow=True):
            if record.key != device.encode():
                continue
            value = decode_event(record.value, record.headers, codec).data["value"]
            seen[value] = seen.get(value, 0) + 1
            if len(seen) >= 50:
                first_batch.set()
            if wanted <= set(seen):
                return

    watcher = asyncio.create_task(watch())

    async def publish() -> None:
        for i in range(total):
            mqtt.publish(f"sensors/{device}/count", json.dumps({"value": i}), qos=1)
            await asyncio.sleep(0.005)  # ~200 messages/s offered, so the kill lands mid-stream

    publisher = asyncio.create_task(publish())
    await asyncio.wait_for(first_batch.wait(), 60)
    record = await _bridge_record(stack)
    os.kill(record.pid, signal.SIGKILL)
    psutil.Process(record.pid).wait(10) if psutil.pid_exists(record.pid) else None
    await publisher  # the rest arrive at the broker while the bridge is dead
    statuses = await EmbeddedStack(stack).up()  # restarts only what is not running: the bridge
    assert {s.name: s.healthy for s in statuses}["mqtt-bridge"]
    await asyncio.wait_for(watcher, 120)
    assert wanted <= set(seen), f"lost: {sorted(wanted - set(seen))[:20]}"
    duplicates = sum(n - 1 for n in seen.values())
    print(f"after SIGKILL: {total} delivered, {duplicates} duplicates")


async def test_the_bridge_never_bridges_its_own_publications_back(stack: Settings, mqtt: gmqtt.Client,
                                                                   tmp_path: Path) -> None:
    """A second bridge whose inbound filter covers the topic its outbound route publishes to."""
    device = _device()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(stack.environment())
    ready = tmp_path / "ready"
    env.update({
        "SWITCHBOARD_DATA_DIR": str(tmp_path),
        "SWITCHBOARD_READY_FILE": str(ready),
        "SWITCHBOARD_BRIDGE__CLIENT_ID": "loop-bridge",
        "SWITCHBOARD_BRIDGE__GROUP_ID": f"loop-bridge-{device}",
        "SWITCHBOARD_BRIDGE__INBOUND": json.dumps([{"mqtt": "loop/{device_id}/{metric}", "kafka": "iot.telemetry",
                                                    "format": "raw"}]),
        "SWITCHBOARD_BRIDGE__OUTBOUND": json.dumps([{"kafka": "devices.commands", "mqtt": "loop/{device_id}/set"}]),
    })
    log = (tmp_path / "bridge.log").open("wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "streams.mqtt_bridge", env=env, stdout=log,
                                                stderr=subprocess.STDOUT)
    try:
        await _until(lambda: ready.exists() or proc.returncode is not None, 60, "the second bridge is ready")
        assert proc.returncode is None, (tmp_path / "bridge.log").read_text()
        inbox = _receiver(mqtt, f"loop/{device}/set")
        await asyncio.sleep(0)
        await _send_command(stack, device)
        await asyncio.wait_for(inbox.get(), 30)  # the bridge published the command on loop/<device>/set ...
        mqtt.publish(f"loop/{device}/sentinel", b"after the command", qos=1)
        events = await collect_events(stack, catalog.IOT_TELEMETRY, lambda e: e.subject == device, count=1)
        # ... and the first (only) telemetry of the device is the sentinel, not the bridge's own command.
        assert events[0].data["metric"] == "sentinel", events[0]
        status_path = tmp_path / "run" / "mqtt-bridge.status.json"
        await _until(lambda: (read_status(status_path) or {}).get("loop_dropped", 0) >= 1, 10, "loop_dropped")
        assert "loop prevention" in (tmp_path / "bridge.log").read_text()  # the overlap warning at start-up
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        log.close()
    assert proc.returncode == 0


def test_iot_simulate_command(cli_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "infra.cli", "iot", "simulate", "--devices", "2", "--rounds", "1",
                           "--interval", "0.1", "--prefix", f"cli{uuid.uuid4().hex[:4]}"],
                          env=cli_env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "2 simulated device(s) online" in done.stdout


async def test_a_device_gets_only_what_it_subscribed_to(stack: Settings, mqtt: gmqtt.Client) -> None:
    """Another device's retained status matches the bridge's `devices/+/status`, not this device's command topic:
    the embedded broker must not hand it over when this device connects (amqtt 0.12 did, fix 3 in
    infra/embedded/mqtt_broker.py)."""
    other, device = _device(), _device()
    mqtt.publish(f"devices/{other}/status", b"online", qos=1, retain=True)
    await wait_for_event(stack, catalog.IOT_PRESENCE, lambda e: e.subject == other)  # the broker has it retained
    client = gmqtt.Client(f"test-{device}")
    host, port = stack.mqtt_address
    await client.connect(host, port, version=MQTTv311)
    try:
        subscribed = asyncio.get_running_loop().create_future()
        client.on_subscribe = lambda *args: subscribed.done() or subscribed.set_result(True)
        inbox = _receiver(client, f"devices/{device}/set")
        await asyncio.wait_for(subscribed, 10)
        sentinel = f"sentinel {uuid.uuid4().hex[:6]}".encode()
        mqtt.publish(f"devices/{device}/set", sentinel, qos=1)
        # Whatever the broker sends on connect comes before the sentinel: the first message must be the sentinel.
        assert await asyncio.wait_for(inbox.get(), 30) == (f"devices/{device}/set", sentinel)
    finally:
        mqtt.publish(f"devices/{other}/status", b"", qos=1, retain=True)  # clear the retained message
        await client.disconnect()
