"""A fix for aiokafka 0.14: the consumer sends no heartbeat while its rebalance listener runs.

aiokafka stops its heartbeat task when it (re)joins a group and starts it again only after
`GroupCoordinator._on_join_complete` has returned, which awaits the user's `on_partitions_assigned` callback.
Faust's callback does real work (agents, topics, tables and their stores for the new assignment), which takes
1-6 s on a busy two-core machine. Longer than the session timeout (4 s in the embedded default, chosen so that a
dead worker is noticed quickly), the broker expires the member in the middle of its own callback; the member
rejoins, which triggers another rebalance, whose callback is as slow: a rebalance storm in which no worker
processes anything (seen in the workflow kill test at load average 10-17: 0 of 60 runs answered in 180 s, with
"Heartbeat failed: local member_id was not recognized" after every assignment).

The fix (f): the heartbeat task starts before the callback runs, once the member has its generation and
assignment, as the Java client's heartbeat thread keeps heartbeating during `onPartitionsAssigned`. A heartbeat
answered with "rebalance in progress" makes the member rejoin, as it does at any other time. The task is the one
aiokafka starts after the callback anyway (`_start_heartbeat_task` does nothing when it runs already).
"""

from __future__ import annotations

from aiokafka.consumer.group_coordinator import GroupCoordinator

from infra.bus import aiokafka_version

_original_on_join_complete = GroupCoordinator._on_join_complete


async def _on_join_complete(self: GroupCoordinator, generation: int, member_id: str, protocol: str,
                            member_assignment_bytes: bytes) -> None:
    self._start_heartbeat_task()  # FIX(f): keep the member alive while the rebalance listener runs
    await _original_on_join_complete(self, generation, member_id, protocol, member_assignment_bytes)


def apply() -> None:
    """Install fix (f) on aiokafka's group coordinator. Idempotent; refuses an aiokafka it was not written for."""
    aiokafka_version.check("streams.aiokafka_fixes", "GroupCoordinator._on_join_complete")
    if GroupCoordinator.__dict__.get("_on_join_complete") is not _on_join_complete:
        GroupCoordinator._on_join_complete = _on_join_complete


def applied() -> bool:
    """True when `apply()` has run in this process."""
    return GroupCoordinator.__dict__.get("_on_join_complete") is _on_join_complete
