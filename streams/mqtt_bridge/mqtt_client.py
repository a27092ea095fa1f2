"""The bridge's MQTT connection (gmqtt): credentials and TLS, a persistent session, last will and presence,
reconnects with exponential backoff, manual acknowledgement of incoming QoS 1/2 messages, acknowledgement
tracking of outgoing ones, and a read gate for back-pressure.

gmqtt acknowledges an incoming QoS 1/2 message when the `on_message` coroutine returns (with
`optimistic_acknowledgement=False`), so the bridge returns only after Kafka acknowledged the event.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.storage import PersistentStorage

from infra.config import Settings
from streams.mqtt_bridge.status import BridgeStats

log = logging.getLogger("switchboard.mqtt_bridge")
OnMessage = Callable[[str, bytes, int, dict[str, Any]], Awaitable[int]]
ORIGIN_PROPERTY = "switchboard-origin"


class PublishLost(ConnectionError):
    """The broker dropped our session before acknowledging a publish; publish it again."""


class AckTrackingStorage(PersistentStorage):  # type: ignore[misc]
    """gmqtt's in-flight store of outgoing QoS 1/2 publishes, with a future per packet id that completes on
    PUBACK/PUBCOMP, and fails when the session is lost (the broker had no session to resume)."""

    def __init__(self) -> None:
        super().__init__()
        self.last_pushed: int | None = None
        self.waiters: dict[int, asyncio.Future[None]] = {}

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.last_pushed = mid

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        waiter = self.waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        super().clear()
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(PublishLost("the MQTT broker did not resume our session"))
        self.waiters.clear()


class Backoff:
    """Exponential delays between `low` and `high` seconds; `reset` after a success."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.current = low

    def next(self) -> float:
        delay = self.current
        self.current = min(self.current * 2, self.high)
        return delay

    def reset(self) -> None:
        self.current = self.low


class _Client(gmqtt.Client):  # type: ignore[misc]
    """gmqtt's client with backoff between reconnect attempts (gmqtt itself waits a fixed delay)."""

    backoff: Backoff

    async def reconnect(self, delay: bool = False) -> None:
        if delay:
            self.set_config({"reconnect_delay": self.backoff.next()})
        await super().reconnect(delay)


def tls_context(settings: Settings) -> ssl.SSLContext | bool:
    if not settings.mqtt.tls:
        return False
    return ssl.create_default_context(cafile=str(settings.mqtt.ca_file) if settings.mqtt.ca_file else None)


