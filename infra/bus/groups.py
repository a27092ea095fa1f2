"""Consumer-group membership operations that no client library offers: removing another member from a group.

Kafka's LeaveGroup request names the member that leaves; the coordinator does not check that the member asks for
itself. A restarted worker uses that to remove its SIGKILLed predecessor (`streams.predecessor`), which would
otherwise stay in the group until its session expires and hold up the rebalance the restarted worker's join
starts. Member ids are unique per consumer instance, so removing one can only affect that instance.
"""

from __future__ import annotations

from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.errors import NoError, UnknownMemberIdError, for_code
from aiokafka.protocol.group import LeaveGroupRequest

from infra.bus.clients import aiokafka_common
from infra.config import Settings
from topics.errors import BusError


async def remove_member(settings: Settings, group_id: str, member_id: str) -> bool:
    """Remove `member_id` from `group_id` now, as if it had left. False if the coordinator says it did not know
    the member (it left or expired already; Kafka says so, Tansu 0.6 answers success either way). Raises BusError
    when the coordinator refuses for another reason."""
    client = AIOKafkaClient(**aiokafka_common(settings))
    try:
        await client.bootstrap()
        coordinator = await client.coordinator_lookup(CoordinationType.GROUP, group_id)
        response = await client.send(coordinator, LeaveGroupRequest(group_id, member_id))
    finally:
        await client.close()
    if response.error_code == NoError.errno:
        return True
    if response.error_code == UnknownMemberIdError.errno:
        return False
    raise BusError(f"the broker refused to remove member {member_id} from group {group_id}: "
                   f"{for_code(response.error_code).__name__}; the member stays until its session expires")
