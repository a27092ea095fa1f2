"""Data survives the stack: messages, committed offsets and agent state outlive `down`/`up` and a SIGKILL of the
broker and of the object store (Tansu keeps its log on SeaweedFS's S3)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import psutil
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from infra.bus.clients import consumer as make_consumer
from infra.config import Settings
from infra.console import ChatSession
from infra.embedded import EmbeddedStack
from infra.testing import collect_events, embedded_settings
from topics import catalog

pytestmark = pytest.mark.integration
GROUP = "it-restart-group"


async def _commit(settings: Settings, offset: int) -> None:
    consumer = make_consumer(settings, group_id=GROUP)
    await consumer.start()
    tp = TopicPartition(catalog.DIALOGUE_TURNS.name, 0)
    consumer.assign([tp])
    try:
        await consumer.commit({tp: OffsetAndMetadata(offset, "")})
    finally:
        await consumer.stop()


async def _committed(settings: Settings) -> int | None:
    consumer = make_consumer(settings, group_id=GROUP)
    await consumer.start()
    try:
        result: int | None = await consumer.committed(TopicPartition(catalog.DIALOGUE_TURNS.name, 0))
        return result
    finally:
        await consumer.stop()


async def _reply_to(settings: Settings, text: str, session: str, turn_number: int) -> str:
    """Say `text`; the echo agent's turn counter proves the session's state survived."""
    async with ChatSession(settings, "echo", session) as chat:
        turn, replies = await chat.say(text)
    assert [r.data["text"] for r in replies] == [f"You said: {text} (turn {turn_number})"]
    return turn.id


async def test_messages_and_offsets_survive_down_up_and_crashes(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    stack = EmbeddedStack(settings)
    try:
        await stack.up()
        first = await _reply_to(settings, "before restart", "it-restart", 1)
        await _commit(settings, 7)

        # 1. A clean `down` / `up`, and the worker's local state store is gone (as on a new machine): its state
        #    must come back from the table's changelog on the bus.
        stack.down()
        assert not any(r.alive for r in stack.records())
        shutil.rmtree(settings.data_dir / "workers")
        await stack.up()
        assert await _committed(settings) == 7
        replies = await collect_events(settings, catalog.DIALOGUE_REPLIES,
                                       lambda e: e.causationid == first, count=1)
        assert len(replies) == 1
        second = await _reply_to(settings, "after restart", "it-restart", 2)

        # 2. A crash: SIGKILL the broker and the object store, then `up` again restarts them.
        records = {r.name: r for r in stack.records()}
        for name in ("tansu", "seaweedfs"):
            os.killpg(records[name].pid, signal.SIGKILL)
            psutil.Process(records[name].pid).wait(10)
        statuses = {s.name: s for s in await stack.status()}
        assert not statuses["tansu"].running and not statuses["seaweedfs"].running
        await stack.up()
        assert await _committed(settings) == 7
        for cause in (first, second):
            found = await collect_events(settings, catalog.DIALOGUE_REPLIES, lambda e, c=cause: e.causationid == c,
                                         count=1)
            assert found[0].causationid == cause
        await _reply_to(settings, "after crash", "it-restart", 3)
    finally:
        stack.down()
    assert not any(r.alive for r in stack.records())
