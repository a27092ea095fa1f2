"""Simulated devices for demos and tests (`switchboard iot simulate`), speaking the default routes' topics:

- every `interval` seconds each device publishes `sensors/<id>/temperature` `{"value": 21.7, "unit": "C"}` (QoS 1);
- it announces itself with `devices/<id>/status` `online` (retained), with `offline` as its last will;
- it obeys commands on `devices/<id>/set` (`{"name": "turn_on" | "turn_off" | "toggle", ...}`, as the bridge
  publishes `devices.commands` events) by publishing its state on `devices/<id>/state` `{"state": "on"}`.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv311

from infra.config import Settings
from streams.mqtt_bridge.mqtt_client import tls_context

Say = Callable[[str], None]


@dataclass
class Device:
    device_id: str
    temperature: float = 21.0
    state: str = "off"
    commands: list[str] = field(default_factory=list)

    def reading(self, rng: random.Random) -> dict[str, Any]:
        self.temperature = round(self.temperature + rng.uniform(-0.3, 0.3), 2)
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
                   prefix: str = "sim", say: Say = print, seed: int | None = None) -> list[Device]:
    """Run `devices` simulated devices for `rounds` readings each (forever when None); returns them at the end."""
    rng = random.Random(seed)
    fleet = [Device(f"{prefix}-{i + 1}", temperature=round(rng.uniform(19, 24), 2)) for i in range(devices)]
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
