"""A consumer stays in its group while its rebalance callback runs longer than the session timeout.

aiokafka 0.14 sends no heartbeat while `on_partitions_assigned` runs; Faust's callback takes seconds on a busy
machine, and past the embedded 4 s session timeout the broker expired the member mid-callback: a rebalance storm in
which the workers processed nothing (`streams/aiokafka_fixes.py`, fix (f)).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from infra.bus.admin import ensure_topics
from infra.bus.clients import consumer as make_consumer
from infra.config import Settings
from streams import aiokafka_fixes
from topics.spec import TopicSpec

pytestmark = pytest.mark.integration


class _SlowListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Takes `seconds` over each assignment, as Faust's callback does on a loaded machine."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.assignments: list[set[TopicPartition]] = []
        self.done = asyncio.Event()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assignments.append(set(assigned))
        await asyncio.sleep(self.seconds)
        self.done.set()


async def test_members_whose_rebalance_callbacks_outlast_the_session_stay_in_the_group(stack: Settings) -> None:
    """Two members, each taking 1.5 session timeouts over its assignment (two workers recovering tables on a busy
    machine). Without the fix the broker expires them while they work, and they rejoin again and again."""
    aiokafka_fixes.apply()  # as every worker does (streams.transport); process-wide
    spec = TopicSpec(name=f"test.members-{uuid.uuid4().hex[:8]}", value_schema="switchboard.bus.DeadLetter",
                     key="n", owner="this test", description="group membership", partitions=2)
    await ensure_topics(stack, [spec])
    session_s = stack.kafka.effective_session_timeout_ms / 1000
    group = f"slow-{uuid.uuid4().hex[:8]}"
    listeners = [_SlowListener(seconds=session_s * 1.5) for _ in range(2)]
    consumers = [make_consumer(stack, group_id=group) for _ in listeners]
    for consumer, listener in zip(consumers, listeners, strict=True):
        consumer.subscribe([spec.name], listener=listener)
    try:
        await asyncio.gather(*(consumer.start() for consumer in consumers))
        await asyncio.wait_for(asyncio.gather(*(listener.done.wait() for listener in listeners)), timeout=90)
        # A storm shows within a session timeout or two of the callbacks' end; there is no event for its absence.
        await asyncio.sleep(session_s * 2)
        counts = [len(listener.assignments) for listener in listeners]
        assert counts == [1, 1], f"assignments per member: {counts} (members were expired and rejoined)"
        for consumer in consumers:  # still members of the generation they were assigned in
            (tp,) = consumer.assignment()
            await consumer.commit({tp: OffsetAndMetadata(0, "")})
    finally:
        await asyncio.gather(*(consumer.stop() for consumer in consumers))
