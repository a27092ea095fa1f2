"""`python -m infra.embedded.mqtt_broker -c CONFIG`: the embedded amqtt broker, with fixes (amqtt 0.12; see
docs/iot.md): two that the MQTT bridge's "nothing lost" guarantee needs, and one for retained messages:

1. amqtt marks *every* client anonymous when anonymous access is allowed, and keeps no QoS 1/2 messages for an
   anonymous client's persistent session while it is away. `NamedSessionAuthPlugin` allows anonymous clients but
   does not mark a client that gave a username anonymous, so the bridge's session keeps its messages.
2. amqtt drops an outgoing QoS 1 message when the subscriber has not acknowledged it within 5 s, or when the
   subscriber disconnects before acknowledging: it is removed from the session and never sent again. MQTT 3.1.1
   (4.4) requires it to be resent when the client reconnects with the same session. The patched flow waits for
   the PUBACK as long as the connection lives and keeps an unacknowledged message in the session, so amqtt's own
   reconnect path (`_retry_deliveries`) resends it.
3. On every connect amqtt sends the client the retained messages of *every* topic filter any client subscribed to
   (`for topic in self._subscriptions`), not only the client's own: a device subscribed to `devices/<id>/set` got
   the other devices' retained `devices/<id>/status` messages (the bridge subscribes to `devices/+/status`), and the
   simulator took `online` for a command. Retained messages now go only with the session's own subscriptions.
"""

from __future__ import annotations

import asyncio
from typing import Any

from amqtt.broker import Broker
from amqtt.errors import AMQTTError
from amqtt.mqtt.protocol.handler import ProtocolHandler
from amqtt.plugins.authentication import AnonymousAuthPlugin
from amqtt.session import OUTGOING, Session


class NamedSessionAuthPlugin(AnonymousAuthPlugin):  # type: ignore[misc]
    """Anonymous access as configured, but a client with a username keeps a real (non-anonymous) session."""

    async def authenticate(self, *, session: Session) -> bool:
        allowed = bool(await super().authenticate(session=session))
        if allowed and session.username:
            session.is_anonymous = False
        return allowed


_original_qos1 = ProtocolHandler._handle_qos1_message_flow


async def _qos1_flow(self: Any, app_message: Any) -> None:
    """QoS 1 as MQTT 3.1.1 has it: an outgoing message stays in the session until its PUBACK arrives."""
    if app_message.direction != OUTGOING or self.session is None or app_message.puback_packet:
        await _original_qos1(self, app_message)
        return
    packet_id = app_message.packet_id
    if packet_id is None:
        raise AMQTTError("QoS 1 message without a packet id")
    self.session.inflight_out[packet_id] = app_message
    packet = app_message.build_publish_packet(dup=app_message.publish_packet is not None)
    waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    self._puback_waiters[packet_id] = waiter
    try:
        await self._send_packet(packet)
        app_message.publish_packet = packet
        app_message.puback_packet = await waiter  # cancelled when the connection closes: the message stays
    finally:
        if self._puback_waiters.get(packet_id) is waiter:
            del self._puback_waiters[packet_id]
    self.session.inflight_out.pop(packet_id, None)


_original_retained = Broker._publish_retained_messages_for_subscription


async def _retained_for_own_subscription(self: Any, subscription: tuple[str, int], session: Session) -> None:
    """Retained messages for `subscription` only if it is the session's own (fix 3)."""
    subscribers = self._subscriptions.get(subscription[0], ())
    if any(subscriber is session or subscriber.client_id == session.client_id for subscriber, _ in subscribers):
        await _original_retained(self, subscription, session)


def apply_fixes() -> None:
    ProtocolHandler._handle_qos1_message_flow = _qos1_flow
    Broker._publish_retained_messages_for_subscription = _retained_for_own_subscription


def main() -> None:
    from amqtt.scripts import broker_script

    apply_fixes()
    broker_script.main()


if __name__ == "__main__":
    main()
