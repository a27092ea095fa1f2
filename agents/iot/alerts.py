"""Alerts to the sessions that watch: a session that wants an agent's telemetry alerts publishes `watch` on
`iot.subscriptions` (a policy `publish`, keyed by the agent watched); each alert of that agent then reaches it as an
`event` signal named by the rule, which the policy's `{event: ...}` trigger answers in the conversation.

Keyed by agent (alerts and subscriptions are co-partitioned), so one state lists who watches an agent. A watch
lasts `args.ttl_s` (default 30 minutes, refreshed by each new watch) from its event's time, and expiry is judged by
the time of the event being applied, never by the clock, so a replay notifies exactly the same sessions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from topics import catalog
from topics.event import Event
from topics.processor import Emit, State

COMMAND = "switchboard.agents.Command"
ALERT = "switchboard.iot.Alert"
SIGNAL = "switchboard.dialogue.Signal"
SOURCE = "/switchboard/iot/alerts"
DEFAULT_TTL_S = 1800.0
MAX_TTL_S = 86400.0
#: Watchers kept per agent; beyond it those whose watch ends first are dropped.
MAX_WATCHERS = 1000


class AlertDispatcher:
    """`(watchers, alert | watch | unwatch) -> (watchers, event signals)` per watched agent."""

    name = "iot-alerts"
    source = catalog.IOT_ALERTS
    sources = (catalog.IOT_ALERTS, catalog.IOT_SUBSCRIPTIONS)

    def initial(self, subject: str) -> State:
        return {"watchers": {}}

    def step(self, state: State, event: Event) -> tuple[State, Sequence[Emit]]:
        watchers = {key: until for key, until in dict(state.get("watchers", {})).items()
                    if datetime.fromisoformat(until) > event.time}
        if event.type == COMMAND:
            self.subscribe(watchers, event)
            return {"watchers": watchers}, ()
        if event.type == ALERT:
            return {"watchers": watchers}, [self.notify(event, key) for key in sorted(watchers)]
        raise ValueError(f"the alert dispatcher takes {ALERT} and {COMMAND} events, not {event.type}")

    def subscribe(self, watchers: dict[str, str], event: Event) -> None:
        command = event.data
        session = command.get("session_id")
        if not session:
            raise ValueError(f"{command['name']} on {catalog.IOT_SUBSCRIPTIONS.name} needs a session_id: publish it "
                             "from a dialogue policy (the processor fills it in)")
        key = f"{command['agent']}/{session}"
        if command["name"] == "unwatch":
            watchers.pop(key, None)
            return
        if command["name"] != "watch":
            raise ValueError(f"unknown command {command['name']!r} on {catalog.IOT_SUBSCRIPTIONS.name}; use watch "
                             "(args: ttl_s) or unwatch")
        try:
            args: Any = json.loads(command.get("args") or "{}")
            ttl = float(args.get("ttl_s", DEFAULT_TTL_S)) if isinstance(args, dict) else DEFAULT_TTL_S
        except (TypeError, ValueError):
            ttl = DEFAULT_TTL_S
        watchers[key] = (event.time + timedelta(seconds=min(max(ttl, 1.0), MAX_TTL_S))).isoformat()
        while len(watchers) > MAX_WATCHERS:
            watchers.pop(min(watchers, key=lambda k: (watchers[k], k)))

    def notify(self, alert: Event, watcher: str) -> Emit:
        agent, session = watcher.split("/", 1)
        payload = {key: alert.data.get(key) for key in ("rule", "device_id", "room", "metric", "value", "unit",
                                                         "condition", "threshold")}
        data = {"session_id": session, "agent": agent, "kind": "event", "name": alert.data["event"], "text": None,
                "data": json.dumps(payload, sort_keys=True, default=str)}
        spec = catalog.agent_topics(agent).signals
        signal = alert.caused(SIGNAL, SOURCE, data, effect=f"notify/{watcher}", subject=session, time=alert.time)
        return Emit(spec, signal)
