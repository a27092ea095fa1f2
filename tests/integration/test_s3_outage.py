"""Object storage dies mid-load (SIGKILL of SeaweedFS) and comes back: status reports it while it is down, and every
turn whose send the broker acknowledged is answered afterwards (Tansu keeps its log on that S3)."""

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

TURNS = 200
RATE = 50.0
OUTAGE_S = 5.0


async def _send_with_retries(settings: Settings, turns: int, failures: list[str]) -> set[str]:
    """Send turns at RATE, each retried (same event, same id) until acknowledged; the acknowledged ids."""
    codec = AvroCodec()
    acked: set[str] = set()
    producer = make_producer(settings, request_timeout_ms=3000, retry_backoff_ms=200)
    await producer.start()
    try:
        for i in range(turns):
            session = f"s3-outage-{i % 10}"
            event = Event(type=catalog.DIALOGUE_TURNS.value_schema, source="/tests/s3-outage", subject=session,
                          data={"session_id": session, "agent": "echo", "text": f"m{i}"})
            record = encode_event(event, codec)
            while True:
                try:
                    await producer.send_and_wait(catalog.DIALOGUE_TURNS.name, record.value, key=record.key,
                                                 headers=record.headers)
                    acked.add(event.id)
                    break
                except KafkaError as exc:
                    failures.append(type(exc).__name__)
                    await asyncio.sleep(0.2)
            await asyncio.sleep(1 / RATE)
    finally:
        await producer.stop()
    return acked


async def test_acknowledged_turns_survive_an_object_storage_outage(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    stack = EmbeddedStack(settings)
    failures: list[str] = []
    try:
        await stack.up()
        load = asyncio.create_task(_send_with_retries(settings, TURNS, failures))
        await asyncio.sleep(1.0)  # the scenario: object storage dies while load flows
        weed = next(r for r in stack.records() if r.name == "seaweedfs")
        os.killpg(weed.pid, signal.SIGKILL)
        await asyncio.to_thread(psutil.Process(weed.pid).wait, 10)
        down_at = time.monotonic()
        statuses = {s.name: s for s in await stack.status()}
        failures_before = len(failures)
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the outage lasts a while
        failed_during_outage = len(failures) - failures_before
        await stack.up()  # restarts SeaweedFS on the same data directory
        back_after = time.monotonic() - down_at
        acked = await load
        replies = await await_all(settings, catalog.DIALOGUE_REPLIES, acked, lambda e: e.causationid,
                                  timeout_s=120)
    finally:
        stack.down()
    print(f"\nS3 outage: {len(acked)} turns acknowledged, {len(failures)} send attempts failed "
          f"({failed_during_outage} while S3 was down: {sorted(set(failures))}), S3 back after {back_after:.1f}s; "
          f"status while down: " + ", ".join(f"{n} running={s.running} healthy={s.healthy}"
                                              for n, s in statuses.items()))
    assert statuses["seaweedfs"].running is False, "status must show object storage down"
    assert len(acked) == TURNS
    unanswered = sorted(acked - set(replies))
    assert not unanswered, f"{len(unanswered)} acknowledged turns never answered, e.g. {unanswered[:3]}"
