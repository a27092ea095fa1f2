"""The `iot:` section of a policy: rooms (room -> device role -> device id) and telemetry rules.

Kept apart from the loader's dialogue parsing because the IoT processors (agents/iot) are its other reader: the
device twin evaluates the rules. Problems are reported through the loader's reader, each with its line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import yaml

from agents.dialogue.model import Dialogue, IotSettings, TelemetryRule

if TYPE_CHECKING:  # the loader imports this module; its reader is only a type here
    from agents.dialogue.loader import _Reader

_IOT_KEYS = ("rooms", "rules")
_RULE_KEYS = ("id", "room", "device", "metric", "above", "below", "event")
#: A device id becomes an MQTT topic level (devices/<id>/set) and a Kafka key: no level separators or wildcards.
_DEVICE_ID = re.compile(r"[^/+#\s\x00]{1,128}")
_EVENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def read_iot(r: _Reader, node: yaml.Node) -> IotSettings | None:
    """The `iot:` mapping; None (with problems recorded) when any part is wrong."""
    given = r.mapping(node, "iot", _IOT_KEYS)
    if given is None:
        return None
    ok = True
    rooms: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for room, _, devices_node in (r.pairs(given["rooms"], "iot: rooms") if "rooms" in given else []):
        devices = []
        for role, _, device_node in r.pairs(devices_node, f"iot: room {room}"):
            device = r.text(device_node, f"iot: room {room}: {role}")
            if device is not None and not _DEVICE_ID.fullmatch(device):
                r.problem(device_node, f"iot: room {room}: {role}: device id {device!r} cannot be an MQTT topic "
                                       "level; use no '/', '+', '#' or spaces")
                device = None
            if device is None:
                ok = False
                continue
            devices.append((role, device))
        rooms.append((room, tuple(devices)))
    rules = [_rule(r, item, dict(rooms)) for item in
             (r.sequence(given["rules"], "iot: rules") if "rules" in given else [])]
    seen: dict[str, int] = {}
    for rule in rules:
        if rule is not None and rule.id in seen:
            r.problem(rule.at.line, f"iot: rule {rule.id!r} is defined twice (first on line {seen[rule.id]}); "
                                    "keep one")
            ok = False
        elif rule is not None:
            seen[rule.id] = rule.at.line
    if not ok or any(rule is None for rule in rules):
        return None
    return IotSettings(rooms=tuple(rooms), rules=tuple(rule for rule in rules if rule is not None))


def _rule(r: _Reader, node: yaml.Node,
          rooms: dict[str, tuple[tuple[str, str], ...]]) -> TelemetryRule | None:
    given = r.mapping(node, "iot: rule", _RULE_KEYS, required=("id", "device", "metric", "event"))
    if given is None or not {"id", "device", "metric", "event"} <= set(given):
        return None
    rule_id = r.name(given["id"], "iot: rule id")
    what = f"iot: rule {rule_id}"
    metric = r.text(given["metric"], f"{what}: metric")
    event = r.text(given["event"], f"{what}: event")
    if event is not None and not _EVENT.fullmatch(event):
        r.problem(given["event"], f"{what}: event {event!r} must be a name like office.too_hot (letters, digits, "
                                  "'_', '-', '.')")
        event = None
    bounds = {key: r.number(given[key], f"{what}: {key}") for key in ("above", "below") if key in given}
    if len(bounds) != 1:
        r.problem(node, f"{what} needs exactly one of `above` and `below` (the threshold)")
        return None
    room = r.text(given["room"], f"{what}: room") if "room" in given else None
    device = r.text(given["device"], f"{what}: device")
    device_id = device
    if room is not None and device is not None:
        devices = rooms.get(room)
        if devices is None:
            r.problem(given["room"], f"{what}: room {room!r} is not in iot.rooms ({', '.join(rooms) or 'none'})")
            return None
        device_id = dict(devices).get(device)
        if device_id is None:
            r.problem(given["device"], f"{what}: room {room} has no device {device!r}; its devices: "
                                       f"{', '.join(role for role, _ in devices) or 'none'}")
            return None
    elif device is not None and not _DEVICE_ID.fullmatch(device):
        r.problem(given["device"], f"{what}: device id {device!r} cannot be an MQTT topic level")
        return None
    if None in (rule_id, metric, event, device_id) or None in bounds.values():
        return None
    assert rule_id is not None and metric is not None and event is not None and device_id is not None
    return TelemetryRule(at=r.at(node), id=rule_id, device_id=device_id, metric=metric, event=event,
                         above=bounds.get("above"), below=bounds.get("below"), room=room)


def check_rule_events(r: _Reader, iot: IotSettings, dialogues: Iterable[Dialogue]) -> None:
    """Each rule's event must start some dialogue, or its alerts would reach sessions and change nothing."""
    handled = {trigger.event for dialogue in dialogues for trigger in dialogue.triggers if trigger.event}
    for rule in iot.rules:
        if rule.event not in handled:
            r.problem(rule.at.line, f"iot: rule {rule.id} raises event {rule.event!r}, which no dialogue's trigger "
                                    f"handles; add a dialogue with `trigger: {{event: {rule.event}}}`")
