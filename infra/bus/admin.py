"""Creating and listing the declared topics, idempotently."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from infra.bus.clients import aiokafka_common
from infra.config import Settings
from topics.errors import BusError
from topics.spec import TopicSpec


@dataclass(frozen=True)
class TopicOutcome:
    spec: TopicSpec
    created: bool
    partitions: int | None
    note: str = ""


async def _admin(settings: Settings) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**aiokafka_common(settings))
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise BusError(
            f"cannot reach the Kafka bus at {settings.bootstrap_servers} ({exc}); is it up? "
            "(`switchboard status`, or check SWITCHBOARD_KAFKA__BOOTSTRAP_SERVERS)"
        ) from None
    return admin


async def existing_topics(settings: Settings) -> dict[str, int]:
    """Topic name -> partition count, as the cluster reports it."""
    admin = await _admin(settings)
    try:
        described = await admin.describe_topics()
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if not t.get("error_code")}


async def ensure_topics(settings: Settings, specs: Iterable[TopicSpec]) -> list[TopicOutcome]:
    """Create every declared topic that does not exist yet; existing ones are left as they are (and reported
    if their partition count differs from the declaration)."""
    wanted = list(specs)
    admin = await _admin(settings)
    try:
        described = {t["topic"]: t for t in await admin.describe_topics() if not t.get("error_code")}
        outcomes: list[TopicOutcome] = []
        for spec in wanted:
            if spec.name in described:
                count = len(described[spec.name]["partitions"])
                note = "" if count == spec.partitions else f"has {count} partitions, declared {spec.partitions}"
                outcomes.append(TopicOutcome(spec, created=False, partitions=count, note=note))
                continue
            new = NewTopic(spec.name, spec.partitions, settings.kafka.replication_factor, topic_configs=spec.config())
            try:
                response = await admin.create_topics([new])
            except TopicAlreadyExistsError:  # created concurrently by another process: fine
                outcomes.append(TopicOutcome(spec, created=False, partitions=None))
                continue
            except KafkaError as exc:
                raise BusError(f"could not create topic {spec.name}: {exc}") from None
            # aiokafka reports per-topic failures in the response instead of raising.
            for _name, code, *rest in response.topic_errors:
                if code == TopicAlreadyExistsError.errno:
                    outcomes.append(TopicOutcome(spec, created=False, partitions=None))
                    break
                if code != 0:
                    message = rest[0] if rest and rest[0] else f"error code {code}"
                    raise BusError(f"the bus refused to create topic {spec.name}: {message} (check the broker's "
                                   "log; on the embedded stack, that its S3 bucket exists)")
            else:
                outcomes.append(TopicOutcome(spec, created=True, partitions=spec.partitions))
        return outcomes
    finally:
        await admin.close()
