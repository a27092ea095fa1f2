"""The broker dies mid-load (SIGKILL) and comes back: producers retry, the worker reconnects, and every turn whose
send was acknowledged is answered (durable S3 mode: Tansu's log lives on SeaweedFS)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from aiokafka.errors import KafkaError

from infra.bus.clients import producer as make_producer
from infra.config import Settings
from infra.embedded import EmbeddedStack
from infra.testing import await_all, embedded_settings
from topics import AvroCodec, Event, catalog, encode_event

pytestmark = pytest.mark.integration

TURNS = 300
RATE = 100.0


async def _send_with_retries(settings: Settings, stop_after: int) -> tuple[set[str], int]:
    """Send turns at RATE, retrying each until acknowledged; (acknowledged ids, failed attempts)."""
    codec = AvroCodec()
    acked: set[str] = set()
    failures = 0
    producer = make_producer(settings, request_timeout_ms=3000, retry_backoff_ms=200)
    await producer.start()
    try:
        for i in range(stop_after):
            session = f"restart-{i % 10}"
            event = Event(type=catalog.DIALOGUE_TURNS.value_schema, source="/tests/broker-restart", subject=session,
                          data={"session_id": session, "agent": "echo", "text": f"m{i}"})
            record = encode_event(event, codec)
            while True:
                try:
                    await producer.send_and_wait(catalog.DIALOGUE_TURNS.name, record.value, key=record.key,
                                                 headers=record.headers)
                    acked.add(event.id)
                    break
                except KafkaError:
                    failures += 1  # the same event (same id) is sent again: at-least-once, readers dedupe
                    await asyncio.sleep(0.2)
            await asyncio.sleep(1 / RATE)
    finally:
        await producer.stop()
    return acked, failures


async def test_acknowledged_turns_survive_a_broker_crash(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    stack = EmbeddedStack(settings)
    try:
        await stack.up()
        load = asyncio.create_task(_send_with_retries(settings, TURNS))
        await asyncio.sleep(1.0)  # the scenario: the broker dies while load flows
        broker = next(r for r in stack.records() if r.name == "tansu")
        os.killpg(broker.pid, signal.SIGKILL)
        await asyncio.to_thread(psutil.Process(broker.pid).wait, 10)
        down_at = time.monotonic()
        await stack.up()  # restarts the broker on the same S3 log
        restarted_after = time.monotonic() - down_at
        acked, failures = await load
        replies = await await_all(settings, catalog.DIALOGUE_REPLIES, acked, lambda e: e.causationid,
                                  timeout_s=120)
    finally:
        stack.down()
    answered = set(replies)
    print(f"\nbroker restart: {len(acked)} turns acknowledged, {failures} send attempts failed while it was down, "
          f"broker back after {restarted_after:.1f}s")
    assert len(acked) == TURNS
    assert answered == acked
