"""Client logic for the Kafka-protocol bus: clients from settings, topic admin, correct reading to the end, and a
fetch wait that a consumer behind raises (`fetch_wait`), and a stopping consumer that leaves its group also in
Tansu's first generation (`group_leave`)."""

from infra.bus.admin import TopicOutcome, ensure_topics, existing_topics
from infra.bus.clients import aiokafka_common, confluent_config, consumer, producer
from infra.bus.lag import PartitionLag, group_lag
from infra.bus.reading import PartitionEnd, find_ends, read_topic, topic_ends

__all__ = [
    "PartitionEnd",
    "PartitionLag",
    "TopicOutcome",
    "aiokafka_common",
    "confluent_config",
    "consumer",
    "ensure_topics",
    "existing_topics",
    "find_ends",
    "group_lag",
    "producer",
    "read_topic",
    "topic_ends",
]
