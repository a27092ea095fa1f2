"""A SIGKILLed member is removed from its group at once, instead of when its session expires (`streams.predecessor`).

A supervisor restarts a killed worker within a second or two; its join starts a rebalance that, on Tansu, waits for
the dead member until its session expires. The restarted worker removes its predecessor first, so the survivor (and
the restarted worker) are assigned without that wait.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import ConsumerRebalanceListener, TopicPartition

from infra.bus.admin import ensure_topics
from infra.bus.clients import consumer as make_consumer
from infra.config import Settings
from streams import predecessor
from topics.spec import TopicSpec

pytestmark = pytest.mark.integration

SESSION_MS = 20_000  # long, so that an assignment before it expires can only come from the removal

# A group member in its own process, as a worker is: it records its member id as a worker does, and is SIGKILLed.
_MEMBER = """
import asyncio, sys
from pathlib import Path
from aiokafka import ConsumerRebalanceListener
from infra.bus.clients import consumer as make_consumer
from infra.config import load_settings
from streams import predecessor

settings = load_settings()  # the test's stack, from the environment
group, topic, datadir = sys.argv[1], sys.argv[2], Path(sys.argv[3])

class Listener(ConsumerRebalanceListener):
    async def on_partitions_revoked(self, revoked):
        pass
    async def on_partitions_assigned(self, assigned):
        predecessor.record(datadir, group, consumer._coordinator.member_id)
        print(sorted(tp.partition for tp in assigned), flush=True)

async def main():
    global consumer
    consumer = make_consumer(settings, group_id=group, session_timeout_ms=int(sys.argv[4]))
    consumer.subscribe([topic], listener=Listener())
    await consumer.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.latest: set[int] = set()
        self.changed = asyncio.Event()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.latest = {tp.partition for tp in assigned}
        self.changed.set()

    async def until(self, partitions: set[int]) -> None:
        while self.latest != partitions:
            self.changed.clear()
            await self.changed.wait()


async def test_a_killed_members_successor_removes_it_and_the_group_rebalances_before_its_session_expires(
        stack: Settings, tmp_path: Path) -> None:
    spec = TopicSpec(name=f"test.predecessor-{uuid.uuid4().hex[:8]}", value_schema="switchboard.bus.DeadLetter",
                     key="n", owner="this test", description="member removal", partitions=2)
    await ensure_topics(stack, [spec])
    group = f"pred-{uuid.uuid4().hex[:8]}"
    member = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _MEMBER, group, spec.name, str(tmp_path), str(SESSION_MS),
        stdout=asyncio.subprocess.PIPE, env=_environment(stack))
    assert member.stdout is not None
    survivor_view = _Assignments()
    survivor = make_consumer(stack, group_id=group, session_timeout_ms=SESSION_MS)
    survivor.subscribe([spec.name], listener=survivor_view)
    try:
        assert json.loads(await asyncio.wait_for(member.stdout.readline(), 60)) == [0, 1]
        await survivor.start()
        await asyncio.wait_for(_one_each(member, survivor_view), 60)
        member.send_signal(signal.SIGKILL)
        await member.wait()

        dead = predecessor.read(tmp_path)
        assert dead is not None and dead.group == group and dead.process_gone()
        removed = await predecessor.remove_dead_predecessor(stack, tmp_path, group)
        assert removed == dead
        # Taken: a second remover (the restarted worker after the supervisor) finds nothing to remove.
        assert predecessor.read(tmp_path) is None
        assert await predecessor.remove_dead_predecessor(stack, tmp_path, group) is None
        # Without the removal the survivor could be assigned both partitions only once the dead member's session
        # had expired (20 s from its last heartbeat) and a join round had passed. With it, one join round (on Tansu
        # half the session timeout) after the survivor's next heartbeat.
        await asyncio.wait_for(survivor_view.until({0, 1}), SESSION_MS / 1000)
        assert survivor.assignment() == {TopicPartition(spec.name, 0), TopicPartition(spec.name, 1)}
    finally:
        if member.returncode is None:
            member.kill()
            await member.wait()
        await survivor.stop()


def _environment(stack: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(stack.environment())
    return env


async def _one_each(member: asyncio.subprocess.Process, survivor_view: _Assignments) -> None:
    """Both members hold one partition: the member printed its new assignment and the survivor has the other."""
    assert member.stdout is not None
    while True:
        mine = set(json.loads(await member.stdout.readline()))
        if len(mine) == 1:
            break
    await survivor_view.until({0, 1} - mine)
