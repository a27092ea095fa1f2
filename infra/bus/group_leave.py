"""A consumer that stops leaves its group also in the group's first generation, which Tansu numbers 0.

aiokafka 0.14 sends LeaveGroup on `stop()` only when `generation > 0`, taking 0 for "not in a generation". Kafka
numbers the first generation 1, so there it makes no difference; Tansu 0.6.0 numbers it 0. So every member of a
group's first generation stopped without leaving, and the group kept it until its session expired: the next
member's join waited for that, then another round. Measured with plain aiokafka consumers on the embedded broker
(4 s session, 3 s rebalance timeout; docs/bus-facts.md): the member joining after a clean stop in generation 0
took 8.2 s to be assigned, every later one 2.0 s. `switchboard up` met it when it restarted the MQTT bridge,
started once, with new settings (8.6 s instead of 2.5 s).

The fix (j): leave whenever the member has joined, that is, holds a generation (aiokafka resets it to -1, Kafka's
"no generation", when it has none) and a member id, as the Java client checks for a member id. Upstreamable as a
one-line change of `GroupCoordinator._maybe_leave_group`. Installed by every consumer the project builds
(`infra.bus.clients.consumer`) and by the workers (`streams.transport`).
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import errors
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.commit import OffsetCommitRequest
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest

from infra.bus import aiokafka_version

log = logging.getLogger("aiokafka.consumer.group_coordinator")  # where aiokafka logs its own LeaveGroup
_original = GroupCoordinator._maybe_leave_group


async def _maybe_leave_group(self: Any) -> None:
    joined = (self.generation != OffsetCommitRequest.DEFAULT_GENERATION_ID  # FIX(j): not `generation > 0`
              and self.member_id != JoinGroupRequest.UNKNOWN_MEMBER_ID)
    if joined and self._group_instance_id is None:
        # As aiokafka: a minimal effort, not retried; a static member (group_instance_id) does not leave.
        try:
            await self._send_req(LeaveGroupRequest(self.group_id, self.member_id))
        except errors.KafkaError as err:
            log.error("LeaveGroup request failed: %s", err)
        else:
            log.info("LeaveGroup request succeeded")
    self.reset_generation()


def install() -> None:
    """Install fix (j) on aiokafka's group coordinator, for the whole process. Idempotent; refuses an aiokafka it
    was not written for."""
    aiokafka_version.check("infra.bus.group_leave", "GroupCoordinator._maybe_leave_group")
    GroupCoordinator._maybe_leave_group = _maybe_leave_group


def installed() -> bool:
    """True when `install()` has run in this process."""
    return GroupCoordinator.__dict__.get("_maybe_leave_group") is _maybe_leave_group
