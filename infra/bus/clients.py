"""Kafka clients built from settings, so every producer and consumer gets the same address, security and latency
knobs (aiokafka for the asyncio code, confluent-kafka where its C client is wanted)."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from infra.bus import fetch_wait, group_leave
from infra.config import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    kafka = settings.kafka
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
    if kafka.ssl_certfile:
        context.load_cert_chain(str(kafka.ssl_certfile), str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None)
    return context


def aiokafka_common(settings: Settings) -> dict[str, Any]:
    """Connection and security arguments shared by every aiokafka client."""
    kafka = settings.kafka
    common: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    context = ssl_context(settings)
    if context is not None:
        common["ssl_context"] = context
    if kafka.sasl_mechanism:
        common["sasl_mechanism"] = kafka.sasl_mechanism
        common["sasl_plain_username"] = kafka.sasl_username
        common["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return common


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """An acks=all producer. Idempotence stays off: Tansu has no InitProducerId; deduplication is by event id."""
    options: dict[str, Any] = {**aiokafka_common(settings), "acks": "all", "enable_idempotence": False,
                               "linger_ms": 0}
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer(settings: Settings, *topics: str, group_id: str | None = None, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer with the configured fetch waits and group timeouts; offsets are committed by the caller."""
    kafka = settings.kafka
    options: dict[str, Any] = {
        **aiokafka_common(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": kafka.effective_fetch_max_wait_ms,
        "session_timeout_ms": kafka.effective_session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "rebalance_timeout_ms": kafka.effective_rebalance_timeout_ms,
    }
    options.update(overrides)
    fetch_wait.install(kafka.fetch_catch_up_wait_ms, kafka.fetch_catch_up_max_wait_ms)
    group_leave.install()  # leaves its group on stop also in Tansu's generation 0
    return AIOKafkaConsumer(*topics, **options)


def confluent_config(settings: Settings) -> dict[str, Any]:
    """The same settings in librdkafka's vocabulary, for confluent-kafka clients."""
    kafka = settings.kafka
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": kafka.client_id,
        "security.protocol": kafka.security_protocol.lower(),
    }
    if kafka.sasl_mechanism:
        conf["sasl.mechanism"] = kafka.sasl_mechanism
        conf["sasl.username"] = kafka.sasl_username
        conf["sasl.password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
    for ours, theirs in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                         ("ssl_keyfile", "ssl.key.location")):
        value = getattr(kafka, ours)
        if value is not None:
            conf[theirs] = str(value)
    return conf
