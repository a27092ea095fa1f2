"""Is it up? One check per kind of service, used both for embedded components and for external services."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from infra.config import Settings
from topics.errors import StackError


def amqtt_config(host: str, port: int) -> str:
    """amqtt broker configuration: one TCP listener on `host:port`, anonymous clients allowed (loopback only),
    for `python -m infra.embedded.mqtt_broker`."""
    return (
        "listeners:\n"
        "  default:\n"
        "    type: tcp\n"
        f"    bind: {host}:{port}\n"
        "    max_connections: 10000\n"
        "plugins:\n"
        # amqtt's AnonymousAuthPlugin, except that a client giving a username keeps a real persistent session
        # (queued QoS 1/2 messages while it is away): the MQTT bridge relies on it. See infra/embedded/mqtt_broker.py.
        "  infra.embedded.mqtt_broker.NamedSessionAuthPlugin:\n"
        "    allow_anonymous: true\n"
    )


def s3_client_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "endpoint_url": settings.s3_endpoint,
        "aws_access_key_id": settings.s3.access_key_id,
        "aws_secret_access_key": settings.s3.secret_access_key.get_secret_value(),
        "region_name": settings.s3.region,
    }


async def s3_ready(settings: Settings, *, create_buckets: bool = False) -> None:
    """S3 answers with our credentials; optionally create the buckets (idempotent)."""
    import aioboto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    session = aioboto3.Session()
    config = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
    # Buckets are checked one by one (HEAD), so least-privilege credentials without ListAllMyBuckets work; the
    # broker's bucket matters only when the broker is the embedded one.
    wanted = [settings.s3.bucket] + ([settings.s3.broker_bucket] if settings.kafka.embedded else [])
    async with session.client("s3", config=config, **s3_client_kwargs(settings)) as s3:
        for bucket in wanted:
            try:
                await s3.head_bucket(Bucket=bucket)
                continue
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            if not create_buckets:
                raise StackError("s3", f"bucket {bucket} does not exist at {settings.s3_endpoint}; create it "
                                       "or set SWITCHBOARD_S3__BUCKET / SWITCHBOARD_S3__BROKER_BUCKET")
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                await s3.create_bucket(Bucket=bucket)


async def kafka_ready(settings: Settings) -> None:
    """The bus answers a metadata request.

    First one of the bootstrap addresses must accept a TCP connection: aiokafka logs an ERROR for every refused
    connection, which filled the supervisor's log (and the benchmarks' output) while a restarted broker booted."""
    from aiokafka.admin import AIOKafkaAdminClient

    from infra.bus.clients import aiokafka_common

    await _any_accepts(settings.bootstrap_servers)
    admin = AIOKafkaAdminClient(**{**aiokafka_common(settings), "request_timeout_ms": 5000})
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        await admin.close()


async def _any_accepts(addresses: str) -> None:
    """Return once one of the comma-separated host:port `addresses` accepts a connection; raise OSError if none."""
    refused: list[str] = []
    for address in (a.strip() for a in addresses.split(",") if a.strip()):
        host, _, port = address.rpartition(":")
        try:
            # Bounded: an address that drops packets must not hold up the next one.
            _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 2.0)
        except (OSError, ValueError, TimeoutError) as exc:
            refused.append(f"{address}: {exc}")
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise ConnectionRefusedError(f"no Kafka bootstrap address accepts connections ({'; '.join(refused)})")


async def mqtt_ready(settings: Settings) -> None:
    """The MQTT broker accepts a connection (with the configured credentials)."""
    import gmqtt
    from gmqtt.mqtt.constants import MQTTv311

    host, port = settings.mqtt_address
    client = gmqtt.Client(f"switchboard-check-{uuid.uuid4().hex[:8]}")
    client.set_config({"reconnect_retries": 0})
    if settings.mqtt.username:
        password = settings.mqtt.password.get_secret_value() if settings.mqtt.password else None
        client.set_auth_credentials(settings.mqtt.username, password)
    ssl: Any = False
    if settings.mqtt.tls:
        import ssl as ssl_module

        ssl = ssl_module.create_default_context(cafile=str(settings.mqtt.ca_file) if settings.mqtt.ca_file else None)
    try:
        # MQTT 3.1.1: what every broker speaks (amqtt has no MQTT 5).
        await asyncio.wait_for(client.connect(host, port, ssl=ssl, keepalive=10, version=MQTTv311),
                               timeout=5)
    finally:
        if client.is_connected:
            await client.disconnect()


async def file_appears(path: Path) -> None:
    if not path.exists():
        raise StackError(path.stem, "not ready yet")


async def external_checks(settings: Settings) -> list[tuple[str, str, str | None]]:
    """Check every external service; (part, address, error or None)."""
    results: list[tuple[str, str, str | None]] = []
    host, port = settings.mqtt_address
    parts: list[tuple[str, bool, Callable[[Settings], Awaitable[None]], str]] = [
        ("kafka", not settings.kafka.embedded, kafka_ready, settings.bootstrap_servers),
        ("s3", not settings.s3.embedded, s3_ready, settings.s3_endpoint),
        ("mqtt", not settings.mqtt.embedded, mqtt_ready, f"{host}:{port}"),
    ]
    for part, external, check, address in parts:
        if not external:
            continue
        try:
            await asyncio.wait_for(check(settings), timeout=15)
            results.append((part, address, None))
        except Exception as exc:
            results.append((part, address, f"{type(exc).__name__}: {exc}"))
    return results
