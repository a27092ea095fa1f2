"""The embedded default stack: SeaweedFS (S3), Tansu (Kafka protocol, log on that S3), amqtt (MQTT), workers."""

from infra.embedded.stack import ComponentStatus, EmbeddedStack

__all__ = ["ComponentStatus", "EmbeddedStack"]
