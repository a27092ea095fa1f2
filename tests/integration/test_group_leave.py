"""A consumer that stops leaves its group also in the group's first generation, which Tansu numbers 0
(`infra/bus/group_leave.py`, fix (j)). aiokafka left only from generation 1 on, so the stopped member stayed until
its session expired and the next member's join waited for it (8.2 s where 2 s is usual)."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.consumer.group_coordinator import GroupCoordinator

from infra.bus import group_leave
from infra.bus.admin import ensure_topics
from infra.bus.clients import aiokafka_common
from infra.bus.clients import consumer as make_consumer
from infra.config import Settings
from topics.spec import TopicSpec

pytestmark = pytest.mark.integration


async def _group(settings: Settings, group_id: str) -> tuple[str, int]:
    """The group's state and how many members the coordinator counts (DescribeGroups)."""
    admin = AIOKafkaAdminClient(**aiokafka_common(settings))
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    (described,) = [group for response in responses for group in response.groups]
    _error, _group_id, state, _protocol_type, _protocol, members = described[:6]
    return state, len(members)


async def _join_and_stop(settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch, *,
                         fixed: bool) -> tuple[int, tuple[str, int]]:
    """A new group's only member joins and stops; its generation, and the group as the coordinator sees it after.
    `fixed=False`: as aiokafka does without the fix."""
    group_id = f"leave-{uuid.uuid4().hex[:8]}"
    member = make_consumer(settings, topic, group_id=group_id)  # installs the fix
    with monkeypatch.context() as patches:
        if not fixed:
            patches.setattr(GroupCoordinator, "_maybe_leave_group", group_leave._original)
        await member.start()  # returns once the member has its assignment
        generation = member._coordinator.generation
        await member.stop()
    return generation, await _group(settings, group_id)


async def test_a_member_of_the_first_generation_leaves_when_it_stops(stack: Settings,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TopicSpec(name=f"test.leave-{uuid.uuid4().hex[:8]}", value_schema="switchboard.bus.DeadLetter",
                     key="n", owner="this test", description="group leave", partitions=1)
    await ensure_topics(stack, [spec])

    generation, after = await _join_and_stop(stack, spec.name, monkeypatch, fixed=False)
    assert generation == 0 and after == ("Stable", 1), (
        f"generation {generation}, group {after} after a plain aiokafka member stopped: the broker no longer numbers "
        "the first generation 0, or aiokafka leaves from it, so infra.bus.group_leave may no longer be needed")

    generation, after = await _join_and_stop(stack, spec.name, monkeypatch, fixed=True)
    assert group_leave.installed()
    assert generation == 0
    assert after == ("Empty", 0), after
