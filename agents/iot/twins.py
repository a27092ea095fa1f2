"""The device twin: each device's latest reading per metric, kept from `iot.telemetry`, keyed by device id.

It reads `iot.telemetry` and `iot.queries` (co-partitioned by device id), so a query is answered from exactly the
readings that came before it in the log, and a replay gives the same answer; the dialogue core never reads the twin
itself, it gets the answer as a `workflow_result` signal. Each telemetry event also
- publishes the device's readings on the compacted `iot.twins` (the last record per device is its picture), and
- evaluates the policies' telemetry rules for that device and metric: a rule whose condition starts to hold raises
  an alert on `iot.alerts`; it re-arms once a reading no longer meets it (edge-triggered, one alert per crossing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from agents.dialogue.model import TelemetryRule
from agents.iot.queries import REQUEST, request_input, workflow_result
from topics import catalog
from topics.event import Event
from topics.processor import Emit, State

TELEMETRY = "switchboard.iot.Telemetry"
SOURCE = "/switchboard/iot/twins"


class DeviceTwins:
    """`(twin, telemetry | query) -> (twin, effects)` per device; `rules` are (agent, rule) of every policy."""

    name = "iot-twins"
    source = catalog.IOT_TELEMETRY
    sources = (catalog.IOT_TELEMETRY, catalog.IOT_QUERIES)

    def __init__(self, rules: Iterable[tuple[str, TelemetryRule]] = ()) -> None:
        self.rules: dict[tuple[str, str], list[tuple[str, TelemetryRule]]] = {}
        for agent, rule in rules:
            self.rules.setdefault((rule.device_id, rule.metric), []).append((agent, rule))

    def initial(self, subject: str) -> State:
        return {"readings": {}, "active": []}

    def step(self, state: State, event: Event) -> tuple[State, Sequence[Emit]]:
        if event.type == TELEMETRY:
            return self.apply_reading(state, event)
        if event.type == REQUEST:
            return state, self.answer(state, event)
        raise ValueError(f"the device twin takes {TELEMETRY} and {REQUEST} events, not {event.type}")

    def apply_reading(self, state: State, event: Event) -> tuple[State, list[Emit]]:
        data = event.data
        device, metric = str(data["device_id"]), str(data["metric"])
        readings = dict(state.get("readings", {}))
        readings[metric] = {"value": data.get("value"), "unit": data.get("unit"), "state": data.get("state"),
                            "at": event.time.isoformat(), "event_id": event.id}
        active = list(state.get("active", []))
        emits = [self.snapshot(event, device, readings)]
        raw = data.get("value")
        value = float(raw) if raw is not None else None
        for agent, rule in self.rules.get((device, metric), []) if value is not None else []:
            assert value is not None
            key, holds = f"{agent}/{rule.id}", rule.holds(value)
            if holds and key not in active:
                active.append(key)
                emits.append(self.alert(event, agent, rule, value, data.get("unit")))
            elif not holds and key in active:
                active.remove(key)
        return {"readings": readings, "active": active}, emits

    def snapshot(self, cause: Event, device: str, readings: Mapping[str, Mapping[str, Any]]) -> Emit:
        rows = [{"metric": metric, **{k: reading[k] for k in ("value", "unit", "state", "at", "event_id")}}
                for metric, reading in sorted(readings.items())]
        twin = cause.caused(catalog.IOT_TWINS.value_schema, SOURCE, {"device_id": device, "readings": rows},
                            effect="twin", subject=device, time=cause.time)
        return Emit(catalog.IOT_TWINS, twin)

    def alert(self, cause: Event, agent: str, rule: TelemetryRule, value: float, unit: str | None) -> Emit:
        data = {"agent": agent, "rule": rule.id, "event": rule.event, "device_id": rule.device_id,
                "room": rule.room, "metric": rule.metric, "value": value, "unit": unit,
                "condition": rule.condition, "threshold": rule.threshold}
        alert = cause.caused(catalog.IOT_ALERTS.value_schema, SOURCE, data, effect=f"alert/{agent}/{rule.id}",
                             subject=agent, time=cause.time)
        return Emit(catalog.IOT_ALERTS, alert)

    def answer(self, state: State, event: Event) -> Sequence[Emit]:
        """The latest reading of the queried metric, as of this point in the log; failed if none came yet."""
        request = event.data
        payload = request_input(request)
        device, metric = str(event.subject), str(payload.get("metric"))
        reading = state.get("readings", {}).get(metric)
        if reading is None:
            known = ", ".join(sorted(state.get("readings", {}))) or "nothing"
            return workflow_result(event, request, SOURCE, error=f"no {metric} reading from device {device} has "
                                                                 f"arrived yet (it has reported: {known})")
        at = datetime.fromisoformat(reading["at"])
        output = {"device_id": device, "metric": metric, "value": reading["value"], "unit": reading["unit"],
                  "state": reading["state"], "at": reading["at"],
                  "age_s": max(0, int((event.time - at).total_seconds()))}
        return workflow_result(event, request, SOURCE, output=output)