class MqttLink:
    """One MQTT connection for both directions."""

    def __init__(self, settings: Settings, stats: BridgeStats, on_message: OnMessage,
                 subscriptions: list[tuple[str, int]], presence_topic: str,
                 room: Callable[[], Awaitable[None]]) -> None:
        bridge = settings.bridge
        self.settings = settings
        self.stats = stats
        self.subscriptions = subscriptions
        self.presence_topic = presence_topic
        self.room = room
        self.v5 = bridge.mqtt_version == "5"
        self.connected = asyncio.Event()
        self.storage = AckTrackingStorage()
        self.backoff = Backoff(bridge.reconnect_min_s, bridge.reconnect_max_s)
        will = gmqtt.Message(presence_topic, b"offline", qos=1, retain=True)
        self.client = _Client(bridge.client_id, clean_session=False, optimistic_acknowledgement=False,
                              will_message=will, persistent_storage=self.storage,
                              **({"session_expiry_interval": 0xFFFFFFFF} if self.v5 else {}))
        self.client.backoff = self.backoff
        self.client.set_config({"reconnect_retries": -1, "reconnect_delay": bridge.reconnect_min_s})
        username = settings.mqtt.username or bridge.username
        password = settings.mqtt.password.get_secret_value() if settings.mqtt.password else None
        self.client.set_auth_credentials(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self._handler = on_message

    # -- connection --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, retrying with backoff until the broker answers (the first connect is ours to retry)."""
        host, port = self.settings.mqtt_address
        version = MQTTv50 if self.v5 else MQTTv311
        while True:
            try:
                await self.client.connect(host, port, ssl=tls_context(self.settings),
                                          keepalive=self.settings.bridge.keepalive_s, version=version)
                return
            except Exception as exc:  # OSError, refused CONNACK, TLS errors: say so and try again
                delay = self.backoff.next()
                self.stats.mqtt_error = f"{type(exc).__name__}: {exc}"
                log.warning("MQTT broker %s:%s not reachable (%s); retrying in %.1fs", host, port,
                            self.stats.mqtt_error, delay)
                await asyncio.sleep(delay)

    async def stop(self) -> None:
        """Say offline (retained, like the last will would) and disconnect cleanly."""
        if self.client.is_connected:
            self.client.publish(self.presence_topic, b"offline", qos=1, retain=True)
            await asyncio.sleep(0)
            await self.client.disconnect()

    def _on_connect(self, client: Any, flags: int, rc: int, properties: dict[str, Any]) -> None:
        self.backoff.reset()
        self.stats.mqtt_connected, self.stats.mqtt_error = True, None
        self.stats.mqtt_connects += 1
        self._install_read_gate()
        subs = [gmqtt.Subscription(topic, qos=qos, no_local=self.v5) for topic, qos in self.subscriptions]
        if subs:
            client.subscribe(subs)
        client.publish(self.presence_topic, b"online", qos=1, retain=True, **self._origin())
        log.info("connected to MQTT (session present: %s); subscribed to %s", bool(flags),
                 ", ".join(f"{t} (QoS {q})" for t, q in self.subscriptions) or "nothing")
        self.connected.set()

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        self.connected.clear()
        self.stats.mqtt_connected = False
        self.stats.mqtt_error = "connection lost"
        log.warning("MQTT connection lost; reconnecting with backoff (unacknowledged messages are redelivered)")

    async def _on_message(self, client: Any, topic: str, payload: bytes, qos: int,
                          properties: dict[str, Any]) -> int:
        return await self._handler(topic, payload, qos, properties)

    def _install_read_gate(self) -> None:
        """Back-pressure: the connection's reader waits for room in the bridge's buffer before reading more, so
        the socket fills and the broker holds the messages. (gmqtt reads through `protocol.read`; this wraps it.)"""
        connection = getattr(self.client, "_connection", None)
        protocol = getattr(connection, "_protocol", None)
        if protocol is None or getattr(protocol, "_switchboard_gated", False):
            return
        original = protocol.read

        async def gated_read(n: int = -1) -> bytes:
            await self.room()
            data: bytes = await original(n)
            return data

        protocol.read = gated_read
        protocol._switchboard_gated = True

    # -- publishing --------------------------------------------------------------------------------------------
    def _origin(self) -> dict[str, Any]:
        if not self.v5:
            return {}
        return {"user_property": [(ORIGIN_PROPERTY, self.settings.bridge.client_id)]}

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish once connected; return when the broker acknowledged it (QoS 1/2) or it was written (QoS 0).
        A publish the broker lost with its session is sent again."""
        while True:
            await self.connected.wait()
            self.storage.last_pushed = None
            self.client.publish(topic, payload, qos=qos, retain=retain, **self._origin())
            if qos == 0:
                return
            mid = self.storage.last_pushed
            if mid is None:  # pragma: no cover - gmqtt stores every QoS 1/2 publish
                raise RuntimeError("gmqtt did not store a QoS>0 publish")
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.storage.waiters[mid] = waiter
            try:
                await waiter
                return
            except PublishLost:
                log.warning("publish to %s lost with the MQTT session; sending it again", topic)

    @staticmethod
    def origin_of(properties: dict[str, Any]) -> str | None:
        """The bridge that published a message (MQTT 5 user property), if any."""
        for name, value in properties.get("user_property", []) or []:
            if name == ORIGIN_PROPERTY:
                return str(value)
        return None
