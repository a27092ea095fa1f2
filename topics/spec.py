"""What a topic is: the declaration every producer, consumer and admin call is derived from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from topics.errors import TopicError

_NAME = re.compile(r"^[a-z][a-z0-9]*(\.[a-z][a-z0-9_-]*)+$")
DAY_MS = 24 * 3600 * 1000


class Cleanup(StrEnum):
    """Kafka's `cleanup.policy`: delete old segments by age, or keep the latest value per key."""

    DELETE = "delete"
    COMPACT = "compact"


@dataclass(frozen=True)
class TopicSpec:
    """One topic, declared once.

    `key` says in words what the message key is (it decides ordering: all events of one key stay in order);
    `value_schema` is the Avro full name of the payload every message must carry.
    """

    name: str
    value_schema: str
    key: str
    owner: str
    description: str
    partitions: int = 4
    cleanup: Cleanup = Cleanup.DELETE
    retention_ms: int | None = 7 * DAY_MS
    extra_config: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise TopicError(
                f"topic name {self.name!r} must be dotted lower-case words like 'dialogue.turns'"
            )
        if self.partitions < 1:
            raise TopicError(f"topic {self.name}: partitions must be >= 1, not {self.partitions}")
        if self.retention_ms is not None and self.retention_ms <= 0 and self.retention_ms != -1:
            raise TopicError(f"topic {self.name}: retention_ms must be positive or -1 (forever)")

    def config(self) -> dict[str, str]:
        """Topic-level configuration as Kafka's CreateTopics expects it."""
        conf = {"cleanup.policy": self.cleanup.value}
        if self.retention_ms is not None:
            conf["retention.ms"] = str(self.retention_ms)
        conf.update(self.extra_config)
        return conf
