"""What the bridge is doing, as counters and flags, written to a small JSON file that `switchboard status` reads."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BridgeStats:
    """Counters and state of one bridge process (one instance, mutated in place by the bridge's parts)."""

    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    mqtt_connected: bool = False
    mqtt_error: str | None = None
    mqtt_connects: int = 0
    kafka_ok: bool = True
    kafka_error: str | None = None
    bridged_in: int = 0  # MQTT messages written to Kafka as events
    dead_letters: int = 0  # MQTT messages or Kafka records dead-lettered
    loop_dropped: int = 0  # messages on a topic the bridge publishes to, not bridged back
    unrouted: int = 0  # messages matching no route (a subscription left from an older configuration)
    bridged_out: int = 0  # events published to MQTT
    buffer_messages: int = 0  # held, waiting for Kafka
    buffer_bytes: int = 0
    buffer_limit_messages: int = 0
    buffer_limit_bytes: int = 0
    intake_paused: bool = False  # the buffer is full: not reading from MQTT
    buffer_full_events: int = 0
    paused_since: float | None = None

    def problem(self) -> str | None:
        """What is wrong, in words, or None when the bridge is healthy."""
        if not self.mqtt_connected:
            return f"not connected to the MQTT broker ({self.mqtt_error or 'connecting'}); retrying with backoff"
        if not self.kafka_ok:
            return f"cannot write to Kafka ({self.kafka_error}); retrying with backoff, MQTT messages stay unacked"
        if self.intake_paused:
            return (f"buffer full ({self.buffer_messages}/{self.buffer_limit_messages} messages, "
                    f"{self.buffer_bytes}/{self.buffer_limit_bytes} bytes): not reading from MQTT until Kafka "
                    "catches up (raise bridge.buffer_messages / bridge.buffer_bytes, or check Kafka)")
        return None

    def snapshot(self) -> dict[str, Any]:
        return {**asdict(self), "updated": time.time(), "problem": self.problem()}


def write_status(path: Path, stats: BridgeStats) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(stats.snapshot(), indent=2))
    tmp.replace(path)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None
