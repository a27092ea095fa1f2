"""The IoT side of dialogue agents: telemetry as events a policy can ask about and react to.

- `twins.DeviceTwins`: each device's latest reading per metric (a device twin keyed by device id), answering
  `device_reading` queries and raising the policies' telemetry rules as alerts;
- `queries.DeviceQueryRouter`: a policy's `call_workflow: device_reading` request, re-keyed by device id;
- `alerts.AlertDispatcher`: alerts to the sessions that watch the rule's agent.

Every answer and every alert is derived from events in the log, in log order, so replaying the log replays them.
See docs/iot.md.
"""
