"""Simulated devices for demos and tests (`switchboard iot simulate`), speaking the default routes' topics:

- every `interval` seconds each device publishes `sensors/<id>/temperature` `{"value": 21.7, "unit": "C"}` (QoS 1);
- it announces itself with `devices/<id>/status` `online` (retained), with `offline` as its last will;
- it obeys commands on `devices/<id>/set` (`{"name": "turn_on" | "turn_off" | "toggle", ...}`, as the bridge
  publishes `devices.commands` events) by publishing its state on `devices/<id>/state` `{"state": "on"}`;
- it is a room with a fan: while the fan is on the temperature falls, and `heat` warms chosen rooms while it is off,
  so the smart-office agent's "room too hot" rule can be seen firing (agents/smart_office).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv311

from infra.config import Settings
from streams.mqtt_bridge.mqtt_client import tls_context

Say = Callable[[str], None]


#: How much a running fan cools its room per reading, and how cool it gets.
FAN_COOLING_C = 0.5
COOLEST_C = 16.0


@dataclass
class Device:
    """A thermometer with a fan switch: `heat` warms the room per reading while the fan is off (to reach a rule's
    threshold in a demo); the fan, once on, cools it."""

    device_id: str
    temperature: float = 21.0
    state: str = "off"
    heat: float = 0.0
    commands: list[str] = field(default_factory=list)

    def reading(self, rng: random.Random) -> dict[str, Any]:
        change = rng.uniform(-0.3, 0.3)
        change += -FAN_COOLING_C if self.state == "on" else self.heat
        self.temperature = round(max(COOLEST_C, self.temperature + change), 2)
        return {"value": self.temperature, "unit": "C"}

    def obey(self, payload: bytes) -> str | None:
        """The new state after a command, or None for a command it does not know."""
        try:
            command = json.loads(payload)
            name = command.get("name") if isinstance(command, dict) else None
        except ValueError:
            return None
        self.commands.append(str(name))
        if name == "turn_on":
            self.state = "on"
        elif name == "turn_off":
            self.state = "off"
        elif name == "toggle":
            self.state = "off" if self.state == "on" else "on"
        else:
            return None
        return self.state


async def _connect(settings: Settings, device: Device, say: Say) -> gmqtt.Client:
    status = f"devices/{device.device_id}/status"
    client = gmqtt.Client(f"sim-{device.device_id}", will_message=gmqtt.Message(status, b"offline", qos=1,
                                                                                 retain=True))
    if settings.mqtt.username:
        client.set_auth_credentials(settings.mqtt.username,
                                    settings.mqtt.password.get_secret_value() if settings.mqtt.password else None)

    def on_message(client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
        state = device.obey(payload)
        if state is None:
            say(f"{device.device_id}: ignored command {payload!r}")
        else:
            say(f"{device.device_id}: command -> state {state}")
            client.publish(f"devices/{device.device_id}/state", json.dumps({"state": state}), qos=1)
        return 0

    client.on_message = on_message
    host, port = settings.mqtt_address
    await client.connect(host, port, ssl=tls_context(settings), keepalive=30, version=MQTTv311)
    client.subscribe(f"devices/{device.device_id}/set", qos=1)
    client.publish(status, b"online", qos=1, retain=True)
    return client


async def simulate(settings: Settings, *, devices: int = 3, interval_s: float = 2.0, rounds: int | None = None,
                   prefix: str = "sim", say: Say = print, seed: int | None = None,
                   heat: Mapping[str, float] | None = None) -> list[Device]:
    """Run `devices` simulated devices for `rounds` readings each (forever when None); returns them at the end.

    `heat` (device id -> degrees per reading) warms those rooms while their fan is off."""
    rng = random.Random(seed)
    fleet = [Device(f"{prefix}-{i + 1}", temperature=round(rng.uniform(19, 24), 2),
                    heat=(heat or {}).get(f"{prefix}-{i + 1}", 0.0)) for i in range(devices)]
    unknown = sorted(set(heat or {}) - {device.device_id for device in fleet})
    if unknown:
        raise ValueError(f"--heat names {', '.join(unknown)}, which are not simulated; devices are "
                         f"{prefix}-1 to {prefix}-{devices}")
    clients = [await _connect(settings, device, say) for device in fleet]
    say(f"{devices} simulated device(s) online: {', '.join(d.device_id for d in fleet)}; "
        f"telemetry every {interval_s}s on sensors/<id>/temperature, commands on devices/<id>/set")
    done = 0
    try:
        while rounds is None or done < rounds:
            for device, client in zip(fleet, clients, strict=True):
                client.publish(f"sensors/{device.device_id}/temperature", json.dumps(device.reading(rng)), qos=1)
            done += 1
            await asyncio.sleep(interval_s)
    finally:
        for device, client in zip(fleet, clients, strict=True):
            client.publish(f"devices/{device.device_id}/status", b"offline", qos=1, retain=True)
            await asyncio.sleep(0.05)
            await client.disconnect()
        say("simulated devices offline")
    return fleet
