"""Which IoT processors a worker runs: only where some policy declares an `iot:` section (each subscribed partition
costs the embedded broker on every fetch)."""

from __future__ import annotations

from collections.abc import Sequence

from agents.dialogue.model import Policy
from agents.iot.alerts import AlertDispatcher
from agents.iot.queries import IOT_WORKFLOWS, DeviceQueryRouter
from agents.iot.twins import DeviceTwins
from topics.processor import Processor, StatefulProcessor

__all__ = ["IOT_WORKFLOWS", "iot_processors", "uses_iot"]


def uses_iot(policies: Sequence[Policy]) -> bool:
    return any(policy.iot.rooms or policy.iot.rules for policy in policies)


def iot_processors(policies: Sequence[Policy]) -> list[Processor | StatefulProcessor]:
    """The device-query router, the device twin (with every policy's telemetry rules) and the alert dispatcher."""
    if not uses_iot(policies):
        return []
    rules = [(policy.agent, rule) for policy in policies for rule in policy.iot.rules]
    return [DeviceQueryRouter(), DeviceTwins(rules), AlertDispatcher()]
